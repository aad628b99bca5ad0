"""The command line's mode flags, parsed once into one checked, frozen object per mode.

As `config.settings.Settings` is for the config, so these are for the flags: `parse(mode, values,
settings)` checks every flag the mode reads before any file of the workdir is read, and the
mode's run function gets that object, never a raw flag. Each default is written once, here (or
in the library module that owns it), and `main.py` defines its absl flags from them.
"""

from __future__ import annotations

import dataclasses
import os

from colarec_jax.config.settings import Settings
from colarec_jax.run import store
from colarec_jax.runtime.errors import RequestError, UsageError
from colarec_jax.serving import export, serve
from colarec_jax.serving.recommender import TOP_N, check_top_n

SPLITS = ("valid", "test")


def _top_n(top_n: int, settings: Settings) -> None:
  """`top_n` against the beam size the trie will be built with (`eval.beam_size`)."""
  try:
    check_top_n(top_n, settings.eval.beam_size)
  except RequestError as e:
    raise UsageError("top_n", e.message) from None


@dataclasses.dataclass(frozen=True)
class NoFlags:
  """prepare, stats, gid, train, all: the config says everything."""

  def check(self, settings: Settings) -> None:
    del settings


@dataclasses.dataclass(frozen=True)
class EvaluateFlags:
  checkpoint: str = store.BEST
  split: str = "test"

  def check(self, settings: Settings) -> None:
    del settings
    store.parse_which(self.checkpoint)
    if self.split not in SPLITS:
      raise UsageError("split", f"got {self.split!r}, expected 'valid' or 'test'")


@dataclasses.dataclass(frozen=True)
class RecommendFlags:
  checkpoint: str = store.BEST
  user: str = ""
  items: str = ""
  top_n: int = TOP_N

  def check(self, settings: Settings) -> None:
    store.parse_which(self.checkpoint)
    if bool(self.user) == bool(self.items):
      raise UsageError("user", "give exactly one of --user=<user id> or --items=<id,id,...>")
    _top_n(self.top_n, settings)

  @property
  def history(self) -> list[str] | None:
    """--items as a list of item ids, most recent first (None with --user)."""
    return [x.strip() for x in self.items.split(",")] if self.items else None


@dataclasses.dataclass(frozen=True)
class ExportFlags:
  checkpoint: str = store.BEST
  output: str = ""
  users_file: str = ""
  top_n: int = TOP_N

  def check(self, settings: Settings) -> None:
    store.parse_which(self.checkpoint)
    export.check_output(self.output)
    _top_n(self.top_n, settings)


@dataclasses.dataclass(frozen=True)
class ServeFlags:
  checkpoint: str = store.BEST
  host: str = serve.HOST
  port: int = serve.PORT
  max_batch: int = 0
  batch_window_ms: float = serve.WINDOW_MS
  max_body_bytes: int = serve.MAX_BODY_BYTES
  max_queue: int = serve.MAX_QUEUE
  auth_token_file: str = ""

  def check(self, settings: Settings) -> None:
    del settings
    store.parse_which(self.checkpoint)
    serve.require_server()
    serve.check_serve_flags(self.port, self.max_batch, self.batch_window_ms,
                            self.max_body_bytes, self.max_queue)
    serve.read_token(self.auth_token_file)


@dataclasses.dataclass(frozen=True)
class AddItemsFlags:
  checkpoint: str = store.BEST
  items_file: str = ""

  def check(self, settings: Settings) -> None:
    del settings
    store.parse_which(self.checkpoint)
    if not self.items_file:
      raise UsageError("items_file", "give the new items' file: --items_file=FILE, in the "
                       "dataset's item format (an atomic .item file)")


@dataclasses.dataclass(frozen=True)
class ImportFlags:
  """import_official: the authors' checkpoint folder, their data folder, the tokenizer."""

  checkpoint: str = store.BEST
  official_data: str = ""
  tokenizer: str = ""

  def check(self, settings: Settings) -> None:
    del settings
    if not os.path.exists(self.checkpoint):
      raise UsageError("checkpoint", f"got {self.checkpoint!r}; give the authors' checkpoint: "
                       "--checkpoint=DIR, an epochN/ folder their model_train.py saved "
                       "(config.json and pytorch_model.bin)")
    if not os.path.isdir(self.official_data):
      raise UsageError("official_data", f"got {self.official_data!r}; give their data folder "
                       "(corpus_512.json, train_time_inter.csv, valid_inter.csv, test_inter.csv)")
    if not os.path.isfile(self.tokenizer):
      raise UsageError("tokenizer", f"got {self.tokenizer!r}; give the tokenizer.json of the "
                       "vocabulary their model was trained with (t5-small's for their code)")


FLAGS = {"evaluate": EvaluateFlags, "recommend": RecommendFlags, "export": ExportFlags,
         "serve": ServeFlags, "add_items": AddItemsFlags, "import_official": ImportFlags}


def defaults() -> dict:
  """{flag: default} of every mode flag (main.py defines its absl flags from these)."""
  out = {}
  for cls in FLAGS.values():
    for field in dataclasses.fields(cls):
      out.setdefault(field.name, field.default)
  return out


def parse(mode: str, values: dict, settings: Settings):
  """The flags `mode` reads, out of `values` (every flag given; absent ones take their default),
  checked against `settings`.

  Raises:
    UsageError: naming the first bad flag.
  """
  cls = FLAGS.get(mode, NoFlags)
  names = {f.name for f in dataclasses.fields(cls)}
  flags = cls(**{k: v for k, v in values.items() if k in names})
  flags.check(settings)
  return flags
