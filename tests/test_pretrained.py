"""Pretrained T5: a small random Hugging Face T5 loaded into our model gives the same encoder and
decoder outputs as PyTorch's, and every user mistake is one ConfigError."""

import functools
import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import traverse_util

from colarec_jax.data import prepare as prepare_lib
from colarec_jax.config.settings import Settings
from colarec_jax.run import parts as parts_lib
from colarec_jax.training.state import initial_state
from colarec_jax.training.step import create_optimizer
from colarec_jax.data import tokenizer as tokenizer_lib
from colarec_jax.runtime.errors import ConfigError
from colarec_jax.model import pretrained
from colarec_jax.model.colarec import ColaRec, ColaRecConfig
from colarec_jax.model.t5 import Decoder, Encoder, TransformerConfig
from configs import phones, tiny

HF_VOCAB = 100
# The tokenizer's vocabulary is smaller than the checkpoint's embedding (as t5-small's 32100 of
# 32128 rows), so loading also cuts the embedding.
TC = TransformerConfig(vocab_size=90, d_model=32, d_ff=64, num_heads=4, d_kv=8,
                       num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf():
  """(torch, transformers): skipped when missing, an error on CI (CI=true), which installs them."""
  try:
    import torch
    import transformers
  except ImportError as e:
    message = f"needs torch and transformers (pip install -e '.[test]'): {e}"
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(message)
    pytest.skip(message)
  return torch, transformers


@pytest.fixture(scope="module")
def hf_model(hf):
  """A random T5 v1.0; norm scales (initialised to 1) and relative biases randomised too, so a
  swapped or missing mapping cannot hide."""
  torch, transformers = hf
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=HF_VOCAB, d_model=32, d_ff=64, num_heads=4, d_kv=8, num_layers=2,
      num_decoder_layers=2, feed_forward_proj="relu", dropout_rate=0.0,
      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.uniform_(0.5, 1.5)
      elif "relative_attention_bias" in name:
        p.normal_(0.0, 1.0)
  return model


@pytest.fixture(scope="module")
def folder(hf_model, tmp_path_factory):
  """The model saved by save_pretrained (model.safetensors)."""
  path = str(tmp_path_factory.mktemp("t5"))
  hf_model.save_pretrained(path)
  assert os.path.isfile(os.path.join(path, pretrained.SAFETENSORS))
  return path


@functools.partial(jax.jit, static_argnums=0)
def init_params(tc):
  """ColaRec's fresh parameters around a T5 of config `tc`."""
  b, length = 2, 6
  inputs = {k: jnp.zeros((b, length), jnp.int32) for k in ("tokens", "items", "users")}
  inputs.update(mask=jnp.ones((b, length), bool), task=jnp.zeros((b,), jnp.int32))
  model = ColaRec(ColaRecConfig(tc, num_items=5, num_users=4, branching=4, depth=3))
  return model.init(jax.random.key(0), inputs, jnp.ones((b, 3), jnp.int32))["params"]


@pytest.fixture(scope="module")
def fresh():
  return init_params(TC)


@jax.jit
def encode_decode(params, ids, mask, decoder_ids):
  """Our stacks on the shared embedding directly (ColaRec.encode would write a task slot at 0)."""
  shared = params["shared"]["embedding"]
  encoded = Encoder(TC).apply({"params": params["encoder"]}, shared[ids], mask,
                              deterministic=True)
  return encoded, Decoder(TC).apply({"params": params["decoder"]}, shared[decoder_ids], encoded,
                                    mask, deterministic=True)


def test_outputs_match_pytorch(hf, hf_model, folder, fresh):
  torch, _ = hf
  params = pretrained.init_from_pretrained(fresh, folder, TC)
  rng = np.random.default_rng(0)
  ids = rng.integers(2, TC.vocab_size, (3, 10))
  mask = np.ones_like(ids, bool)
  mask[0, 7:] = mask[2, 4:] = False
  ids[~mask] = 0
  decoder_ids = rng.integers(0, TC.vocab_size, (3, 4))

  with torch.no_grad():
    hf_encoded = hf_model.encoder(input_ids=torch.tensor(ids),
                                  attention_mask=torch.tensor(mask)).last_hidden_state
    hf_decoded = hf_model.decoder(input_ids=torch.tensor(decoder_ids),
                                  encoder_hidden_states=hf_encoded,
                                  encoder_attention_mask=torch.tensor(mask)).last_hidden_state
  encoded, decoded = encode_decode(params, ids, mask, decoder_ids)
  encoder_error = np.abs(np.asarray(encoded) - hf_encoded.numpy())[mask].max()
  decoder_error = np.abs(np.asarray(decoded) - hf_decoded.numpy()).max()
  assert encoder_error < TOLERANCE and decoder_error < TOLERANCE, (encoder_error, decoder_error)


def test_colarec_parameters_stay_fresh(folder, fresh):
  loaded = pretrained.init_from_pretrained(fresh, folder, TC)
  tensors = safetensors.numpy.load_file(os.path.join(folder, pretrained.SAFETENSORS))
  np.testing.assert_array_equal(loaded["shared"]["embedding"],
                                tensors["shared.weight"][:TC.vocab_size])
  mapped = set(pretrained.parameter_names(TC))
  for path, value in traverse_util.flatten_dict(fresh).items():
    if path not in mapped:
      np.testing.assert_array_equal(traverse_util.flatten_dict(loaded)[path], value)
  # Every parameter of the T5 stacks comes from the checkpoint.
  assert {p for p in traverse_util.flatten_dict(fresh) if p[0] in ("encoder", "decoder")} <= mapped


def test_torch_bin_loads_the_same(hf, hf_model, folder, fresh, tmp_path):
  torch, _ = hf
  shutil.copy(os.path.join(folder, "config.json"), tmp_path)
  # A full state dict, with the tied embed_tokens and lm_head copies older checkpoints carry.
  torch.save(hf_model.state_dict(), tmp_path / pretrained.TORCH_BIN)
  from_bin = pretrained.init_from_pretrained(fresh, str(tmp_path), TC)
  from_safetensors = pretrained.init_from_pretrained(fresh, folder, TC)
  jax.tree.map(np.testing.assert_array_equal, from_bin, from_safetensors)


def copy_folder(folder, target, *, config=None, tensors=None):
  """`folder` copied to `target` with config.json keys and tensors replaced (None drops one)."""
  with open(os.path.join(folder, "config.json")) as f:
    hf_config = json.load(f)
  hf_config.update(config or {})
  with open(os.path.join(target, "config.json"), "w") as f:
    json.dump(hf_config, f)
  weights = safetensors.numpy.load_file(os.path.join(folder, pretrained.SAFETENSORS))
  for name, value in (tensors or {}).items():
    if value is None:
      del weights[name]
    else:
      weights[name] = value
  safetensors.numpy.save_file(weights, os.path.join(target, pretrained.SAFETENSORS))
  return str(target)


WO = "encoder.block.1.layer.1.DenseReluDense.wo.weight"


@pytest.mark.parametrize("change, match", [
    ({"tensors": {WO: np.zeros((32, 63), np.float32)}},
     r"tensor 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight' has shape \(32, 63\), "
     r"expected \(32, 64\) \(for encoder/layer_1/mlp/wo/kernel\)"),
    ({"tensors": {WO: None}}, r"lacks tensor 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo"),
    ({"tensors": {"encoder.block.2.layer.0.layer_norm.weight": np.ones(32, np.float32)}},
     r"has tensors .* does not: encoder\.block\.2\.layer\.0\.layer_norm\.weight"),
    ({"config": {"feed_forward_proj": "gated-gelu", "is_gated_act": True,
                 "dense_act_fn": "gelu_new"}}, r"feed_forward_proj='gated-gelu'"),
    ({"config": {"model_type": "mt5"}}, r"model_type='mt5'"),
    ({"config": {"relative_attention_num_buckets": 16}}, r"relative_attention_num_buckets=16"),
    ({"config": {"relative_attention_max_distance": 64}}, r"relative_attention_max_distance=64"),
    ({"config": {"vocab_size": 80}}, r"tokenizer has 90 tokens.* only 80 rows"),
])
def test_checkpoint_mismatch_is_a_config_error(folder, fresh, tmp_path, change, match):
  bad = copy_folder(folder, tmp_path, **change)
  with pytest.raises(ConfigError, match=match) as error:
    pretrained.init_from_pretrained(fresh, bad, TC)
  assert error.value.key == "model.init_from"


@pytest.mark.parametrize("field, value, key", [
    ("d_ff", 128, "model.d_ff"), ("d_model", 64, "model.d_model"),
    ("num_decoder_layers", 1, "model.num_decoder_layers"), ("d_kv", 16, "model.num_heads"),
])
def test_size_mismatch_names_the_config_key(folder, field, value, key):
  tc = TransformerConfig(**{**TC.__dict__, field: value})
  with pytest.raises(ConfigError, match=rf"^config\.{key}: ") as error:
    pretrained.init_from_pretrained(jax.eval_shape(lambda: init_params(tc)), folder, tc)
  assert error.value.key == key


def test_missing_files_are_config_errors(folder, tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match="is not a folder"):
    pretrained.load_t5(str(tmp_path / "absent"))
  with pytest.raises(ConfigError, match="config.json not found"):
    pretrained.load_t5(str(tmp_path))
  shutil.copy(os.path.join(folder, "config.json"), tmp_path)
  with pytest.raises(ConfigError, match="has neither model.safetensors nor pytorch_model.bin"):
    pretrained.load_t5(str(tmp_path))
  (tmp_path / pretrained.SAFETENSORS).write_bytes(b"not safetensors")
  with pytest.raises(ConfigError, match="not a readable safetensors file"):
    pretrained.load_t5(str(tmp_path))
  os.remove(tmp_path / pretrained.SAFETENSORS)
  (tmp_path / pretrained.TORCH_BIN).write_bytes(b"not a state dict")
  with pytest.raises(ConfigError, match="not a readable PyTorch state dict"):
    pretrained.load_t5(str(tmp_path))
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ConfigError, match="PyTorch is not installed"):
    pretrained.load_t5(str(tmp_path))


def test_transformer_config_from_hf_reads_old_config_files():
  # t5-small's own config.json predates num_decoder_layers, feed_forward_proj and max_distance.
  old = {"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_ff": 2048, "d_kv": 64,
         "num_heads": 8, "num_layers": 6, "relative_attention_num_buckets": 32,
         "layer_norm_epsilon": 1e-6}
  fields = pretrained.transformer_config_from_hf(old)
  pretrained.check_transformer_config(TransformerConfig(vocab_size=32100), old)
  assert TransformerConfig(**fields) == TransformerConfig()


def save_tokenizer(path):
  tok = tokenizer_lib.train_tokenizer(["title phone case brand acme", "title charger brand volt"],
                                      vocab_size=80)
  tok.save(str(path))
  return tok


def test_tokenizer_file(tmp_path):
  with pytest.raises(ConfigError, match="has no tokenizer.json"):
    pretrained.tokenizer_file(str(tmp_path))
  (tmp_path / "spiece.model").write_bytes(b"")
  with pytest.raises(ConfigError, match="has spiece.model but no tokenizer.json"):
    pretrained.tokenizer_file(str(tmp_path))
  save_tokenizer(tmp_path / "tokenizer.json")
  assert pretrained.tokenizer_file(str(tmp_path)) == str(tmp_path / "tokenizer.json")


def test_prepare_uses_the_pretrained_tokenizer(folder, tmp_path):
  t5 = tmp_path / "t5"
  shutil.copytree(folder, t5)
  tok = save_tokenizer(t5 / "tokenizer.json")
  config = tiny.get_config()
  config.model.update(init_from=str(t5), d_model=32, d_ff=64, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2)
  prepared = prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "w"),
                                 log=lambda *_: 0)
  assert prepared.vocab_size == tok.get_vocab_size()
  assert prepared.manifest["key"]["data"]["tokenizer"] == str(t5 / "tokenizer.json")
  config.data.tokenizer = str(tmp_path / "other.json")
  save_tokenizer(config.data.tokenizer)
  with pytest.raises(ConfigError, match=r"^config\.data\.tokenizer: .*leave data.tokenizer empty"):
    prepare_lib.prepare(Settings.parse(config).data, str(tmp_path / "w"), log=lambda *_: 0)


def test_phones_pretrained_variant(monkeypatch):
  monkeypatch.setenv("COLAREC_T5_DIR", "/models/t5-small")
  assert phones.get_config("pretrained").model.init_from == "/models/t5-small"
  assert phones.get_config().model.init_from == ""
  monkeypatch.delenv("COLAREC_T5_DIR")
  with pytest.raises(ValueError, match="COLAREC_T5_DIR"):
    phones.get_config("pretrained")
  with pytest.raises(ValueError, match="unknown variant"):
    phones.get_config("large")


def test_training_starts_from_the_pretrained_weights(folder, tmp_path):
  """config.model.init_from reaches the train state: its T5 weights are the checkpoint's."""
  t5 = tmp_path / "t5"
  shutil.copytree(folder, t5)
  save_tokenizer(t5 / "tokenizer.json")
  config = tiny.get_config()
  config.model.update(init_from=str(t5), d_model=32, d_ff=64, num_heads=4, num_encoder_layers=2,
                      num_decoder_layers=2)
  config.cf.epochs = 1
  settings = Settings.parse(config)
  ws = parts_lib.build(settings, str(tmp_path / "w"), log=lambda *_: 0)
  state = initial_state(ws, settings, str(tmp_path / "w"), create_optimizer(settings.optim))
  tensors = safetensors.numpy.load_file(os.path.join(folder, pretrained.SAFETENSORS))
  vocab = ws.prepared.vocab_size
  np.testing.assert_array_equal(state.params["shared"]["embedding"],
                                tensors["shared.weight"][:vocab])
  np.testing.assert_array_equal(
      state.params["encoder"]["layer_0"]["mlp"]["wi"]["kernel"],
      tensors["encoder.block.0.layer.1.DenseReluDense.wi.weight"].T)
  config.model.d_ff = 128  # refused when the config is parsed, before any work
  with pytest.raises(ConfigError, match=r"config.model.d_ff: got 128, the checkpoint .* has 64"):
    Settings.parse(config)
  assert not os.path.exists(tmp_path / "w2")
