"""Default: ColaRec on the embedded MovieLens-100k (downloaded once from PyPI's RecBole wheel).

Sized to run end to end on a laptop CPU in minutes. Every key is documented in
`colarec_jax/config.py`; override any of them as `--config.section.key=value`.
"""

from colarec_jax.config import base_config


def get_config():
  return base_config()
