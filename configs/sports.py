"""Amazon Sports (5-core, `$COLAREC_SHARED_DATA/sports`), 8:1:1 random split per user.

Text: IDGenRec's generated short text ids (not real metadata; see the data README).

Model: t5-small size (512 / 2048 / 8 heads / 6 + 6 layers), meant for a GPU; the variant
`--config=configs/sports.py:cpu` is the cpu budget (`config.cpu_budget`: the default config's
small model, validation on 2,000 sampled users) with 24 epochs of 300 batches, in-batch
negatives, eval.code_prior=(0, 1, 1), eval.encoder_weight=2.0 and
eval.new_item_score='sibling_max' with eval.new_item_placement='neighbours', as phones and beauty
chose on their validation splits (bench/results/experiments/{phones,beauty}/{steps-24,in-batch-3,
rank-levers}/; the last two on half of their cold-start protocol's held-out items,
bench/results/cold_levers_*_24_placement.json):
sports is the dataset nobody tunes on, so it takes the settings the other two chose, never its own.
At `:cpu` it reaches 81% of LightGCN's test NDCG@20 (0.0279 against 0.0345, 3 seeds,
bench/results/experiments/sports/main-24/), where phones and beauty reach 97% and 93%.
"""

from colarec_jax.config import atomic_dataset, base_config, with_variant


def get_config(variant: str = ""):
  config = with_variant(atomic_dataset(base_config(), "sports", "text_id:text"), variant)
  if variant == "cpu":
    config.train.epochs = 24  # phones' and beauty's choice, not sports' own
  return config
