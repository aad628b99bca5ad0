"""Amazon Beauty (5-core, `$COLAREC_SHARED_DATA/beauty`), 8:1:1 random split per user.

Text: title and category paths. Rows are chronological per user (no timestamps).

Model: t5-small size (512 / 2048 / 8 heads / 6 + 6 layers), meant for a GPU.
"""

from colarec_jax.config import atomic_dataset, base_config


def get_config():
  return atomic_dataset(base_config(), "beauty", "title,categories")
