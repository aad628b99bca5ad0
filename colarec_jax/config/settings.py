"""The config, parsed once per run into frozen, checked views: one per stage.

`Settings.parse(config)` checks every key that needs no data before any work starts, and each
stage is handed only its own view (`settings.data` to data preparation, `settings.cf` to
LightGCN, ...). A number has one setting: the content tokens per item are `data.max_item_tokens`,
ColaRec's beam size is `eval.beam_size`, and K and l reach the model from the GID table.
"""

from __future__ import annotations

import dataclasses
import json
import math

from colarec_jax.cf.lightgcn import LightGCNConfig
from colarec_jax.config.base import FIXED_SECTIONS
from colarec_jax.data.config import DataConfig
from colarec_jax.evaluate import EvalConfig
from colarec_jax.gid.sources import GidConfig
from colarec_jax.model import pretrained
from colarec_jax.model.colarec import ModelConfig
from colarec_jax.model.inputs import InputConfig
from colarec_jax.runtime.errors import ConfigError

SCHEDULES = ("constant", "warmup_cosine")
REDUCTIONS = ("sum", "mean")
PAIR_FORMS = ("log_sigmoid", "official")
PAIR_NEGATIVES = ("single", "in_batch")


def _at_least(section: str, view, minimum: int, *names: str) -> None:
  for name in names:
    if getattr(view, name) < minimum:
      raise ConfigError(f"{section}.{name}", f"got {getattr(view, name)}, expected >= {minimum}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """config.optim, checked: AdamW with global-norm clipping."""

  learning_rate: float = 5e-4
  weight_decay: float = 0.01
  schedule: str = "constant"
  warmup_steps: int = 0
  grad_clip: float = 1.0
  batch_size: int = 128

  @classmethod
  def from_config(cls, optim) -> "OptimConfig":
    out = cls(float(optim.learning_rate), float(optim.weight_decay), str(optim.schedule),
              int(optim.warmup_steps), float(optim.grad_clip), int(optim.batch_size))
    if out.schedule not in SCHEDULES:
      raise ConfigError("optim.schedule", f"got {out.schedule!r}, expected one of "
                        f"{', '.join(map(repr, SCHEDULES))}")
    if not (math.isfinite(out.learning_rate) and out.learning_rate > 0):
      raise ConfigError("optim.learning_rate", f"got {out.learning_rate}, expected a finite "
                        "number > 0")
    _at_least("optim", out, 0, "warmup_steps")
    _at_least("optim", out, 1, "batch_size")
    return out

  def check_warmup(self, total_steps: int, counted: str = "") -> None:
    """Refuses a warm-up that leaves a `total_steps` run nothing to decay over (`counted`
    says where the count came from, for the message)."""
    if self.schedule == "warmup_cosine" and total_steps <= self.warmup_steps:
      raise ConfigError("optim.warmup_steps", f"got {self.warmup_steps}, expected fewer than "
                        f"the {total_steps} training steps{counted}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """config.train, checked: ColaRec's epochs, validation, early stopping and checkpoints."""

  epochs: int = 60
  steps_per_epoch: int = 0  # 0 = every training interaction once
  eval_every: int = 1
  patience: int = 10
  log_every: int = 10
  keep_checkpoints: int = 2
  checkpoint_every_steps: int = 0  # 0 = checkpoints at epoch ends only
  max_seconds: float = 0.0  # 0 = no wall-clock budget

  @classmethod
  def from_config(cls, train) -> "TrainConfig":
    out = cls(int(train.epochs), int(train.steps_per_epoch), int(train.eval_every),
              int(train.patience), int(train.log_every), int(train.keep_checkpoints),
              int(train.checkpoint_every_steps), float(train.max_seconds))
    _at_least("train", out, 1, "epochs", "eval_every", "patience", "log_every", "keep_checkpoints")
    _at_least("train", out, 0, "steps_per_epoch", "checkpoint_every_steps", "max_seconds")
    return out


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """config.loss: one weight per term (official: 0.08 L_rec + 0.08 L_index + L_bpr + 0.1 L_c).
  A zero weight removes the term, and the passes only it needs, from the step."""

  rec: float = 0.08
  index: float = 0.08
  bpr: float = 1.0
  contrastive: float = 0.1
  # L_bpr and L_c score pairs by dot product (official, 0) or by cosine / this temperature.
  pair_temperature: float = 0.0
  generation_reduction: str = "mean"  # over code positions: mean (the authors') | sum
  pair_form: str = "log_sigmoid"  # log_sigmoid | official (-log(1e-10 + sigmoid))
  pair_negatives: str = "single"  # single (the paper's BPR) | in_batch (softmax over the batch)

  @classmethod
  def from_config(cls, loss) -> "LossWeights":
    out = cls(float(loss.rec_weight), float(loss.index_weight), float(loss.bpr_weight),
              float(loss.contrastive_weight), float(loss.pair_temperature),
              str(loss.generation_reduction), str(loss.pair_form), str(loss.pair_negatives))
    for key, choices in (("generation_reduction", REDUCTIONS), ("pair_form", PAIR_FORMS),
                         ("pair_negatives", PAIR_NEGATIVES)):
      if getattr(out, key) not in choices:
        raise ConfigError(f"loss.{key}", f"got {getattr(out, key)!r}, expected one of "
                          f"{', '.join(map(repr, choices))}")
    for name, value in out.as_dict().items():
      if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"loss.{name}_weight", f"got {value}, expected a finite number >= 0")
    if not any(out.as_dict().values()):
      raise ConfigError("loss.rec_weight", "every loss weight is 0; expected at least one term")
    if not (math.isfinite(out.pair_temperature) and out.pair_temperature >= 0):
      raise ConfigError("loss.pair_temperature", f"got {out.pair_temperature}, expected a "
                        "finite number >= 0 (0 = dot product, as the paper)")
    return out

  def as_dict(self) -> dict[str, float]:
    """{term: weight} of the four loss terms."""
    return {"rec": self.rec, "index": self.index, "bpr": self.bpr,
            "contrastive": self.contrastive}


@dataclasses.dataclass(frozen=True)
class Settings:
  """Every section of a config, checked.

  Attributes:
    seed: the run's seed (parameters, dropout, sampling, LightGCN).
    num_devices: devices on the mesh's data axis (0 = all).
    cpu_devices: CPU devices to split the host into (0 = JAX's own setting).
    data, cf, gid, model, inputs, optim, train, loss, eval: the sections' views.
    fixed: the config sections a ColaRec checkpoint is tied to, as JSON values.
    full: the whole config as JSON values (what training stores in the workdir, `config.stored`).
  """

  seed: int
  num_devices: int
  cpu_devices: int
  data: DataConfig
  cf: LightGCNConfig
  gid: GidConfig
  model: ModelConfig
  inputs: InputConfig
  optim: OptimConfig
  train: TrainConfig
  loss: LossWeights
  eval: EvalConfig
  fixed: dict
  full: dict

  @classmethod
  def parse(cls, config) -> "Settings":
    """Checks and freezes `config` (an ml_collections ConfigDict).

    Raises:
      ConfigError: naming the first bad key.
    """
    model = ModelConfig.from_config(config.model)
    if model.init_from:  # a size mismatch fails now, not after LightGCN and the GIDs
      pretrained.check_transformer_config(model.transformer(vocab_size=1),
                                          pretrained.read_config(model.init_from))
    # A pretrained model brings its own vocabulary, which data preparation must use.
    data = dataclasses.replace(
        DataConfig.from_config(config.data),
        tokenizer=pretrained.data_tokenizer(model.init_from, str(config.data.tokenizer)))
    optim, train = OptimConfig.from_config(config.optim), TrainConfig.from_config(config.train)
    if train.steps_per_epoch:  # capped: the most steps a run can take is known without data
      optim.check_warmup(train.epochs * train.steps_per_epoch,
                         " (train.epochs x train.steps_per_epoch)")
    full = json.loads(config.to_json())
    return cls(
        seed=int(config.seed), num_devices=int(config.num_devices),
        cpu_devices=int(config.cpu_devices), data=data, cf=LightGCNConfig.from_config(config.cf),
        gid=GidConfig.from_config(config.gid), model=model,
        inputs=InputConfig.from_config(config.inputs, data.max_item_tokens),
        optim=optim, train=train,
        loss=LossWeights.from_config(config.loss), eval=EvalConfig.from_config(config.eval),
        fixed={k: full[k] for k in FIXED_SECTIONS}, full=full)
