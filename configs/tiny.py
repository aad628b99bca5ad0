"""Tiny: a hand-sized dataset shipped in tests/fixtures/tiny, for tests and smoke runs (seconds)."""

import os

from colarec_jax.config import base_config

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                       "tiny")


def get_config():
  config = base_config()
  config.data.source = "atomic"
  config.data.name = "tiny"
  config.data.dir = os.path.normpath(FIXTURE)
  config.data.text_fields = "title,brand,categories"
  config.data.rating_field = ""
  config.data.vocab_size = 200
  config.data.max_item_tokens = 12
  config.model.update(d_model=32, d_ff=64, num_heads=4, num_encoder_layers=1,
                      num_decoder_layers=1)
  config.inputs.max_length = 64
  config.gid.branching = 4  # 4^3 = 64 codes for 36 items
  config.gid.n_init = 2
  config.cf.embedding_dim = 16
  config.cf.batch_size = 64
  config.cf.epochs = 20
  config.optim.batch_size = 16
  config.train.epochs = 3
  config.eval.beam_size = 20
  config.eval.decode_batch_size = 16
  return config
