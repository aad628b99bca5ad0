"""Amazon Cell Phones, the authors' own files and split (`$COLAREC_SHARED_DATA/phones`).

Text: title, brand, categories (official content string). The shipped train/valid/test split is
used as is; the 5 items that occur only in valid/test keep their text (cold_items='keep').

Model: t5-small size (512 / 2048 / 8 heads / 6 + 6 layers), meant for a GPU.
"""

from colarec_jax.config import atomic_dataset, base_config


def get_config():
  return atomic_dataset(base_config(), "phones", "title,brand,categories",
                        time_field="timestamp")
