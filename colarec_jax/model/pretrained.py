"""Starting from a pretrained T5 v1.0 (t5-small, t5-base, ...): weights and tokenizer read from a
local Hugging Face folder, as the authors do (`config.model.init_from`).

The folder holds `config.json`, the weights as `model.safetensors` (read with safetensors' NumPy
reader, no PyTorch) or `pytorch_model.bin` (needs PyTorch), and `tokenizer.json`. Every tensor of
the encoder-decoder maps one to one onto `t5.py`'s parameters (its layout mirrors Hugging Face's);
ColaRec's own parameters (item/user/task embeddings, code tables, codebooks) are not in a T5
checkpoint and keep their fresh initialisation. Every mismatch is a `ConfigError` on
`model.init_from`, or on the `model.*` size key the folder disagrees with.
"""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import safetensors
import safetensors.numpy
from flax import traverse_util

from colarec_jax.model.t5 import TransformerConfig
from colarec_jax.runtime.errors import ConfigError

KEY = "model.init_from"
SAFETENSORS, TORCH_BIN = "model.safetensors", "pytorch_model.bin"
# Tied copies of `shared.weight` and the LM head: ColaRec has no vocabulary head, so none is used.
UNUSED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")

# Sub-layers of one block, in Hugging Face's `layer.{i}` order: (our norm, our block, theirs).
_SUBLAYERS = {
    "encoder": (("pre_attention_norm", "attention", "SelfAttention"),
                ("pre_mlp_norm", "mlp", "DenseReluDense")),
    "decoder": (("pre_self_attention_norm", "self_attention", "SelfAttention"),
                ("pre_cross_attention_norm", "cross_attention", "EncDecAttention"),
                ("pre_mlp_norm", "mlp", "DenseReluDense")),
}
# TransformerConfig field -> the config key a user sets it with (d_kv = d_model / num_heads);
# the relative-attention settings and epsilon are fixed in TransformerConfig.
_CONFIG_KEYS = {
    "d_model": "model.d_model", "d_ff": "model.d_ff", "num_heads": "model.num_heads",
    "d_kv": "model.num_heads", "num_encoder_layers": "model.num_encoder_layers",
    "num_decoder_layers": "model.num_decoder_layers", "relative_attention_num_buckets": KEY,
    "relative_attention_max_distance": KEY, "layer_norm_epsilon": KEY,
}


def _check_folder(folder: str) -> None:
  if not os.path.isdir(folder):
    raise ConfigError(KEY, f"{folder!r} is not a folder; expected a local Hugging Face T5 folder "
                      "(config.json, model.safetensors or pytorch_model.bin, tokenizer.json)")


def read_config(folder: str) -> dict:
  """`<folder>/config.json`, checked to be a T5 v1.0 (ReLU feed-forward) config.

  Raises:
    ConfigError: the folder or file is missing or unreadable, or the model is another variant
      (T5 v1.1 / flan-t5 / mT5 with gated-GELU, or not a T5).
  """
  _check_folder(folder)
  path = os.path.join(folder, "config.json")
  try:
    with open(path) as f:
      hf_config = json.load(f)
  except FileNotFoundError:
    raise ConfigError(KEY, f"{path} not found; a Hugging Face model folder has a config.json"
                      ) from None
  except (OSError, ValueError) as e:
    raise ConfigError(KEY, f"{path} is not readable JSON ({e})") from None
  if not isinstance(hf_config, dict):
    raise ConfigError(KEY, f"{path} holds a JSON {type(hf_config).__name__}; expected an object "
                      "of the model's settings")
  if hf_config.get("model_type") != "t5":
    raise ConfigError(KEY, f"{path} has model_type={hf_config.get('model_type')!r}; only 't5' "
                      "(T5 v1.0: t5-small, t5-base, ...) is supported")
  # Older config.json files (t5-small's own) predate the key; their feed-forward is ReLU.
  proj = hf_config.get("feed_forward_proj", "relu")
  if (proj != "relu" or hf_config.get("is_gated_act", False)
      or hf_config.get("dense_act_fn", "relu") != "relu"):
    raise ConfigError(KEY, f"{path} has feed_forward_proj={proj!r}: a gated-GELU T5 (v1.1, "
                      "flan-t5) is not supported; only T5 v1.0's 'relu' feed-forward is")
  return hf_config


def transformer_config_from_hf(hf_config: dict) -> dict:
  """The `TransformerConfig` fields a Hugging Face T5 config fixes.

  Args:
    hf_config: the parsed config.json.

  Returns:
    {field: value} for vocab_size (rows of the embedding; the tokenizer may use fewer: t5-small's
    has 32100 of 32128), d_model, d_ff, num_heads, d_kv, num_encoder_layers, num_decoder_layers,
    relative_attention_num_buckets, relative_attention_max_distance, layer_norm_epsilon.
  """
  required = ("vocab_size", "d_model", "d_ff", "num_heads", "d_kv", "num_layers")
  missing = [k for k in required if k not in hf_config]
  if missing:
    raise ConfigError(KEY, f"config.json lacks {', '.join(missing)}; not a T5 config")
  # Defaults are Hugging Face's, for keys that older config.json files leave out.
  decoder_layers = hf_config.get("num_decoder_layers")
  return {
      "vocab_size": int(hf_config["vocab_size"]), "d_model": int(hf_config["d_model"]),
      "d_ff": int(hf_config["d_ff"]), "num_heads": int(hf_config["num_heads"]),
      "d_kv": int(hf_config["d_kv"]), "num_encoder_layers": int(hf_config["num_layers"]),
      "num_decoder_layers": int(hf_config["num_layers"] if decoder_layers is None
                                else decoder_layers),
      "relative_attention_num_buckets": int(hf_config.get("relative_attention_num_buckets", 32)),
      "relative_attention_max_distance": int(
          hf_config.get("relative_attention_max_distance", 128)),
      "layer_norm_epsilon": float(hf_config.get("layer_norm_epsilon", 1e-6)),
  }


def check_transformer_config(transformer_config: TransformerConfig, hf_config: dict) -> None:
  """Fails unless the model built from the config can hold the checkpoint.

  Sizes must be equal (the error names the `model.*` key to set); the vocabulary, which comes from
  the tokenizer, may be smaller than the checkpoint's embedding but not larger.

  Raises:
    ConfigError: on the first field that differs.
  """
  theirs = transformer_config_from_hf(hf_config)
  for field, key in _CONFIG_KEYS.items():
    ours = getattr(transformer_config, field)
    if ours == theirs[field]:
      continue
    if key == KEY:
      raise ConfigError(KEY, f"the checkpoint has {field}={theirs[field]}, this T5 is built with "
                        f"{ours}; such a checkpoint is not supported")
    if field == "d_kv":
      raise ConfigError(key, f"the checkpoint has d_kv={theirs[field]} per head, the config "
                        f"gives model.d_model / model.num_heads = {ours}")
    raise ConfigError(key, f"got {ours}, the checkpoint in {KEY} has {theirs[field]}; set "
                      f"--config.{key}={theirs[field]}")
  if transformer_config.vocab_size > theirs["vocab_size"]:
    raise ConfigError(KEY, f"the tokenizer has {transformer_config.vocab_size} tokens, the "
                      f"checkpoint's embedding only {theirs['vocab_size']} rows; use the "
                      "folder's own tokenizer.json")


def load_t5(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
  """Reads a Hugging Face T5 folder.

  Args:
    folder: holds config.json and model.safetensors (preferred, no PyTorch needed) or
      pytorch_model.bin (needs PyTorch).

  Returns:
    (the parsed config.json, {tensor name: float32 array} in Hugging Face's names and layout).

  Raises:
    ConfigError: missing or unreadable files, an unsupported variant, or PyTorch missing for a
      .bin-only folder.
  """
  hf_config = read_config(folder)
  path = os.path.join(folder, SAFETENSORS)
  if os.path.isfile(path):
    try:
      tensors = safetensors.numpy.load_file(path)
    except safetensors.SafetensorError as e:
      raise ConfigError(KEY, f"{path} is not a readable safetensors file ({e})") from None
    except KeyError as e:  # the NumPy reader has no bfloat16
      raise ConfigError(KEY, f"{path} holds {e} tensors, which NumPy cannot read; save the "
                        "model in float32") from None
  elif os.path.isfile(os.path.join(folder, TORCH_BIN)):
    tensors = _load_torch_bin(os.path.join(folder, TORCH_BIN))
  else:
    raise ConfigError(KEY, f"{folder} has neither {SAFETENSORS} nor {TORCH_BIN}")
  return hf_config, {name: np.asarray(t, np.float32) for name, t in tensors.items()}


def _load_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # only .bin folders need PyTorch
  except ImportError:
    raise ConfigError(KEY, f"{path} is a PyTorch file and PyTorch is not installed; install it "
                      "(pip install torch) or save the model as model.safetensors") from None
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except (RuntimeError, pickle.UnpicklingError, EOFError) as e:
    raise ConfigError(KEY, f"{path} is not a readable PyTorch state dict ({e})") from None
  # float() first: NumPy has no bfloat16.
  return {name: t.float().numpy() for name, t in state.items()}


def parameter_names(transformer_config: TransformerConfig) -> dict[tuple[str, ...], str]:
  """Our parameter path (under ColaRec's params) -> the Hugging Face tensor it is read from.

  Kernels (`.../kernel`) are stored transposed by PyTorch's Linear ([out, in]); the relative
  bias of block 0 serves every layer of its stack, here and in Hugging Face's model.
  """
  names = {("shared", "embedding"): "shared.weight"}
  layers = {"encoder": transformer_config.num_encoder_layers,
            "decoder": transformer_config.num_decoder_layers}
  for stack, sublayers in _SUBLAYERS.items():
    names[(stack, "relative_bias", "rel_embedding")] = (
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    names[(stack, "final_norm", "scale")] = f"{stack}.final_layer_norm.weight"
    for n in range(layers[stack]):
      for i, (norm, block, hf_block) in enumerate(sublayers):
        ours, theirs = (stack, f"layer_{n}"), f"{stack}.block.{n}.layer.{i}"
        names[ours + (norm, "scale")] = f"{theirs}.layer_norm.weight"
        for dense in ("wi", "wo") if block == "mlp" else ("q", "k", "v", "o"):
          names[ours + (block, dense, "kernel")] = f"{theirs}.{hf_block}.{dense}.weight"
  return names


def init_from_pretrained(params, folder: str, transformer_config: TransformerConfig) -> dict:
  """ColaRec's parameters with the T5 encoder-decoder and shared embedding read from `folder`.

  Args:
    params: ColaRec's freshly initialised parameters (`model.init(...)['params']`).
    folder: a Hugging Face T5 v1.0 folder (see `load_t5`).
    transformer_config: the config the model was built with; its sizes must match the folder's,
      its vocab_size (the tokenizer's) may be smaller than the embedding's rows, which are cut.

  Returns:
    A new parameter dict: every encoder/decoder tensor and the first vocab_size rows of the
    shared embedding from the checkpoint (NumPy arrays of each parameter's dtype); ColaRec's own
    parameters as they were.

  Raises:
    ConfigError: on a config mismatch (naming the `model.*` key), a missing, unexpected or
      misshapen tensor (naming it, with the expected and found shapes), or an unreadable folder.
  """
  hf_config, tensors = load_t5(folder)
  check_transformer_config(transformer_config, hf_config)
  flat = traverse_util.flatten_dict(params)
  names = parameter_names(transformer_config)
  unexpected = sorted(set(tensors) - set(names.values()) - set(UNUSED))
  if unexpected:
    raise ConfigError(KEY, f"{folder} has tensors a T5 v1.0 of this size does not: "
                      f"{', '.join(unexpected[:5])}")
  hf_vocab = int(hf_config["vocab_size"])
  for path, name in names.items():
    if name not in tensors:
      raise ConfigError(KEY, f"{folder} lacks tensor {name!r} (for {'/'.join(path)})")
    ours, tensor = flat[path], tensors[name]
    is_kernel, is_shared = path[-1] == "kernel", path == ("shared", "embedding")
    # Expected in the checkpoint's layout: [out, in] kernels, all of the embedding's rows.
    expected = (ours.shape[::-1] if is_kernel
                else (hf_vocab,) + ours.shape[1:] if is_shared else ours.shape)
    if tensor.shape != expected:
      raise ConfigError(KEY, f"tensor {name!r} has shape {tensor.shape}, expected {expected} "
                        f"(for {'/'.join(path)})")
    if is_kernel:
      tensor = tensor.T
    elif is_shared:
      tensor = tensor[:transformer_config.vocab_size]
    flat[path] = np.asarray(tensor, ours.dtype)
  return traverse_util.unflatten_dict(flat)


def tokenizer_file(folder: str) -> str:
  """`<folder>/tokenizer.json`, the pretrained model's vocabulary.

  Raises:
    ConfigError: the folder has none. A SentencePiece-only folder (spiece.model) needs converting
      once: `tokenizers` alone cannot read spiece.model without SentencePiece's protobuf schema.
  """
  _check_folder(folder)
  path = os.path.join(folder, "tokenizer.json")
  if os.path.isfile(path):
    return path
  if os.path.isfile(os.path.join(folder, "spiece.model")):
    raise ConfigError(KEY, f"{folder} has spiece.model but no tokenizer.json; write it once "
                      "with transformers and sentencepiece installed: python -c \"from "
                      f"transformers import AutoTokenizer; AutoTokenizer.from_pretrained('{folder}')"
                      f".save_pretrained('{folder}')\"")
  raise ConfigError(KEY, f"{folder} has no tokenizer.json; the pretrained embedding needs the "
                    "model's own vocabulary")


def data_tokenizer(init_from: str, tokenizer: str) -> str:
  """The tokenizer.json data preparation uses: model.init_from's, else data.tokenizer's.

  Raises:
    ConfigError: both are set and name different files.
  """
  if not init_from:
    return tokenizer
  path = tokenizer_file(init_from)
  if tokenizer and os.path.abspath(tokenizer) != os.path.abspath(path):
    raise ConfigError("data.tokenizer", f"got {tokenizer!r}, but {KEY}={init_from!r} "
                      f"brings its own {path}; leave data.tokenizer empty")
  return path
