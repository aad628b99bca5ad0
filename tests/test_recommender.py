"""The Python API: a trained workdir loaded once (its stored config), answering single and
batched requests without recompiling; the workdir's config as the single source."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import colarec_jax
from colarec_jax.config import stored
from colarec_jax.ranking import decode
from colarec_jax.data.dataset import TEST, TRAIN, VALID
from colarec_jax.runtime.errors import ConfigError, RequestError, UsageError
from colarec_jax.serving.recommender import Recommender


@pytest.fixture(scope="module")
def rec(tiny_workdir):
  return Recommender.load(tiny_workdir)


def teacher_forced_scores(rec: Recommender, history: list[int], items: list[int]) -> np.ndarray:
  """log p(GID(item) | history) by one forward pass per item over its whole GID: what a beam's
  score must be (official masking leaves a valid code's log-probability as it is)."""
  ws = rec.parts
  inputs = ws.builder.rec_input(history)
  batch = {k: jnp.asarray(np.stack([v] * len(items))) for k, v in inputs.items()}
  codes = jnp.asarray(ws.gids.codes[np.asarray(items)])
  logits, _ = ws.model.apply({"params": rec.ranker.params}, batch, codes)
  logp = jax.nn.log_softmax(logits, axis=-1)
  return np.asarray(jnp.take_along_axis(logp, codes[..., None], axis=-1)[..., 0].sum(-1))


def test_top_level_name():
  assert colarec_jax.Recommender is Recommender


def test_user_gets_nothing_they_have_and_beam_scores(rec):
  ws = rec.parts
  ds = ws.prepared.dataset
  known = ws.prepared.csr(TRAIN, VALID, TEST)
  for user in ("u00", "u03", "u17"):
    got = rec.recommend(user=user, top_n=10)
    index = list(ds.user_ids).index(user)
    assert got.user == user and len(got.items) == 10 == len(set(got.items))
    assert not {str(ds.item_ids[i]) for i in known.row(index)} & set(got.items)
    assert got.scores == sorted(got.scores, reverse=True)
    assert got.texts == [ds.content(list(ds.item_ids).index(i)) for i in got.items]
    internal = [list(ds.item_ids).index(i) for i in got.items]
    history = ws.builder.eval_history(index)
    np.testing.assert_allclose(got.scores, teacher_forced_scores(rec, history, internal),
                               atol=1e-4)


def test_history_is_not_recommended_back_and_order_matters(rec):
  ds = rec.catalog.dataset
  got = rec.recommend(history=["i04", "i29"], top_n=20)
  assert not {"i04", "i29"} & set(got.items) and got.user is None
  internal = [list(ds.item_ids).index(i) for i in got.items]
  history = [list(ds.item_ids).index(i) for i in ("i04", "i29")]
  np.testing.assert_allclose(got.scores, teacher_forced_scores(rec, history, internal), atol=1e-4)


def test_batched_equals_one_at_a_time(rec):
  users = [str(u) for u in rec.catalog.dataset.user_ids[1:21]]  # more than one batch of 16
  batched = rec.recommend_batch(users=users, top_n=5)
  for user, answer in zip(users, batched):
    single = rec.recommend(user=user, top_n=5)
    assert answer.items == single.items
    np.testing.assert_allclose(answer.scores, single.scores, atol=1e-5)
  histories = [["i01", "i02"], ["i03"]]
  assert [a.items for a in rec.recommend_batch(histories=histories, top_n=3)] == [
      rec.recommend(history=h, top_n=3).items for h in histories]


def test_calls_after_the_first_do_not_recompile(rec, monkeypatch):
  """The search's encoder runs once per trace: count traces over many kinds of calls."""
  traced = []
  encode = decode._encode
  monkeypatch.setattr(decode, "_encode", lambda *args: traced.append(1) or encode(*args))
  rec.recommend(user="u01")  # compiles here only if no earlier test did
  before = len(traced)
  rec.recommend(user="u02", top_n=3)
  rec.recommend(history=["i05", "i06", "i07"], top_n=20)
  rec.recommend_batch(users=[str(u) for u in rec.catalog.dataset.user_ids[1:40]])
  rec.recommend_batch(histories=[["i01"], ["i02", "i03"]], top_n=7)
  assert len(traced) == before <= 1


@pytest.mark.parametrize("kwargs,field,message", [
    ({"user": "nobody"}, "user", "'nobody' is not a user of tiny (48 users, e.g. 'u00')"),
    ({"history": ["i01", "zz"]}, "history", "'zz' is not an item of tiny (36 items"),
    ({"history": [4]}, "history", "'4' is not an item of tiny"),
    ({"history": []}, "history", "expected a non-empty list of item ids"),
    ({"history": "i01"}, "history", "expected a non-empty list of item ids"),
    ({"history": ["i01", "i01"]}, "history", "'i01' is listed twice"),
    ({"user": "u01", "history": ["i01"]}, "user", "give exactly one of user"),
    ({}, "user", "give exactly one of user"),
    ({"user": ["u01"]}, "user", "expected a user id"),
    ({"user": "u01", "top_n": 0}, "top_n", "got 0, expected 1 to eval.beam_size = 20"),
    ({"user": "u01", "top_n": 21}, "top_n", "got 21, expected 1 to eval.beam_size = 20"),
])
def test_bad_requests_name_the_field(rec, kwargs, field, message):
  with pytest.raises(RequestError, match=f"^{field}: ") as error:
    rec.recommend(**kwargs)
  assert message in str(error.value) and error.value.field == field


def test_overrides_may_change_eval_keys_only(rec, tiny_workdir):
  """A wider beam finds more items than the 20 of the trained config's beam (fewer than asked
  for: the beam's items the user has are left out)."""
  wider = Recommender.load(tiny_workdir, overrides={"eval.beam_size": 30}, batch_size=4)
  assert wider.max_top_n == 30
  assert 20 < len(wider.recommend(user="u01", top_n=30).items)
  assert len(rec.recommend(user="u01", top_n=20).items) <= 20
  with pytest.raises(ConfigError, match=r"^config.gid.n_init: got 3, but the model in .* was "
                                        r"trained with 2; .* only eval.\*"):
    Recommender.load(tiny_workdir, overrides={"gid.n_init": 3})
  with pytest.raises(ConfigError, match="^config.eval.beem_size: there is no such config key"):
    Recommender.load(tiny_workdir, overrides={"eval.beem_size": 3})
  with pytest.raises(UsageError, match="no latest checkpoint for epoch 9"):
    Recommender.load(tiny_workdir, checkpoint="9")


def test_stored_config_round_trips(tiny_workdir):
  from colarec_jax.config.settings import Settings
  with open(os.path.join(tiny_workdir, stored.FILE)) as f:
    saved = json.load(f)
  assert Settings.parse(stored.load(tiny_workdir)).full == saved
  stored.check_reader({**saved, "eval": {**saved["eval"], "beam_size": 7}, "cpu_devices": 3},
                         tiny_workdir)  # reader keys may differ


@pytest.mark.parametrize("content,error,message", [
    (None, UsageError, "--config: not given, and .* holds no config.json from a training run"),
    ("{nope", UsageError, r"--workdir: .*config.json is not readable JSON"),
    ("[1]", UsageError, r"--workdir: .*config.json holds a JSON list"),
    ('{"gid": {"bogus": 1}}', UsageError, "there is no config key 'gid.bogus'"),
])
def test_stored_config_errors(tmp_path, content, error, message):
  if content is not None:
    (tmp_path / stored.FILE).write_text(content)
  with pytest.raises(error, match=message):
    stored.load(str(tmp_path))


def test_keys_added_since_training_take_their_defaults(tiny_workdir, tmp_path):
  """A config stored before a key existed: loading fills in its default, and the reader check
  compares like with like."""
  from colarec_jax.config.settings import Settings
  with open(os.path.join(tiny_workdir, stored.FILE)) as f:
    saved = json.load(f)
  del saved["inputs"]["use_content"]
  (tmp_path / stored.FILE).write_text(json.dumps(saved))
  full = Settings.parse(stored.load(str(tmp_path))).full
  assert full["inputs"]["use_content"] is True
  stored.check_reader(full, str(tmp_path))


def test_a_workdir_without_stored_config_is_not_checked(tmp_path):
  stored.check_reader({"gid": {"n_init": 3}}, str(tmp_path))  # nothing to compare with


def test_the_readme_example_runs(tiny_workdir, capsys):
  """README's five lines, on the tiny run (its ids for MovieLens's)."""
  from conftest import REPO
  with open(os.path.join(REPO, "README.md")) as f:
    code = f.read().split("```python\n", 1)[1].split("```", 1)[0]
  assert len(code.strip().splitlines()) == 5
  for movielens, tiny in (('"runs/default"', repr(tiny_workdir)), ('"196"', '"u03"'),
                          ('"186"', '"u04"'), ('"22"', '"u05"'), ('"50"', '"i01"'),
                          ('"172"', '"i02"'), ('"181"', '"i03"')):
    assert movielens in code
    code = code.replace(movielens, tiny)
  scope = {}
  exec(code, scope)  # noqa: S102  (the README's own example)
  assert [r.user for r in scope["top"]] == ["u03", "u04", "u05"]
  assert len(capsys.readouterr().out.splitlines()) == 2


# Issue 36: guards on the Python API, and lists that are as long as asked for.


@pytest.mark.parametrize("batch_size", [-3, 100_000, 2.5, True])
def test_a_bad_batch_size_is_refused_before_loading(tiny_workdir, batch_size):
  with pytest.raises(RequestError, match=r"batch_size: got .*, expected 1 to 4096"):
    Recommender.load(tiny_workdir, batch_size=batch_size)


@pytest.mark.parametrize("kwargs,field", [({"users": "u01"}, "users"),
                                          ({"histories": "i01"}, "histories"),
                                          ({"users": b"u01"}, "users")])
def test_a_string_is_not_a_list_of_requests(rec, kwargs, field):
  with pytest.raises(RequestError, match=rf"^{field}: got .*expected a list"):
    rec.recommend_batch(**kwargs)


def test_every_user_gets_top_n_when_the_catalogue_has_them(rec):
  """Known items are left out inside the search: a list is short only when the catalogue holds
  fewer unseen items (with the official drop-after-search, tiny users' lists of 20 came back
  with as few as a handful)."""
  ds = rec.catalog.dataset
  known = rec.parts.prepared.csr(TRAIN, VALID, TEST)
  users = [str(u) for u in ds.user_ids[1:]]
  for user, got in zip(users, rec.recommend_batch(users=users, top_n=20)):
    left = ds.num_items - len(np.unique(known.row(list(ds.user_ids).index(user))))
    assert len(got.items) == min(20, left) == len(set(got.items)), user
    assert got.short is None if left >= 20 else "the catalogue holds" in got.short
    assert "short" not in got.to_json() or left < 20


def test_a_history_of_most_of_the_catalogue_says_why_it_is_short(rec):
  ds = rec.catalog.dataset
  history = [str(i) for i in ds.item_ids[1:33]]  # 32 of the 36 items
  got = rec.recommend(history=history, top_n=10)
  assert len(got.items) == 4 and not set(got.items) & set(history)
  assert got.short == "the catalogue holds 4 items besides the 32 this request excludes"
  assert got.to_json()["short"] == got.short
