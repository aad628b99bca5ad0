"""Amazon Beauty (5-core, `$COLAREC_SHARED_DATA/beauty`), 8:1:1 random split per user.

Text: title and category paths. Rows are chronological per user (no timestamps).

Model: t5-small size (512 / 2048 / 8 heads / 6 + 6 layers), meant for a GPU; the variant
`--config=configs/beauty.py:cpu` is the cpu budget (`config.cpu_budget`: the default config's
small model, 3 epochs of 300 batches, validation on 2,000 sampled users; about 20 minutes on 2
cores).
"""

from colarec_jax.config import atomic_dataset, base_config, with_variant


def get_config(variant: str = ""):
  return with_variant(atomic_dataset(base_config(), "beauty", "title,categories"), variant)
