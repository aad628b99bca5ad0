"""The authors' code (Junewang0614/ColaRec) in its own layout and protocol, wherever it differs.

For `--mode=import_official` (which sets the sizes, the GIDs and the data from their checkpoint
and data folder, and keeps these keys) and for training in their exact setting. Each key below
reproduces what their code does where colarec-jax's default does otherwise:
  inputs.uad_on_item_inputs=False  their i and i- indexing inputs carry no user-ID slot (only i+)
  inputs.history_cut='token'       their tokenizer cuts a long history mid-item at 255 tokens + EOS
  data.max_item_tokens=29          their 30 tokens per item count the item-ID slot
  eval.exclude_valid_at_test=False their test rankings keep the validation items
  data.time_ties='quicksort'       equal timestamps in a history ordered as their pandas sort does
  loss.pair_form='official'        their BPR form, -log(1e-10 + sigmoid(margin))
Their loss scale and random init (loss.generation_reduction='mean', model.init='official') are
colarec-jax's defaults. Model size: t5-small, as theirs.
"""

from colarec_jax.config import base_config, t5_small


def get_config():
  config = t5_small(base_config())
  config.inputs.update(uad_on_item_inputs=False, history_cut="token")
  config.data.max_item_tokens = 29
  config.eval.exclude_valid_at_test = False
  config.data.time_ties = "quicksort"
  config.loss.pair_form = "official"
  return config
