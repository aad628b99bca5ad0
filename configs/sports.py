"""Amazon Sports (5-core, `$COLAREC_SHARED_DATA/sports`), 8:1:1 random split per user.

Text: IDGenRec's generated short text ids (not real metadata; see the data README).

Model: t5-small size (512 / 2048 / 8 heads / 6 + 6 layers), meant for a GPU.
"""

from colarec_jax.config import atomic_dataset, base_config


def get_config():
  return atomic_dataset(base_config(), "sports", "text_id:text")
