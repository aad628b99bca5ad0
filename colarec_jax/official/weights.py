"""The authors' PyTorch checkpoints, read without PyTorch and mapped onto colarec-jax's parameters.

Their `model_train.py` saves `V4T5smallModel` with `save_pretrained`: a folder with `config.json`
and `pytorch_model.bin` (a `torch.save` zip of the state dict) or `model.safetensors`. The
`.bin` is read here by a restricted unpickler that rebuilds tensors as NumPy arrays and refuses
anything else a pickle could name, so no PyTorch is needed and no code in the file is run.

Their model is ours tensor for tensor (the parity test, tests/test_official.py, checks the four
losses, the gradients and the beams on a fixture recorded from their code):
  shared, encoder.*, decoder.*    the T5 body, named as Hugging Face's (`model.pretrained`)
  atomid_embed [N + 1, d]          item_embed, rows by their raw item id (row 0: padding there,
                                   the unknown-item token here)
  atomid_user_embed [U + 1, d]     user_embed, rows by their raw user id
  prompt [2, d]                    task_embed, swapped: their 1 = user (recommendation) is our 0
  cid_embed_list.{t} [K + 1, d]    code_embed[t], the decoder input table of position t
  centroids.{t} [K + 1, d] + bias  codebook[t], codebook_bias[t], the code head of level t
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import zipfile

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from colarec_jax.model import pretrained
from colarec_jax.model.colarec import TASK_INDEX, TASK_REC
from colarec_jax.model.t5 import TransformerConfig
from colarec_jax.runtime.errors import UsageError

FLAG = "checkpoint"  # what errors name: the --checkpoint flag of --mode=import_official
CONFIG, TORCH_BIN, SAFETENSORS = "config.json", "pytorch_model.bin", "model.safetensors"
# torch storage classes -> NumPy dtypes.
_STORAGES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
# Their model's tensors that have no counterpart (the item-position table only exists with
# item_position=True, which `check_config` refuses).
_THEIR_HEADS = ("atomid_embed.weight", "atomid_user_embed.weight", "prompt.weight")


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 for NumPy: a strided view of the storage, copied."""
  del unused
  data, dtype = storage
  flat = np.frombuffer(data, dtype)
  if not size:
    return flat[offset:offset + 1].reshape(()).copy()
  view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                         strides=tuple(s * flat.itemsize for s in stride))
  return np.array(view)


class _Unpickler(pickle.Unpickler):
  """Knows an ordered dict, the tensor rebuilders and the storage classes; refuses the rest."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str):
    super().__init__(file)
    self.archive, self.prefix, self.path = archive, prefix, path

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGES:
      return _STORAGES[name]
    raise UsageError(FLAG, f"{self.path} holds a {module}.{name}; expected a state dict of "
                     "tensors (what save_pretrained writes)")

  def persistent_load(self, pid):
    # ('storage', storage class, key, location, numel): the bytes are data/<key> in the zip.
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise UsageError(FLAG, f"{self.path} has a persistent id {pid!r}; not a tensor storage")
    dtype, key = pid[1], pid[2]
    if dtype not in _STORAGES.values():
      raise UsageError(FLAG, f"{self.path} has a storage of type {dtype!r}")
    return self.archive.read(f"{self.prefix}data/{key}"), dtype


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """A `torch.save`d state dict (the zip format of PyTorch >= 1.6) as NumPy arrays.

  Raises:
    UsageError: not a zip of that format, or something other than tensors in it.
  """
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise UsageError(FLAG, f"{path} is not a PyTorch zip checkpoint ({e}); save it with "
                     "torch.save / save_pretrained of PyTorch >= 1.6") from None
  with archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
    if len(pickles) != 1:
      raise UsageError(FLAG, f"{path} is a zip without one data.pkl; not a torch.save file")
    prefix = pickles[0][:-len("data.pkl")]
    with archive.open(pickles[0]) as f:
      try:
        state = _Unpickler(f, archive, prefix, path).load()
      except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError) as e:
        raise UsageError(FLAG, f"{path} is not a readable state dict ({e})") from None
  if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
    raise UsageError(FLAG, f"{path} holds a {type(state).__name__}; expected a state dict of "
                     "tensors")
  return dict(state)


def read_checkpoint(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(their config.json, {tensor name: float32 array}) from a save_pretrained folder, or from a
  .bin / .safetensors file with config.json beside it.

  Raises:
    UsageError: a missing or unreadable file.
  """
  folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    candidates = [os.path.join(path, SAFETENSORS), os.path.join(path, TORCH_BIN)]
    weights = next((c for c in candidates if os.path.isfile(c)), None)
    if weights is None:
      raise UsageError(FLAG, f"{path} has neither {SAFETENSORS} nor {TORCH_BIN}; expected the "
                       "folder their model_train.py saved (epochN/)")
  elif os.path.isfile(path):
    weights = path
  else:
    raise UsageError(FLAG, f"{path} does not exist; expected their checkpoint folder or its "
                     f"{TORCH_BIN}")
  config_path = os.path.join(folder, CONFIG)
  try:
    with open(config_path) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise UsageError(FLAG, f"{config_path} not found; save_pretrained writes it beside the "
                     "weights, and the model's sizes are read from it") from None
  except (OSError, ValueError) as e:
    raise UsageError(FLAG, f"{config_path} is not readable JSON ({e})") from None
  if weights.endswith(".safetensors"):
    try:
      tensors = safetensors.numpy.load_file(weights)
    except (safetensors.SafetensorError, OSError) as e:
      raise UsageError(FLAG, f"{weights} is not a readable safetensors file ({e})") from None
  else:
    tensors = read_torch_file(weights)
  return config, {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def check_config(config: dict, transformer: TransformerConfig, *, branching: int,
                 depth: int) -> None:
  """Fails unless their config.json describes the model colarec-jax builds.

  Raises:
    UsageError: naming their config value that differs.
  """
  if config.get("item_position"):
    raise UsageError(FLAG, "the checkpoint was trained with item_position=True (a position "
                     "table on the input), which colarec-jax does not have")
  if config.get("code_length", depth) != config.get("code_num", depth):
    raise UsageError(FLAG, "their config has code_num != code_length")
  theirs = pretrained.transformer_config_from_hf({**config, "vocab_size": 0})
  for field, value in theirs.items():
    if field != "vocab_size" and getattr(transformer, field) != value:
      raise UsageError(FLAG, f"their config.json has {field}={value}, the model built here "
                       f"{getattr(transformer, field)}")
  for key, ours in (("cid_token_num", branching), ("code_length", depth)):
    if int(config.get(key, -1)) != ours:
      raise UsageError(FLAG, f"their config.json has {key}={config.get(key)}, the GIDs have "
                       f"{ours}")


def _rows(table: np.ndarray, name: str, raw_ids: np.ndarray) -> np.ndarray:
  """Our rows [n + 1, d] from theirs by raw id (row 0 of ours from their row 0)."""
  ids = np.concatenate([[0], raw_ids[1:].astype(np.int64)])
  if ids.max() >= len(table):
    raise UsageError(FLAG, f"{name} has {len(table)} rows, but the data has id {ids.max()}")
  return table[ids]


def to_params(tensors: dict[str, np.ndarray], params, transformer: TransformerConfig, *,
              item_ids: np.ndarray, user_ids: np.ndarray) -> dict:
  """Our parameters with every tensor from their state dict.

  Args:
    tensors: their state dict (`read_checkpoint`).
    params: freshly initialised parameters of the model to fill (shapes and dtypes).
    transformer: the model's transformer config.
    item_ids, user_ids: the prepared dataset's raw ids ([n + 1], entry 0 padding); their
      integer values are the rows of their tables.

  Returns:
    A new parameter dict; every one of ours is set.

  Raises:
    UsageError: a tensor missing, unexpected or of the wrong shape.
  """
  flat = traverse_util.flatten_dict(params)
  names = pretrained.parameter_names(transformer)
  depth = flat[("code_embed",)].shape[0]
  expected = set(names.values()) | set(_THEIR_HEADS)
  expected |= {f"cid_embed_list.{t}.weight" for t in range(depth)}
  expected |= {f"centroids.{t}.{w}" for t in range(depth) for w in ("weight", "bias")}
  missing = sorted(expected - set(tensors))
  unexpected = sorted(set(tensors) - expected - set(pretrained.UNUSED))
  if missing or unexpected:
    raise UsageError(FLAG, f"the state dict is not a V4T5smallModel of this size: missing "
                     f"{missing[:4]}, unexpected {unexpected[:4]}")
  out = {}
  for path, name in names.items():
    tensor, ours = tensors[name], flat[path]
    if path[-1] == "kernel":
      tensor = tensor.T
    elif path == ("shared", "embedding"):
      # Their vocabulary may have more rows (<extra_id_*> slot markers, t5-small's 28 unused).
      tensor = tensor[:ours.shape[0]]
    out[path] = tensor
  prompt = tensors["prompt.weight"]
  order = np.zeros(2, np.int64)
  order[TASK_REC], order[TASK_INDEX] = 1, 0  # theirs: 1 = 'user' (recommendation), 0 = 'item'
  out[("task_embed", "embedding")] = prompt[order]
  out[("item_embed", "embedding")] = _rows(tensors["atomid_embed.weight"], "atomid_embed",
                                           item_ids)
  out[("user_embed", "embedding")] = _rows(tensors["atomid_user_embed.weight"],
                                           "atomid_user_embed", user_ids)
  out[("code_embed",)] = np.stack([tensors[f"cid_embed_list.{t}.weight"] for t in range(depth)])
  out[("codebook",)] = np.stack([tensors[f"centroids.{t}.weight"] for t in range(depth)])
  out[("codebook_bias",)] = np.stack([tensors[f"centroids.{t}.bias"] for t in range(depth)])
  for path, ours in flat.items():
    if path not in out:
      raise UsageError(FLAG, f"no tensor of theirs fills {'/'.join(path)}")
    if out[path].shape != ours.shape:
      raise UsageError(FLAG, f"{'/'.join(path)}: theirs has shape {out[path].shape}, the model "
                       f"built here {ours.shape}")
    out[path] = np.asarray(out[path], ours.dtype)
  return traverse_util.unflatten_dict(out)


def their_name(path: tuple[str, ...], transformer: TransformerConfig) -> str | None:
  """The state-dict name our parameter `path` is read from (None for the stacked per-level
  tables, which come from several of theirs)."""
  names = pretrained.parameter_names(transformer)
  names.update({("task_embed", "embedding"): "prompt.weight",
                ("item_embed", "embedding"): "atomid_embed.weight",
                ("user_embed", "embedding"): "atomid_user_embed.weight"})
  return names.get(path)
