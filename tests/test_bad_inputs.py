"""The bad-input catalogue: every mistake a user can make gets exit code 2 and one line on
stderr naming the file and line, or the flag or config key, and what was expected; no
traceback, and nothing half-written in the workdir.

`python tests/test_bad_inputs.py` prints the catalogue as the Markdown table in
docs/bad_inputs.md (a test keeps the two equal).
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from conftest import REPO

TINY = os.path.join(REPO, "tests", "fixtures", "tiny")
TRAIN_TINY = ["--config.cf.epochs=2", "--config.train.epochs=1", "--config.train.steps_per_epoch=2"]


def _data(tmp, inter=None, item=None):
  """A copy of the tiny dataset with `inter` / `item` edits: callables of the file's lines."""
  folder = os.path.join(tmp, "src")
  shutil.copytree(TINY, folder)
  for name, edit in (("tiny.inter", inter), ("tiny.item", item)):
    if edit is not None:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        lines = f.read().split(b"\n")
      with open(path, "wb") as f:
        f.write(b"\n".join(edit(lines)))
  return [f"--config.data.dir={folder}"]


def _replace(n, text):
  return lambda lines: lines[:n] + [text] + lines[n + 1:]


def _pretrained(tmp, content):
  folder = os.path.join(tmp, "t5")
  os.makedirs(folder)
  with open(os.path.join(folder, "config.json"), "w") as f:
    f.write(content)
  return [f"--config.model.init_from={folder}"]


def _config_file(tmp, text):
  path = os.path.join(tmp, "bad_config.py")
  with open(path, "w") as f:
    f.write(text)
  return path


# (id, what the user did, extra args or a callable(tmp) -> args, expected part of the line).
# A case whose args hold "{config}" replaces the --config flag.
CASES = [
    # Flags and the config file.
    ("unknown-key", "a mistyped config key", ["--config.data.sourc=atomic"],
     'config.data.sourc: there is no such config key; did you mean "source"?'),
    ("unknown-section", "a config section that does not exist", ["--config.foo=3"],
     "config.foo: there is no such config key"),
    ("not-an-int", "a word where a number belongs", ["--config.train.epochs=abc"],
     "--config.train.epochs=abc: invalid literal for int()"),
    ("no-value", "a config flag without a value", ["--config.train.epochs"],
     "Missing value for flag --config.train.epochs"),
    ("unknown-flag", "a flag that does not exist", ["--bogus=1"],
     "Unknown command line flag 'bogus'"),
    ("bad-mode", "an unknown mode", ["--mode=fit"], "--mode=fit: value should be one of"),
    ("bad-split-flag", "an unknown split", ["--mode=evaluate", "--split=train"],
     "--split=train: value should be one of"),
    ("missing-config", "a config file that does not exist", ["{config}=/nonexistent/config.py"],
     "--config: '/nonexistent/config.py' is not a file"),
    ("config-syntax", "a config file with a syntax error",
     lambda tmp: [f"{{config}}={_config_file(tmp, '[1, 2')}"],
     "SyntaxError: '[' was never closed (line 1)"),
    ("config-not-dict", "a config file whose get_config returns no config",
     lambda tmp: [f"{{config}}={_config_file(tmp, 'def get_config():' + chr(10) + '  return 3')}"],
     "AttributeError: 'int' object has no attribute 'keys'"),
    ("no-config", "no --config, and a workdir with no stored config", ["{config}"],
     "--config: not given, and"),
    ("workdir-file", "a workdir that is a file", "workdir-file", "is a file; expected a folder"),
    ("workdir-unwritable", "a workdir that cannot be created", "workdir-unwritable",
     "--workdir: cannot write to /proc/colarec-test"),
    ("workdir-in-use", "a workdir another run holds", "workdir-in-use",
     "is in use by another colarec-jax run"),
    ("cpu-devices", "a negative CPU device count", ["--config.cpu_devices=-1"],
     "config.cpu_devices: got -1, expected 0"),
    ("cpu-devices-batch", "CPU devices that do not divide the batch",
     ["--mode=train", "--config.cpu_devices=3"],
     "config.optim.batch_size: got 16, expected a positive multiple of the 3 devices"),
    # config.data
    ("data-source", "an unknown data source", ["--config.data.source=csv"],
     "config.data.source: got 'csv', expected one of"),
    ("data-split", "an unknown split rule", ["--config.data.split=half"],
     "config.data.split: got 'half', expected one of"),
    ("data-split-order", "an unknown split order", ["--config.data.split_order=chrono"],
     "config.data.split_order: got 'chrono', expected one of"),
    ("data-split-ratios", "split ratios that do not sum to 1",
     ["--config.data.split_ratios=(0.5,0.6,0.1)"], "config.data.split_ratios: got (0.5, 0.6, 0.1)"),
    ("data-no-valid", "a split that leaves no validation rows",
     ["--mode=train", "--config.data.split_ratios=(1.0,0.0,0.0)"],
     "config.data.split_ratios: tiny has no validation interactions after the split"),
    ("data-given-split", "a shipped split the dataset does not have", ["--config.data.split=given"],
     "config.data.split: 'given' needs benchmark files"),
    ("data-kcore", "a k-core below -1", ["--config.data.kcore=-2"],
     "config.data.kcore: got -2, expected -1 (auto) or >= 0"),
    ("data-max-item-tokens", "no content tokens per item", ["--config.data.max_item_tokens=0"],
     "config.data.max_item_tokens: got 0, expected >= 1"),
    ("data-dir", "an atomic source without a folder", ["--config.data.dir="],
     "config.data.dir: source 'atomic' needs the folder holding its files"),
    ("data-dir-missing", "a data folder without the files", ["--config.data.dir=/nonexistent"],
     "/nonexistent: data folder not found; set config.data.dir"),
    ("data-tokenizer", "a tokenizer file that does not exist",
     ["--config.data.tokenizer=/nonexistent.json"],
     "config.data.tokenizer: '/nonexistent.json' is not a file"),
    ("data-vocab", "a tiny vocabulary", ["--config.data.vocab_size=10"],
     "config.data.vocab_size: got 10, expected >= 64"),
    ("data-cold-users", "an unknown cold-user rule", ["--config.data.cold_users=keep"],
     "config.data.cold_users: got 'keep', expected one of"),
    ("data-cold-items", "an unknown cold-item rule", ["--config.data.cold_items=maybe"],
     "config.data.cold_items: got 'maybe', expected one of"),
    ("data-cold-item-fraction", "every item held out for the cold-start protocol",
     ["--config.data.cold_item_fraction=1.0"],
     "config.data.cold_item_fraction: got 1.0, expected a share of the items in [0, 1)"),
    ("data-cold-item-none", "a held-out share too small to hold out an item",
     ["--config.data.cold_item_fraction=0.001"],
     "config.data.cold_item_fraction: got 0.001, which holds out 0 of the 36 items of tiny"),
    ("data-text-fields", "a text field with a space", ["--config.data.text_fields=a b"],
     "config.data.text_fields: bad entry 'a b'"),
    ("data-user-field", "a user column the file lacks", ["--config.data.user_field=uid"],
     "tiny.inter:1: no column 'uid' for the user"),
    ("data-time-field", "a time column the file lacks", ["--config.data.time_field=when"],
     "tiny.inter:1: no column 'when' for the time"),
    # The data files.
    ("file-row-width", "a row with a missing field",
     lambda tmp: _data(tmp, inter=_replace(5, b"u00\ti07")), "tiny.inter:6: row has 2 fields"),
    ("file-header-type", "a header field without a type",
     lambda tmp: _data(tmp, inter=_replace(0, b"user_id\titem_id:token\ttimestamp:float")),
     "tiny.inter:1: header field 'user_id' is not `name:type`"),
    ("file-header-unknown", "a header field of an unknown type",
     lambda tmp: _data(tmp, inter=_replace(0, b"user_id:str\titem_id:token\ttimestamp:float")),
     "tiny.inter:1: header field 'user_id:str' has unknown type 'str'"),
    ("file-header-repeat", "a column named twice in the header",
     lambda tmp: _data(tmp, inter=_replace(0, b"user_id:token\tuser_id:token\ttimestamp:float")),
     "tiny.inter:1: header names column 'user_id' twice"),
    ("file-utf8", "bytes that are not UTF-8",
     lambda tmp: _data(tmp, item=_replace(3, b"i02\t\xff\xfe\tAcme\tCases")),
     "tiny.item:4: invalid UTF-8"),
    ("file-empty", "an empty interaction file", lambda tmp: _data(tmp, inter=lambda lines: []),
     "tiny.inter:1: empty file"),
    ("file-time", "a timestamp that is not a number",
     lambda tmp: _data(tmp, inter=_replace(2, b"u00\ti07\tyesterday")),
     "tiny.inter:3: column 'timestamp' (time) holds 'yesterday', expected a number"),
    ("file-item-missing", "a dataset without its item file", "no-item-file",
     "tiny.item: file not found"),
    # config.model
    ("model-name", "an unknown model", ["--config.model.name=bert"],
     "config.model.name: got 'bert', expected one of colarec, lightgcn, mostpop"),
    ("model-init-scheme", "an unknown random initialisation", ["--config.model.init=xavier"],
     "config.model.init: got 'xavier', expected one of 'colarec', 'official'"),
    ("loss-reduction", "an unknown reduction of the generation losses",
     ["--config.loss.generation_reduction=max"],
     "config.loss.generation_reduction: got 'max', expected one of 'sum', 'mean'"),
    ("loss-pair-form", "an unknown form of L_bpr and L_c", ["--config.loss.pair_form=hinge"],
     "config.loss.pair_form: got 'hinge', expected one of 'log_sigmoid', 'official'"),
    ("loss-pair-negatives", "an unknown kind of negatives", ["--config.loss.pair_negatives=all"],
     "config.loss.pair_negatives: got 'all', expected one of 'single', 'in_batch'"),
    ("model-dtype", "an unsupported compute type", ["--config.model.dtype=float16"],
     "config.model.dtype: got 'float16', expected 'float32' or 'bfloat16'"),
    ("model-heads", "heads that do not divide d_model", ["--config.model.num_heads=3"],
     "config.model.num_heads: got 3, expected a divisor of model.d_model=32"),
    ("model-dropout", "a dropout rate above 1", ["--config.model.dropout_rate=1.5"],
     "config.model.dropout_rate: got 1.5, expected [0, 1)"),
    ("model-width", "a zero model width", ["--config.model.d_model=0"],
     "config.model.d_model: got 0, expected >= 1"),
    ("model-layers", "no encoder layers", ["--config.model.num_encoder_layers=0"],
     "config.model.num_encoder_layers: got 0, expected >= 1"),
    ("model-init-missing", "a pretrained folder that does not exist",
     ["--config.model.init_from=/nonexistent/t5"],
     "config.model.init_from: '/nonexistent/t5' is not a folder"),
    ("model-init-list", "a pretrained config.json that is a list",
     lambda tmp: _pretrained(tmp, "[1, 2]"), "config.json holds a JSON list; expected an object"),
    ("model-init-json", "a pretrained config.json that is not JSON",
     lambda tmp: _pretrained(tmp, "{model"), "config.json is not readable JSON"),
    ("model-init-type", "a pretrained model that is not a T5",
     lambda tmp: _pretrained(tmp, json.dumps({"model_type": "bert"})),
     "has model_type='bert'; only 't5'"),
    # config.inputs
    ("inputs-max-length", "inputs too short for one item", ["--config.inputs.max_length=5"],
     "config.inputs.max_length: got 5, expected room for one item"),
    ("inputs-eval-history", "no history at evaluation", ["--config.inputs.eval_history=0"],
     "config.inputs.eval_history: got 0, expected >= 1"),
    ("inputs-max-history", "a negative training history", ["--config.inputs.max_history=-1"],
     "config.inputs.max_history: got -1, expected >= 0"),
    ("inputs-item-id-dropout", "an item-ID dropout above 1",
     ["--config.inputs.item_id_dropout=1.5"],
     "config.inputs.item_id_dropout: got 1.5, expected a probability in [0, 1]"),
    # config.optim and config.train
    ("optim-lr-nan", "a learning rate that is NaN", ["--config.optim.learning_rate=nan"],
     "config.optim.learning_rate: got nan, expected a finite number > 0"),
    ("optim-lr-zero", "a learning rate of 0", ["--config.optim.learning_rate=0"],
     "config.optim.learning_rate: got 0.0, expected a finite number > 0"),
    ("optim-schedule", "an unknown schedule", ["--config.optim.schedule=linear"],
     "config.optim.schedule: got 'linear', expected one of"),
    ("optim-batch", "a batch of 0", ["--config.optim.batch_size=0"],
     "config.optim.batch_size: got 0, expected >= 1"),
    ("optim-warmup", "a negative warm-up", ["--config.optim.warmup_steps=-1"],
     "config.optim.warmup_steps: got -1, expected >= 0"),
    ("optim-warmup-cap", "a warm-up as long as the capped run",
     ["--config.optim.schedule=warmup_cosine", "--config.optim.warmup_steps=6",
      "--config.train.epochs=2", "--config.train.steps_per_epoch=3"],
     "config.optim.warmup_steps: got 6, expected fewer than the 6 training steps "
     "(train.epochs x train.steps_per_epoch)"),
    ("train-epochs", "no epochs", ["--config.train.epochs=0"],
     "config.train.epochs: got 0, expected >= 1"),
    ("train-steps", "a negative step cap", ["--config.train.steps_per_epoch=-1"],
     "config.train.steps_per_epoch: got -1, expected >= 0"),
    ("train-eval-every", "validation every 0 epochs", ["--config.train.eval_every=0"],
     "config.train.eval_every: got 0, expected >= 1"),
    ("train-patience", "a patience of 0", ["--config.train.patience=0"],
     "config.train.patience: got 0, expected >= 1"),
    ("train-keep", "no checkpoints kept", ["--config.train.keep_checkpoints=0"],
     "config.train.keep_checkpoints: got 0, expected >= 1"),
    ("train-every", "a negative checkpoint interval",
     ["--config.train.checkpoint_every_steps=-1"],
     "config.train.checkpoint_every_steps: got -1, expected >= 0"),
    # config.cf, config.gid, config.eval
    ("cf-batch", "a negative LightGCN batch", ["--config.cf.batch_size=-1"],
     "config.cf.batch_size: got -1, expected >= 1, or 0 for a batch"),
    ("cf-epochs", "LightGCN epochs fewer than its validation interval",
     ["--config.cf.epochs=2", "--config.cf.eval_every=5"],
     "config.cf.epochs: got 2, expected >= cf.eval_every = 5"),
    ("cf-dim", "a LightGCN width of 0", ["--config.cf.embedding_dim=0"],
     "config.cf.embedding_dim: got 0, expected >= 1"),
    ("gid-source", "an unknown GID source", ["--config.gid.source=kmeans"],
     "config.gid.source: got 'kmeans', expected one of"),
    ("gid-branching", "a GID tree of one branch", ["--config.gid.branching=1"],
     "config.gid.branching: got 1, expected >= 2"),
    ("gid-depth", "a GID of one code", ["--config.gid.depth=1"],
     "config.gid.depth: got 1, expected >= 2"),
    ("gid-capacity", "a GID tree too small for the items",
     ["--mode=gid", "--config.gid.branching=3"],
     "config.gid.depth: K^l = 3^3 = 27 codes cannot hold 36 items; set gid.depth=4"),
    ("gid-n-init", "no k-means seeds", ["--config.gid.n_init=0"],
     "config.gid.n_init: got 0, expected >= 1"),
    ("eval-metric", "a metric at an unlisted cut-off", ["--config.eval.metric=ndcg@50"],
     "config.eval.metric: got 'ndcg@50', expected one of"),
    ("eval-long-tail", "a long-tail share of 0", ["--config.eval.long_tail_fraction=0"],
     "config.eval.long_tail_fraction: got 0.0, expected (0, 1]"),
    ("eval-beam", "a beam of 0", ["--config.eval.beam_size=0"],
     "config.eval.beam_size: got 0, expected at least the longest list evaluated"),
    ("eval-decode-batch", "a beam-search batch of 0", ["--config.eval.decode_batch_size=0"],
     "config.eval.decode_batch_size: got 0, expected >= 1"),
    ("eval-new-item-score", "an unknown score for added items",
     ["--config.eval.new_item_score=best"],
     "config.eval.new_item_score: got 'best', expected one of 'model', 'sibling_mean', 'sibling_max'"),
    ("eval-new-item-placement", "an unknown placement for added items",
     ["--config.eval.new_item_placement=nearest"],
     "config.eval.new_item_placement: got 'nearest', expected one of 'indexing', 'neighbours'"),
    ("eval-placement-neighbours", "no neighbours to vote", ["--config.eval.placement_neighbours=0"],
     "config.eval.placement_neighbours: got 0, expected >= 1"),
    ("eval-search-width", "a negative search width", ["--config.eval.search_width=-1"],
     "config.eval.search_width: got -1, expected >= 0"),
    ("eval-encoder-weight", "a negative encoder weight", ["--config.eval.encoder_weight=-0.5"],
     "config.eval.encoder_weight: got -0.5, expected >= 0"),
    ("eval-added-candidates", "a negative count of added-item candidates",
     ["--config.eval.added_candidates=-1"],
     "config.eval.added_candidates: got -1, expected >= 0 (0 = none)"),
    ("eval-code-prior", "a negative code-prior weight", ["--config.eval.code_prior=(0,-1,1)"],
     "config.eval.code_prior: got (0, -1, 1), expected finite weights >= 0: one for all GID "
     "levels or one per level (() = none)"),
    ("eval-code-prior-levels", "code-prior weights for another GID depth",
     "trained:--mode=evaluate --config.eval.code_prior=(0,1)",
     "config.eval.code_prior: got 2 weights (0.0, 1.0), expected one for all GID levels or "
     "one per level (3), or () for none"),
    # evaluate and recommend
    ("evaluate-untrained", "evaluate before training", ["--mode=evaluate"],
     "--mode: there are no prepared data in"),
    ("checkpoint-word", "a checkpoint that is neither best, latest nor a number",
     ["--mode=evaluate", "--checkpoint=newest"],
     "--checkpoint: got 'newest', expected 'best', 'latest' or an epoch number"),
    ("recommend-both", "recommend for a user and a history at once",
     ["--mode=recommend", "--user=u00", "--items=i01"],
     "--user: give exactly one of --user=<user id> or --items=<id,id,...>"),
    ("recommend-top-n", "a top-N of 0", ["--mode=recommend", "--user=u00", "--top_n=0"],
     "--top_n: got 0, expected 1 to eval.beam_size = 20"),
    ("recommend-user", "recommend for an unknown user", "trained:--mode=recommend --user=nobody",
     "--user: 'nobody' is not a user of tiny"),
    ("recommend-item", "recommend after an unknown item", "trained:--mode=recommend --items=i01,x",
     "--items: 'x' is not an item of tiny"),
    ("recommend-repeat", "the same item twice in a history",
     "trained:--mode=recommend --items=i01,i01", "--items: 'i01' is listed twice"),
    ("checkpoint-epoch", "a checkpoint epoch that was not saved",
     "trained:--mode=evaluate --checkpoint=9", "--checkpoint: no latest checkpoint for epoch 9"),
    ("add-items-no-file", "add items without naming their file", ["--mode=add_items"],
     "--items_file: give the new items' file"),
    ("add-items-missing", "add items from a file that does not exist",
     "trained:--mode=add_items --items_file=/nonexistent.item", "/nonexistent.item: file not found"),
    ("add-items-known", "add an item the dataset already has",
     "trained:--mode=add_items --items_file=tests/fixtures/new_items/known.item",
     "known.item:3: item 'i01' is already an item of this workdir"),
    ("add-items-twice", "list a new item twice",
     "trained:--mode=add_items --items_file=tests/fixtures/new_items/twice.item",
     "twice.item:3: item 'n08' has a second row"),
    ("add-items-no-text", "add an item whose text fields are all empty",
     "trained:--mode=add_items --items_file=tests/fixtures/new_items/no_text.item",
     "no_text.item:3: item 'n07' has no text in data.text_fields (title, brand, categories)"),
    ("add-items-full", "add more items than the GID tree has free leaves",
     "trained:--mode=add_items --items_file=tests/fixtures/new_items/many.item",
     "many.item: 70 new items, but the GID tree (K=4, l=3) has only"),
    ("import-no-checkpoint", "import the authors' model without naming their checkpoint",
     ["--mode=import_official"], "--checkpoint: got 'best'; give the authors' checkpoint"),
    ("import-no-data", "import the authors' model without their data folder",
     ["--mode=import_official", "--checkpoint=tests/fixtures/official/model"],
     "--official_data: got ''; give their data folder"),
    ("import-no-tokenizer", "import the authors' model without the vocabulary it read",
     ["--mode=import_official", "--checkpoint=tests/fixtures/official/model",
      "--official_data=tests/fixtures/official/data"], "--tokenizer: got ''; give the tokenizer"),
    ("import-into-trained", "import the authors' model into a workdir that holds one",
     "trained:--mode=import_official --checkpoint=tests/fixtures/official/model "
     "--official_data=tests/fixtures/official/data "
     "--tokenizer=tests/fixtures/official/tokenizer.json",
     "already holds a trained model; import into a new --workdir"),
    ("evaluate-other-config", "evaluate with a key that differs from training",
     "trained:--mode=evaluate --config.gid.n_init=3",
     "config.gid.n_init: got 3, but the model in"),
    # export and serve
    ("export-no-output", "export without a file to write", ["--mode=export"],
     "--output: give the file to write"),
    ("export-suffix", "export to a format there is no writer for",
     ["--mode=export", "--output=top.csv"], "--output: 'top.csv' ends in '.csv'; expected one of"),
    ("export-folder", "export into a folder that does not exist",
     ["--mode=export", "--output=/nonexistent/top.jsonl"], "--output: /nonexistent is not a folder"),
    ("export-top-n", "export a top-N of 0", ["--mode=export", "--output=top.jsonl", "--top_n=0"],
     "--top_n: got 0, expected 1 to eval.beam_size = 20"),
    ("export-users-file", "export for a users file with an unknown id",
     "trained:--mode=export --output={tmp}/top.jsonl --users_file=tests/fixtures/users.txt",
     "tests/fixtures/users.txt:3: 'nobody' is not a user of tiny"),
    ("serve-port", "serve on port 0", ["--mode=serve", "--port=0"],
     "--port: got 0, expected 1 to 65535"),
    ("serve-max-batch", "serve with a negative batch", ["--mode=serve", "--max_batch=-1"],
     "--max_batch: got -1, expected >= 1"),
    # Serving, export, add_items and the studies runner (issue 36).
    ("serve-window-nan", "serve with a batching window of nan", ["--mode=serve",
                                                                "--batch_window_ms=nan"],
     "--batch_window_ms: got nan, expected 0 to 1000"),
    ("serve-window-inf", "serve with an infinite batching window",
     ["--mode=serve", "--batch_window_ms=inf"], "--batch_window_ms: got inf, expected 0 to 1000"),
    ("serve-window-days", "serve with a batching window of days",
     ["--mode=serve", "--batch_window_ms=1e9"],
     "--batch_window_ms: got 1000000000.0, expected 0 to 1000"),
    ("serve-max-batch-huge", "serve batches of 100,000 rows", ["--mode=serve",
                                                              "--max_batch=100000"],
     "--max_batch: got 100000, expected >= 1 (at most 4096)"),
    ("serve-body-limit", "serve with a body limit of 0 bytes", ["--mode=serve",
                                                               "--max_body_bytes=0"],
     "--max_body_bytes: got 0, expected 1 to"),
    ("serve-queue", "serve with a queue of 0", ["--mode=serve", "--max_queue=0"],
     "--max_queue: got 0, expected 1 to"),
    ("serve-token-file", "serve with a token file that does not exist",
     ["--mode=serve", "--auth_token_file=/nonexistent/token"],
     "--auth_token_file: cannot read /nonexistent/token"),
    ("serve-port-in-use", "serve on a port another program listens on",
     "trained:--mode=serve --port={busy_port}", "--port: cannot listen on 127.0.0.1:"),
    ("export-unwritable", "export into a folder that takes no file",
     "trained:--mode=export --output=/proc/top.jsonl", "--output: cannot write to /proc:"),
    ("add-items-while-read", "add items while a server (a reader) uses the workdir",
     "trained-read:--mode=add_items --items_file=tests/fixtures/new_items/new.item",
     "--workdir: {workdir} is being read by another colarec-jax process"),
    ("runner-missing-config", "run a study with a config file that does not exist",
     "experiments:--config=/nonexistent.py --root={tmp}/r",
     "--config: '/nonexistent.py' is not a file"),
    ("runner-unknown-key", "run a study with a mistyped config key",
     "experiments:--config=configs/tiny.py --config.data.sourc=x --root={tmp}/r",
     "config.data.sourc: there is no such config key"),
    ("runner-root-file", "run a study whose --root is a file",
     "experiments:--config=configs/tiny.py --root={tmp}/a-file",
     "--root: {tmp}/a-file is a file; expected a folder"),
    ("runner-bad-arm", "sweep a value that one arm cannot take",
     "experiments:--config=configs/tiny.py --root={tmp}/r --sweep=train.epochs=1,-1",
     "config.train.epochs: got -1, expected >= 1 (in arm 'train.epochs=-1', seed 0)"),
    ("runner-seeds", "run a study with seeds that are not numbers",
     "experiments:--config=configs/tiny.py --root={tmp}/r --seeds=a,b",
     "--seeds: got ['a', 'b'], expected integers"),
]

# The Python API: (id, mistake, call(rec), the error's message (part)); one exception each, a
# RequestError naming the argument.
API_CASES = [
    ("api-batch-negative", "load with a batch of -3 rows",
     lambda rec, workdir: type(rec).load(workdir, batch_size=-3),
     "batch_size: got -3, expected 1 to 4096"),
    ("api-batch-huge", "load with a batch of 100,000 rows",
     lambda rec, workdir: type(rec).load(workdir, batch_size=100_000),
     "batch_size: got 100000, expected 1 to 4096"),
    ("api-users-string", "recommend_batch for one user id as a string",
     lambda rec, workdir: rec.recommend_batch(users="u01"), "users: got str 'u01', expected a list"),
    ("api-user-unknown", "recommend for an unknown user",
     lambda rec, workdir: rec.recommend(user="nobody"), "user: 'nobody' is not a user of tiny"),
    ("api-user-huge", "recommend for a 1 MB user id (the echo is cut)",
     lambda rec, workdir: rec.recommend(user="x" * 1_000_000), "... (1000002 characters) is not"),
    ("api-top-n", "a top-N past the beam", lambda rec, workdir: rec.recommend(user="u01", top_n=21),
     "top_n: got 21, expected 1 to eval.beam_size = 20"),
    ("api-checkpoint", "load a checkpoint word that does not exist",
     lambda rec, workdir: type(rec).load(workdir, checkpoint="newest"),
     "--checkpoint: got 'newest', expected 'best', 'latest' or an epoch number"),
]

# HTTP (`--mode=serve`, with a token, a 4096-byte body limit and a queue of 1): (id, mistake,
# method, path, body, with the token, status, the JSON error (part)); tests/test_serve.py sends
# each to a real server.
HTTP_CASES = [
    ("http-no-token", "no bearer token", "POST", "/recommend", b'{"user": "u01"}', False, 401,
     "authorization: expected the header 'Authorization: Bearer <token>'"),
    ("http-body-too-large", "a body over --max_body_bytes", "POST", "/recommend",
     b'{"history": [' + b'"i01", ' * 800 + b'"i02"]}', True, 413,
     "body: larger than 4096 bytes (--max_body_bytes)"),
    ("http-not-json", "a body that is not JSON", "POST", "/recommend", b"{bad", True, 400,
     "body: not valid JSON"),
    ("http-nested", "JSON nested thousands deep", "POST", "/recommend", b"[" * 2000 + b"]" * 2000,
     True, 400, "body: JSON nested too deep"),
    ("http-unknown-field", "an unknown field", "POST", "/recommend", b'{"usr": "u01"}', True, 400,
     "usr: unknown field; expected user, history, top_n"),
    ("http-huge-id", "a 3,000-character user id (the echo is cut)", "POST", "/recommend",
     b'{"user": "' + b"x" * 3000 + b'"}', True, 404, "... (3002 characters) is not a user of tiny"),
    ("http-path", "an unknown path", "GET", "/nothing", b"", True, 404,
     "path: not found; expected POST /recommend or GET /health"),
    ("http-method", "GET on /recommend", "GET", "/recommend", b"", True, 405,
     "method: not allowed; expected POST /recommend or GET /health"),
]


def table() -> str:
  cell = lambda text: f"`{text.replace('|', '/')}`"
  rows = ["| case | mistake | the one line (part) |", "|---|---|---|"]
  for case, what, _, expected in CASES:
    rows.append(f"| `{case}` | {what} | {cell(expected)} |")
  api = ["| case | mistake | the error (part) |", "|---|---|---|"]
  for case, what, _, expected in API_CASES:
    api.append(f"| `{case}` | {what} | {cell(expected)} |")
  http = ["| case | mistake | status | `error` (part) |", "|---|---|---|---|"]
  for case, what, *_, status, expected in HTTP_CASES:
    http.append(f"| `{case}` | {what} | {status} | {cell(expected)} |")
  total = len(CASES) + len(API_CASES) + len(HTTP_CASES)
  return ("# Bad inputs and what they get\n\nEvery one exits with code 2 and prints one line, "
          "`error: ...`, naming the file and line, or the flag or config key, and what was "
          "expected; none leaves a half-written file. `tests/test_bad_inputs.py` runs each "
          f"through the real command line ({len(CASES)} cases; `colarec-jax-experiments` for "
          "the runner's).\n\n" + "\n".join(rows) + "\n\n## The Python API\n\nOne exception "
          "each (`RequestError`, or `UsageError` for a checkpoint), naming the argument; "
          f"`tests/test_bad_inputs.py` makes each call ({len(API_CASES)} cases).\n\n"
          + "\n".join(api) + "\n\n## HTTP\n\nOne JSON answer each, `{\"error\": ...}`, "
          "never a traceback in the server's log; `tests/test_serve.py` sends each to a real "
          f"server ({len(HTTP_CASES)} cases; {total} in all).\n\n" + "\n".join(http) + "\n")


def listing(path):
  """The workdir's files, less the stages a failed run finished whole (the lock file and stage
  folders whose manifests verify): what remains would be half-written."""
  from colarec_jax.data import fileio
  if not os.path.isdir(path):
    return []
  whole = {n for n in os.listdir(path) if n == fileio.LOCK or (
      n in fileio.STAGES and fileio.read_manifest(os.path.join(path, n)) is not None)}
  return sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path)
                for n in names if os.path.relpath(d, path).split(os.sep)[0] not in whole
                and n not in whole)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained"))
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main", "--config=configs/tiny.py",
                           f"--workdir={workdir}", "--mode=train", *TRAIN_TINY], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  return workdir


@pytest.mark.parametrize("case,what,args,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line(case, what, args, expected, tmp_path, request):
  workdir, holder = str(tmp_path / "w"), None
  config = "--config=configs/tiny.py"
  if callable(args):
    args = args(str(tmp_path))
  elif args == "workdir-file":
    workdir = str(tmp_path / "a-file")
    open(workdir, "w").close()
    args = []
  elif args == "workdir-unwritable":
    workdir, args = "/proc/colarec-test", []
  elif args == "workdir-in-use":
    from colarec_jax.data import fileio
    holder = fileio.workdir_lock(workdir, log=lambda *_: None)
    holder.__enter__()
    args = []
  elif args == "no-item-file":
    args = _data(str(tmp_path))
    os.remove(os.path.join(str(tmp_path), "src", "tiny.item"))
  elif isinstance(args, str) and args.startswith(("trained:", "trained-read:")):
    workdir = request.getfixturevalue("trained")
    if args.startswith("trained-read:"):  # a reader (a server, say) holds the workdir meanwhile
      from colarec_jax.data import fileio
      holder = fileio.workdir_lock(workdir, exclusive=False, log=lambda *_: None)
      holder.__enter__()
    if "{busy_port}" in args:  # another program listens there for the whole run
      busy = socket.socket()
      busy.bind(("127.0.0.1", 0))
      busy.listen(1)
      request.addfinalizer(busy.close)
      args = args.replace("{busy_port}", str(busy.getsockname()[1]))
    args = args.split(":", 1)[1].replace("{tmp}", str(tmp_path)).split() + TRAIN_TINY
    expected = expected.replace("{workdir}", workdir)
  elif isinstance(args, str) and args.startswith("experiments:"):
    (tmp_path / "a-file").write_text("")
    result = subprocess.run([sys.executable, "-m", "colarec_jax.studies.runner",
                             *args.split(":", 1)[1].replace("{tmp}", str(tmp_path)).split()],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert lines[0] == "error: " + expected.replace("{tmp}", str(tmp_path)) or (
        expected.replace("{tmp}", str(tmp_path)) in lines[0]), lines[0]
    assert not os.path.exists(tmp_path / "r"), "the failed study left files behind"
    return
  for arg in list(args):
    if arg.startswith("{config}"):
      args.remove(arg)
      config = arg.replace("{config}", "--config") if "=" in arg else None
  before = listing(workdir)
  try:
    result = subprocess.run(
        [sys.executable, "-m", "colarec_jax.main", *([config] if config else []),
         f"--workdir={workdir}", "--mode=prepare", *args], cwd=REPO, capture_output=True,
        text=True, timeout=300, env=dict(os.environ, TQDM_DISABLE="1"))
    after = listing(workdir)
  finally:
    if holder is not None:
      holder.__exit__(None, None, None)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  assert expected in lines[0], lines[0]
  assert after == before, "the failed run left files behind"


@pytest.fixture(scope="module")
def trained_rec(trained):
  from colarec_jax.serving.recommender import Recommender
  return Recommender.load(trained)


@pytest.mark.parametrize("case,what,call,expected", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_mistakes_raise_one_clear_error(case, what, call, expected, trained, trained_rec):
  from colarec_jax.runtime.errors import ColarecError
  with pytest.raises(ColarecError) as e:
    call(trained_rec, trained)
  assert expected in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 600


def test_docs_table_is_current():
  with open(os.path.join(REPO, "docs", "bad_inputs.md")) as f:
    assert f.read() == table(), "regenerate: python tests/test_bad_inputs.py > docs/bad_inputs.md"


def test_the_catalogue_is_large_enough():
  assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


if __name__ == "__main__":
  sys.stdout.write(table())
