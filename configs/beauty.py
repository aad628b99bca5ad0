"""Amazon Beauty (5-core, `$COLAREC_SHARED_DATA/beauty`), 8:1:1 random split per user.

Text: title and category paths. Rows are chronological per user (no timestamps).
"""

from colarec_jax.config import atomic_dataset, base_config


def get_config():
  return atomic_dataset(base_config(), "beauty", "title,categories")
