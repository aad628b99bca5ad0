"""Parity with the authors' PyTorch code, on a fixture recorded from it (tests/fixtures/official,
made by tools/official_fixture.py): their initial weights, one training batch as their dataset
built it, their four losses and gradient norms, and their beam search's GIDs for four users.

The fixture's weights go through `--mode=import_official`'s converter into colarec-jax; the same
batch is built by our `InputBuilder` in their layout (the switches the import sets), and the
losses, gradients and beams must agree to 1e-5. Setting a switch back to ours must break it.
"""

import collections
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from colarec_jax.config import base_config, stored
from colarec_jax.config.settings import LossWeights, Settings
from colarec_jax.model.colarec import ModelConfig, create_model
from colarec_jax.model.inputs import stack
from colarec_jax.official import importer, weights
from colarec_jax.ranking import decode
from colarec_jax.run import parts as parts_lib
from colarec_jax.run.store import BEST
from colarec_jax.runtime.errors import DataError, UsageError
from colarec_jax.training import step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "official")
MODEL, DATA, TOKENIZER = (os.path.join(FIXTURE, p) for p in ("model", "data", "tokenizer.json"))
with open(os.path.join(FIXTURE, "parity.json")) as _f:
  RECORD = json.load(_f)
# Their objective, 0.08 (L_index + L_rec) + L_bpr + 0.1 L_c with CrossEntropyLoss means, is the
# default config's loss (their BPR form, -log(1e-10 + sigmoid), is a switch: the default's
# log-sigmoid differs only below margins of about -23).
DEFAULTS = LossWeights.from_config(base_config().loss)
THEIRS = dataclasses.replace(DEFAULTS, pair_form="official")
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


# The fixture's sizes beyond what the checkpoint fixes: the tiny config's input length and beam.
IMPORT = ("--mode=import_official", "--config=configs/official.py",
          "--config.inputs.max_length=64", "--config.eval.beam_size=20",
          f"--official_data={DATA}", f"--tokenizer={TOKENIZER}")


def _cli(*args, check=True):
  result = subprocess.run([sys.executable, "-m", "colarec_jax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """(settings, parts, params, workdir) of the fixture's weights imported by the CLI's
  --mode=import_official."""
  workdir = str(tmp_path_factory.mktemp("imported"))
  _cli(*IMPORT, f"--checkpoint={MODEL}", f"--workdir={workdir}")
  settings = Settings.parse(stored.load(workdir))
  parts = parts_lib.build(settings, workdir, log=lambda *_: None)
  params, _ = parts_lib.checkpoints(parts, settings, workdir).load_params(
      BEST, parts.abstract_params())
  return settings, parts, params, workdir


def _ids(parts):
  """raw id -> our id, for items and users."""
  ds = parts.prepared.dataset
  return ({int(r): n for n, r in enumerate(ds.item_ids[1:].tolist(), 1)},
          {int(r): n for n, r in enumerate(ds.user_ids[1:].tolist(), 1)})


def _batch(builder, parts):
  """The fixture's batch, built by our InputBuilder from the ids their dataset sampled."""
  item, user = _ids(parts)
  rows = {"user": [], "item": [], "neg": [], "pos": []}
  for ex in RECORD["batch"]["examples"]:
    assert all(u != 0 for u in ex["aug_item_user_atomids"])  # every i+ has a training user
    rows["user"].append(builder.rec_input([item[i] for i in ex["user_atomid_list"]]))
    rows["item"].append(builder.index_input(item[ex["item_atomid"][0]], []))
    rows["neg"].append(builder.index_input(item[ex["neg_item_atomid"][0]], []))
    rows["pos"].append(builder.index_input(item[ex["aug_item_atomid"][0]],
                                           [user[u] for u in ex["aug_item_user_atomids"]]))
  batch = {k: stack(v) for k, v in rows.items()}
  items = np.array([item[ex["item_atomid"][0]] for ex in RECORD["batch"]["examples"]])
  negs = np.array([item[ex["neg_item_atomid"][0]] for ex in RECORD["batch"]["examples"]])
  batch.update(item_codes=parts.gids.codes[items], neg_codes=parts.gids.codes[negs],
               mask=np.ones(len(items), np.float32))
  return batch


def _their_layout(theirs: dict, parts, vocab_size: int) -> dict:
  """Their tokenizer's tensors in our layout: tokens with the slot markers and position 0
  zeroed, item and user ids (ours) at their slots, and the mask."""
  item, user = _ids(parts)
  tokens = np.array(theirs["content_input_ids"])
  mask = np.array(theirs["attention_mask"]).astype(bool)
  items, users = np.zeros_like(tokens), np.zeros_like(tokens)
  for b, (slots, ids) in enumerate(zip(theirs["atom_index"], theirs["atom_input_ids"])):
    for slot, raw in zip(slots, ids):
      if slot:  # 0: padding of the slot list
        items[b, slot] = item[raw]
  for b, (slots, ids) in enumerate(zip(theirs.get("user_atom_index", []),
                                       theirs.get("user_atom_ids", []))):
    for slot, raw in zip(slots, ids):
      users[b, slot] = user[raw]
  tokens = np.where((items > 0) | (users > 0) | (tokens >= vocab_size), 0, tokens)
  tokens[:, 0] = 0
  return {"tokens": tokens, "items": items, "users": users, "mask": mask}


def _check_layout(ours: dict, theirs: dict) -> None:
  length = theirs["mask"].shape[1]
  assert not ours["mask"][:, length:].any()
  for key in ("tokens", "items", "users", "mask"):
    got = np.where(ours["mask"][:, :length], ours[key][:, :length], 0)
    np.testing.assert_array_equal(got, np.where(theirs["mask"], theirs[key], 0), err_msg=key)


def test_their_state_dict_is_read_without_torch_as_torch_reads_it(tmp_path):
  torch = pytest.importorskip("torch")
  _, tensors = weights.read_checkpoint(MODEL)
  reference = torch.load(os.path.join(MODEL, weights.TORCH_BIN), weights_only=True)
  assert set(tensors) == set(reference)
  for name, tensor in reference.items():
    np.testing.assert_array_equal(tensors[name], tensor.numpy(), err_msg=name)
  # Other dtypes, a transposed view, a slice at a storage offset and a scalar.
  base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
  state = collections.OrderedDict(
      half=torch.linspace(-2, 2, 7, dtype=torch.float16), bf16=torch.tensor([1.5, -3.0],
                                                                            dtype=torch.bfloat16),
      long=torch.tensor([1, 2, 3]), flag=torch.tensor([True, False]), transposed=base.t(),
      offset=base[2:, 1:4], scalar=torch.tensor(7.0))
  path = str(tmp_path / "state.bin")
  torch.save(state, path)
  read = weights.read_torch_file(path)
  for name, tensor in state.items():
    expected = tensor.float().numpy() if name == "bf16" else tensor.numpy()
    np.testing.assert_array_equal(np.asarray(read[name], expected.dtype), expected,
                                  err_msg=name)
    assert read[name].shape == tuple(tensor.shape)


def test_a_pickle_naming_anything_but_tensors_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  path = str(tmp_path / "evil.bin")
  torch.save({"x": collections.Counter(a=1)}, path)
  with pytest.raises(UsageError, match="collections.Counter"):
    weights.read_torch_file(path)
  with zipfile.ZipFile(tmp_path / "notorch.zip", "w") as z:
    z.writestr("a.txt", "hello")
  with pytest.raises(UsageError, match="data.pkl"):
    weights.read_torch_file(str(tmp_path / "notorch.zip"))
  with pytest.raises(UsageError, match="not a PyTorch zip"):
    weights.read_torch_file(os.path.join(MODEL, "config.json"))


def test_the_batch_is_built_in_their_layout(imported):
  _, parts, _, _ = imported
  theirs = RECORD["batch"]["their_inputs"]
  batch = _batch(parts.builder, parts)
  vocab = parts.prepared.vocab_size
  for ours, key in (("user", "user"), ("item", "pos"), ("neg", "neg"), ("pos", "aug")):
    _check_layout(batch[ours], _their_layout(theirs[key], parts, vocab))
  # Their labels are our GIDs of i and i-.
  np.testing.assert_array_equal(batch["item_codes"], theirs["labels"])
  np.testing.assert_array_equal(batch["neg_codes"], theirs["neg_labels"])
  # The recommendation inputs of the beam users: newest 20 first, cut mid-item at 63 tokens.
  _, user = _ids(parts)
  users = np.array([user[u] for u in RECORD["beams"]["users"]])
  history = _their_layout(RECORD["beams"]["history_input"], parts, vocab)
  assert history["mask"].sum(1).max() == parts.builder.cfg.max_length  # the cut is exercised
  _check_layout(parts.builder.eval_inputs(users), history)


def _losses_and_grads(model, params, batch):
  def objective(p):
    return step.loss_terms(model, THEIRS, p, batch)
  (total, terms), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(params)
  return float(total), {k: float(v) for k, v in terms.items()}, grads


def test_the_default_loss_weights_are_theirs():
  assert DEFAULTS.as_dict() == {"rec": 0.08, "index": 0.08, "bpr": 1.0, "contrastive": 0.1}
  assert DEFAULTS.generation_reduction == "mean"


def test_the_four_losses_equal_theirs(imported):
  _, parts, params, _ = imported
  total, terms, _ = _losses_and_grads(parts.model, params, _batch(parts.builder, parts))
  expected = RECORD["losses"]
  for name in ("rec", "index", "bpr", "contrastive"):
    np.testing.assert_allclose(terms[name], expected[name], **TOLERANCE, err_msg=name)
  np.testing.assert_allclose(total, expected["total"], **TOLERANCE)


_LEVEL_TABLES = {"code_embed": "cid_embed_list.{}.weight", "codebook": "centroids.{}.weight",
                 "codebook_bias": "centroids.{}.bias"}


def _by_their_name(tree, transformer) -> dict[str, np.ndarray]:
  """Our parameter-shaped tree as {their tensor name: array}, the per-level tables split."""
  out = {}
  for path, value in traverse_util.flatten_dict(jax.device_get(tree)).items():
    name = weights.their_name(path, transformer)
    if name is not None:
      out[name] = value
    else:
      out.update({_LEVEL_TABLES[path[0]].format(level): rows for level, rows in enumerate(value)})
  return out


def _our_grad_norms(grads, transformer) -> dict[str, float]:
  """Per-tensor gradient norms under their tensor names."""
  named = _by_their_name(grads, transformer)
  out = {name: float(np.linalg.norm(g)) for name, g in named.items()}
  out["(global)"] = float(np.sqrt(sum(np.sum(np.square(g)) for g in named.values())))
  return out


def test_the_gradients_equal_theirs(imported):
  _, parts, params, _ = imported
  _, _, grads = _losses_and_grads(parts.model, params, _batch(parts.builder, parts))
  ours = _our_grad_norms(grads, parts.model.config.transformer)
  expected = RECORD["grad_norms"]
  assert set(ours) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(ours[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_the_beams_equal_theirs(imported):
  _, parts, params, _ = imported
  _, user = _ids(parts)
  users = np.array([user[u] for u in RECORD["beams"]["users"]])
  inputs = {k: jnp.asarray(v) for k, v in parts.builder.eval_inputs(users).items()}
  assert parts.trie.beam_size == RECORD["beams"]["beam_size"]
  _, scores, codes = jax.device_get(decode.beam_search(parts.model, params, inputs, parts.trie,
                                                       renormalize=False))
  their_codes = np.array(RECORD["beams"]["codes"])
  # HF divides a beam's log-probability by its length: the start token and the l codes.
  their_scores = np.array(RECORD["beams"]["scores"]) * (their_codes.shape[-1] + 1)
  np.testing.assert_allclose(scores, their_scores, rtol=1e-5, atol=1e-5)
  for u in range(len(users)):
    # Equal lists, except that beams of equal score may come in either order.
    assert sorted(map(tuple, codes[u])) == sorted(map(tuple, their_codes[u]))
    distinct = np.abs(np.diff(their_scores[u])) > 1e-4
    for n in np.flatnonzero(np.r_[True, distinct] & np.r_[distinct, True]):
      np.testing.assert_array_equal(codes[u, n], their_codes[u, n])


@pytest.mark.parametrize("change", [
    {"generation_reduction": "sum"},  # our reduction: generation losses 3x theirs
    {"history_cut": "item"},  # whole items only: the last history item goes
    {"uad_on_item_inputs": True},  # a uad slot on i and i- too
])
def test_the_parity_check_fails_when_a_switch_is_set_back(imported, change):
  _, parts, params, _ = imported
  weights_, builder = THEIRS, parts.builder
  if "generation_reduction" in change:
    weights_ = dataclasses.replace(THEIRS, **change)
  else:
    builder = builder.__class__(parts.prepared, parts.gids,
                                dataclasses.replace(parts.builder.cfg, **change))
  batch = _batch(builder, parts)
  if "uad_on_item_inputs" in change:  # the builder's training batch would sample a user there
    ex = RECORD["batch"]["examples"]
    item, user = _ids(parts)
    batch["item"] = stack([builder.index_input(item[e["item_atomid"][0]],
                                               [user[e["item_user_atomids"][0]]]) for e in ex])
  _, terms = jax.jit(lambda p: step.loss_terms(parts.model, weights_, p, batch))(params)
  expected = RECORD["losses"]
  assert not all(np.isclose(float(terms[k]), expected[k], rtol=1e-4)
                 for k in ("rec", "index", "bpr", "contrastive"))


def test_the_official_init_draws_like_theirs(imported):
  """Every tensor's spread at init against their initial weights: equal with the default config's
  model.init ('official'), far off with 'colarec' for the code heads and the relative-position
  tables."""
  settings, parts, _, _ = imported
  _, tensors = weights.read_checkpoint(MODEL)
  transformer = parts.model.config.transformer
  one = parts.example()

  default = ModelConfig.from_config(base_config().model)
  sizes = {k: getattr(settings.model, k) for k in ("d_model", "d_ff", "num_heads",
                                                    "num_encoder_layers", "num_decoder_layers")}

  def initial(init: str | None):
    cfg = dataclasses.replace(default, **sizes, **({"init": init} if init else {}))
    model = create_model(cfg, vocab_size=transformer.vocab_size,
                         num_items=parts.model.config.num_items,
                         num_users=parts.model.config.num_users,
                         branching=parts.gids.branching, depth=parts.gids.depth)
    return model.init(jax.random.key(1), one["user"], one["item_codes"])["params"]

  def spread(params):
    return {name: (float(np.std(v)), v.size)
            for name, v in _by_their_name(params, transformer).items()}

  theirs = {name: float(np.std(t)) for name, t in tensors.items()}
  for init, should_match in ((None, True), ("colarec", False)):
    ours = spread(initial(init))
    off = []
    for name, (std, size) in ours.items():
      # Layer-norm scales are all ones on both sides (std 0).
      close = abs(std - theirs[name]) <= 0.05 + 5 * theirs[name] / np.sqrt(size)
      if not close:
        off.append(name)
    if should_match:
      assert not off, off
    else:
      assert any(n.startswith("centroids") for n in off)
      assert any("relative_attention_bias" in n for n in off)


def _their_lists(parts) -> dict[int, list[int]]:
  """Their beam lists as raw item ids, training items dropped (their cut_intered_prediction)."""
  corpus = {tuple(v["cid"]): int(k) for k, v in json.load(open(os.path.join(
      DATA, "corpus_512.json"))).items()}
  train = {}
  with open(os.path.join(DATA, "train_time_inter.csv")) as f:
    for line in f.read().splitlines()[1:]:
      u, i, _ = map(int, line.split(","))
      train.setdefault(u, []).append(i)
  return {u: [corpus[tuple(c)] for c in codes if corpus[tuple(c)] not in train[u]]
          for u, codes in zip(RECORD["beams"]["users"], RECORD["beams"]["codes"])}, train


def test_the_imported_workdir_recommends_their_lists(imported):
  """The import's checkpoint through the serving API: each user's list is their beam search's
  with their training items dropped."""
  from colarec_jax import Recommender

  _, parts, _, workdir = imported
  theirs, train = _their_lists(parts)
  recommender = Recommender.load(workdir)
  for user, expected in theirs.items():
    # Their evaluation input: the user's training items, newest first (time order, as theirs).
    history = [str(i) for i in train[user][::-1][:20]]
    got = recommender.recommend(history=history, top_n=len(expected))
    assert [int(i) for i in got.items] == expected


def test_the_imported_workdir_evaluates_and_exports_through_the_cli(imported, tmp_path):
  _, parts, _, workdir = imported
  result = _cli("--mode=evaluate", f"--workdir={workdir}", "--split=valid")
  assert "valid metrics" in result.stdout or "valid metrics" in result.stderr
  out = tmp_path / "top.jsonl"
  _cli("--mode=export", f"--workdir={workdir}", f"--output={out}", "--top_n=5")
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(rows) == parts.prepared.dataset.num_users
  assert all(len(r["items"]) == 5 for r in rows)


def test_import_refuses_bad_input_with_one_line(imported, tmp_path):
  _, _, _, workdir = imported
  # A checkpoint that is not there: the flag is named, nothing is written.
  target = tmp_path / "new"
  result = _cli(*IMPORT, f"--checkpoint={tmp_path / 'nope'}", f"--workdir={target}",
                check=False)
  assert result.returncode != 0
  assert "checkpoint" in result.stderr.strip().splitlines()[-1]
  assert not (target / "colarec").exists()
  # A workdir that already holds a model.
  result = _cli(*IMPORT, f"--checkpoint={MODEL}", f"--workdir={workdir}", check=False)
  assert result.returncode != 0 and "new --workdir" in result.stderr
  # A data folder whose corpus names an item without a GID.
  data = tmp_path / "data"
  shutil.copytree(DATA, data)
  corpus = json.loads((data / "corpus_512.json").read_text())
  corpus["3"].pop("cid")
  (data / "corpus_512.json").write_text(json.dumps(corpus))
  from configs.tiny import get_config
  with pytest.raises(DataError, match="corpus_512.json.*item '3' lacks"):
    importer.import_official(Settings.parse(get_config()), str(tmp_path / "w2"), MODEL,
                             str(data), TOKENIZER, log=lambda *_: None)


def test_an_import_builds_the_optimizer_the_loop_trains_with(tmp_path):
  """A decaying schedule needs the run's step count: the import counts the loop's steps (it used
  to build the optimizer for 0 steps and so refused any warm-up)."""
  workdir = tmp_path / "w"
  schedule = ("--config.optim.schedule=warmup_cosine", "--config.train.epochs=3",
              "--config.train.steps_per_epoch=2")
  result = _cli(*IMPORT, f"--checkpoint={MODEL}", f"--workdir={workdir}", *schedule,
                "--config.optim.warmup_steps=5")
  assert "imported their epoch-1 model" in result.stdout + result.stderr
  # 3 epochs of 2 steps (the fixture has more than 2 batches of training rows): a warm-up of 6
  # leaves no step to decay over, and the error counts the loop's steps.
  result = _cli(*IMPORT, f"--checkpoint={MODEL}", f"--workdir={tmp_path / 'w2'}", *schedule,
                "--config.optim.warmup_steps=6", check=False)
  assert result.returncode != 0
  assert "fewer than the 6 training steps" in result.stderr.strip().splitlines()[-1]


def test_content_strings_are_written_verbatim(tmp_path):
  """Their content strings reach the tokenizer as they are (a double space changes BPE tokens);
  only a tab or line break, which would end the atomic field, becomes a space."""
  data = tmp_path / "data"
  shutil.copytree(DATA, data)
  corpus = json.loads((data / "corpus_512.json").read_text())
  corpus["1"]["content"] = "title  two  spaces brand Acme "
  corpus["2"]["content"] = "title a\ttab"
  (data / "corpus_512.json").write_text(json.dumps(corpus))
  counts = importer.write_atomic(str(data), str(tmp_path / "out"), 3)
  assert counts["respaced_items"] == 1
  from colarec_jax.data import atomic
  table = atomic.read_atomic(str(tmp_path / "out" / "official.item"))
  text = {row[0]: row[1] for row in table.rows}
  assert text["1"] == "title  two  spaces brand Acme " and text["2"] == "title a tab"
