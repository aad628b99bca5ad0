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
  return config
