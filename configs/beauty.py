"""Amazon Beauty (5-core, `$COLAREC_SHARED_DATA/beauty`), 8:1:1 random split per user.

Text: title and category paths. Rows are chronological per user (no timestamps).

Model: t5-small size (512 / 2048 / 8 heads / 6 + 6 layers), meant for a GPU; the variant
`--config=configs/beauty.py:cpu` is the cpu budget (`config.cpu_budget`: the default config's
small model, validation on 2,000 sampled users), for beauty with 24 epochs of 300 batches (not the
budget's 3: chosen on validation, 6 epochs gave 0.0284 against 0.0230 valid NDCG@10 over 3 seeds,
and 12 gave 0.0312 against 0.0284; bench/results/experiments/beauty/levers{,-steps}/; with the
in-batch negatives and the prior below, 24 gave 0.0377 against 0.0318 over every validation
user, steps-24/), in-batch
negatives for L_bpr and L_c, and the beam's items rescored with the encoder's user-item score
(loss.pair_negatives='in_batch', chosen on validation: 0.0277 against the paper's 0.0252 valid
NDCG@10 over every validation user, 3 seeds; in-batch-3/, rank-levers/), then each code's log
training popularity under its prefix added past the first level (eval.code_prior=(0, 1, 1),
eval.encoder_weight=2.0: 0.0325 against 0.0297 on the 2,000 sampled users;
rank-levers/code-prior*.json); items added after training tie their best trained sibling
(eval.new_item_score='sibling_max') under the leaf parent their 10 nearest trained items vote for
(eval.new_item_placement='neighbours', chosen on half the held-out items: R@20 0.0948 against
TF-IDF's 0.0797; the other half 0.0967 against 0.0715; cold_levers_beauty_24_placement.json);
about 16 minutes on 2 cores.
"""

from colarec_jax.config import atomic_dataset, base_config, with_variant


def get_config(variant: str = ""):
  config = with_variant(atomic_dataset(base_config(), "beauty", "title,categories"), variant)
  if variant == "cpu":
    config.train.epochs = 24  # the valid curve still rises after 12 (bench/README.md, quality)
  return config
