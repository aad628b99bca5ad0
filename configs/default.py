"""Default: ColaRec on the embedded MovieLens-100k (downloaded once from PyPI's RecBole wheel).

Sized so the whole pipeline (data, LightGCN, GIDs, ColaRec, evaluation) finishes on a 2-core CPU
in about 3 minutes (2 min 50 s on this project's machine): the CPU model size (`cpu_model`:
d_model 64, d_ff 256, 4 heads, 1 + 1 layers, inputs capped at 128 tokens), K=16 GIDs (16^3 = 4,096 codes for 1,682 items; the official K=32 would
leave 94% of the leaves empty), batch 64 at learning rate 1e-3, and 4 epochs of 150 steps (about
12% of the 80k training interactions per epoch). Every other knob is the paper's. Every key is
documented in `colarec_jax/config/base.py`; override any of them as `--config.section.key=value`, e.g.
`--config.train.steps_per_epoch=0 --config.train.epochs=60` for full epochs.
"""

from colarec_jax.config import base_config, cpu_model


def get_config():
  config = cpu_model(base_config())
  config.gid.branching = 16
  config.optim.update(batch_size=64, learning_rate=1e-3)
  config.train.update(epochs=4, steps_per_epoch=150)
  return config
