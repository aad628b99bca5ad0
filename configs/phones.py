"""Amazon Cell Phones, the authors' own files and split (`$COLAREC_SHARED_DATA/phones`).

Text: title, brand, categories (official content string). The shipped train/valid/test split is
used as is; the 5 items that occur only in valid/test keep their text (cold_items='keep').

Model: t5-small size (512 / 2048 / 8 heads / 6 + 6 layers), meant for a GPU.

Variants (`--config=configs/phones.py:VARIANT`):
  ''            randomly initialised encoder-decoder, a tokenizer trained on the item text.
  'pretrained'  as the authors: t5-small's weights and tokenizer from the local Hugging Face folder
                `$COLAREC_T5_DIR` (config.json, model.safetensors or pytorch_model.bin,
                tokenizer.json). The same as `--config.model.init_from=/path/to/t5-small`.
  'cpu'         the cpu budget (`config.cpu_budget`): the default config's small model,
                validation on 2,000 sampled users; for phones 24 epochs of 300 batches (not the
                budget's 3: chosen on validation, 6 epochs gave 0.0321 against 0.0271 valid
                NDCG@10 over 3 seeds, 12 gave 0.0348 against 0.0321;
                bench/results/experiments/phones/levers{,-steps}/; with the in-batch negatives
                and the prior below, 24 gave 0.0491 against 0.0452 over every validation user,
                steps-24/), in-batch negatives for L_bpr
                and L_c, and the beam's items rescored with the encoder's user-item score
                (loss.pair_negatives='in_batch', chosen on validation: 0.0404 against the
                paper's 0.0353 valid NDCG@10 over every validation user, 3 seeds; in-batch-3/,
                rank-levers/), then each code's log training popularity under its prefix added
                past the first level (eval.code_prior=(0, 1, 1), eval.encoder_weight=2.0: 0.0415
                against 0.0375 on the 2,000 sampled users; rank-levers/code-prior*.json);
                items added after training tie their best trained sibling
                (eval.new_item_score='sibling_max') under the leaf parent their 10 nearest
                trained items vote for (eval.new_item_placement='neighbours', chosen on half the
                held-out items: R@20 0.1022 against TF-IDF's 0.0465; the other half 0.1227
                against 0.0539; cold_levers_phones_24_placement.json); about 15 minutes on 2
                cores.
"""

import os

from colarec_jax.config import atomic_dataset, base_config, with_variant

VARIANTS = ("", "pretrained", "cpu")


def get_config(variant: str = ""):
  config = with_variant(atomic_dataset(base_config(), "phones", "title,brand,categories",
                                       time_field="timestamp"), variant, VARIANTS)
  if variant == "pretrained":
    folder = os.environ.get("COLAREC_T5_DIR", "")
    if not folder:
      # A ValueError, which the flag parser reports as the --config flag's error.
      raise ValueError("the 'pretrained' variant reads the t5-small folder from $COLAREC_T5_DIR, "
                       "which is unset (or use --config.model.init_from=FOLDER)")
    config.model.init_from = folder
  if variant == "cpu":
    config.train.epochs = 24  # the valid curve still rises after 12 (bench/README.md, quality)
  return config
