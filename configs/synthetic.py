"""A synthetic dataset (`colarec_jax/data/synthetic.py`) in `$COLAREC_SYNTHETIC_DIR` (default
`/tmp/colarec-synthetic`), for scale benchmarks (`bench/scale.py`):

  python -m colarec_jax.data.synthetic --out=/tmp/colarec-synthetic --items=100000
  colarec-jax --config=configs/synthetic.py:cpu --workdir=runs/synthetic

Text: title and category path; timestamps give each user's order. The GID depth is the smallest
that holds the catalogue (`gid.depth=0`: l=3 up to 32,768 items with K=32, l=4 up to 1,048,576),
so one config serves every size, and LightGCN's batch grows with the training rows (`cf.batch_size=0`:
2048 up to ~1M rows, an epoch of at most 512 steps above), so its epoch stays linear. Variants as the paper datasets' ('' t5-small, 'cpu' the cpu
budget).
"""

import os

from colarec_jax.config import atomic_dataset, base_config, with_variant


def get_config(variant: str = ""):
  config = with_variant(atomic_dataset(base_config(), "synthetic", "title,categories",
                                       time_field="timestamp"), variant)
  config.data.dir = os.environ.get("COLAREC_SYNTHETIC_DIR", "/tmp/colarec-synthetic")
  config.gid.depth = 0
  config.cf.batch_size = 0  # grows with the rows: a fixed batch makes a LightGCN epoch quadratic
  return config
