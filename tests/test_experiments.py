"""The experiment runner (skip, resume, shared stages, sweeps) and its report (hand-made rows)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from colarec_jax.studies import report, runner, variants
from colarec_jax.studies import results as results_lib
from colarec_jax.runtime.errors import ConfigError, UsageError
from configs import tiny


def small_config():
  config = tiny.get_config()
  config.cf.epochs = 2
  config.train.update(epochs=1, steps_per_epoch=2)
  return config


def test_sweep_makes_one_variant_per_combination():
  config = small_config()
  swept = variants.sweep_variants(
      config, ["optim.learning_rate=1e-3,5e-4", "inputs.use_content=true,false"])
  assert [v.name for v in swept] == [
      "optim.learning_rate=0.001, inputs.use_content=True",
      "optim.learning_rate=0.001, inputs.use_content=False",
      "optim.learning_rate=0.0005, inputs.use_content=True",
      "optim.learning_rate=0.0005, inputs.use_content=False"]
  assert swept[1].overrides == (("optim.learning_rate", 0.001), ("inputs.use_content", False))
  with pytest.raises(ConfigError, match=r"config\.optim\.learning_rat: there is no such config"):
    variants.sweep_variants(config, ["optim.learning_rat=1"])
  with pytest.raises(ConfigError, match=r"cannot set it to 'x,y': expected values of type int"):
    variants.sweep_variants(config, ["train.epochs=x,y"])
  with pytest.raises(UsageError, match=r"--sweep: got 'train.epochs', expected key=value1"):
    variants.sweep_variants(config, ["train.epochs"])


def test_arms_move_several_keys_at_once():
  config = small_config()
  arms = variants.arm_variants(config, [
      "base", "fast: optim.learning_rate=3e-3; loss.rec_weight=1 ;model.id_init=lightgcn"])
  assert [v.name for v in arms] == ["base", "fast"]
  assert arms[0].overrides == ()
  assert arms[1].overrides == (("optim.learning_rate", 0.003), ("loss.rec_weight", 1.0),
                               ("model.id_init", "lightgcn"))
  with pytest.raises(ConfigError, match=r"config\.loss\.rec_weigh: there is no such config key"):
    variants.arm_variants(config, ["a:loss.rec_weigh=1"])
  with pytest.raises(ConfigError, match=r"cannot set it to 'many': expected values of type int"):
    variants.arm_variants(config, ["a:train.epochs=many"])
  with pytest.raises(UsageError, match=r"--arm: got 'train.epochs' in arm 'a', expected key=value"):
    variants.arm_variants(config, ["a:train.epochs"])
  with pytest.raises(UsageError, match=r"--arm: two arms share a name"):
    variants.arm_variants(config, ["a", "a:train.epochs=2"])
  with pytest.raises(UsageError, match=r"--arm: got ':train.epochs=2', expected NAME:key"):
    variants.arm_variants(config, [":train.epochs=2"])


def test_gid_suite_has_the_file_variant_only_with_the_column(tmp_path):
  config = small_config()
  names = [v.name for v in variants.suite_variants("gid", config)]
  assert "the dataset's GIDs (file)" not in names and len(names) == 3
  folder = tmp_path / "data"
  folder.mkdir()
  (folder / "tiny.item").write_text("item_id:token\tcolarec_gid:token_seq\ni00\t1 1 1\n")
  config.data.dir = str(folder)
  assert "the dataset's GIDs (file)" in [v.name for v in variants.suite_variants("gid", config)]
  with pytest.raises(UsageError, match="--suite: got 'paper'"):
    variants.suite_variants("paper", config)


def test_runner_shares_stages_skips_finished_runs_and_resumes(tmp_path):
  root, logs = str(tmp_path), []
  sweeps = ["loss.contrastive_weight=0.1,0.0"]
  rows = runner.run_suite(small_config(), "", root, [0], sweeps=sweeps, log=logs.append)
  assert [r["overrides"] for r in rows] == [{"loss.contrastive_weight": 0.1},
                                            {"loss.contrastive_weight": 0.0}]
  assert all(r["seed"] == 0 and r["budget"] == "cpu" and r["examples_seen"] == 32 for r in rows)
  # The second variant changes only the loss: it starts from the first one's stages, linked.
  first, second = (os.path.join(root, "sweep", v.slug, "seed0")
                   for v in variants.sweep_variants(small_config(), sweeps))
  assert any(line.startswith("sharing gid/ of sweep/") for line in logs)
  assert os.stat(os.path.join(first, "gid", "gids.npz")).st_ino == os.stat(
      os.path.join(second, "gid", "gids.npz")).st_ino
  assert os.path.isfile(os.path.join(root, "sweep", "report.md"))
  # Finished runs are skipped: the same rows come back and nothing trains.
  logs.clear()
  again = runner.run_suite(small_config(), "", root, [0], sweeps=sweeps, log=logs.append)
  assert again == rows and not any("colarec epoch" in line for line in logs)
  # A run without its row (interrupted after training) resumes from its checkpoints.
  os.remove(os.path.join(second, "row.json"))
  logs.clear()
  resumed = runner.run_suite(small_config(), "", root, [0], sweeps=sweeps, log=logs.append)
  assert not any(line.startswith("colarec epoch") for line in logs)
  assert resumed[1]["test"] == rows[1]["test"]


def test_a_run_with_a_finished_twin_anywhere_under_the_root_reuses_its_row(tmp_path):
  root, logs = str(tmp_path), []
  first = runner.run_suite(small_config(), "", root, [0], arms=["as configured"],
                                study="levers", log=logs.append)[0]
  logs.clear()
  rows = runner.run_suite(small_config(), "", root, [0, 1],
                               arms=["ColaRec", "no L_c:loss.contrastive_weight=0.0"],
                               study="main", log=logs.append)
  same, other_seed = rows[0], rows[1]
  # Seed 0 of the config as it is already finished in another study: nothing trains for it.
  assert same["reused_from"] == os.path.join("levers", "as_configured", "seed0")
  assert (same["variant"], same["suite"]) == ("ColaRec", "main")
  assert same["test"] == first["test"] and same["curve"] == first["curve"]
  assert same["wall_seconds"] == first["wall_seconds"]
  assert os.stat(os.path.join(root, "main", "ColaRec", "seed0", "per_user_test.npz")).st_ino == \
      os.stat(os.path.join(root, "levers", "as_configured", "seed0", "per_user_test.npz")).st_ino
  # Another seed or another loss weight is another model: those train.
  assert "reused_from" not in other_seed and "reused_from" not in rows[2]
  assert sum(line.startswith("== main") for line in logs) == 4
  assert sum("its row is this run's" in line for line in logs) == 1
  with open(os.path.join(root, "main", "report.md")) as f:
    assert "ColaRec seed 0 is levers/as_configured/seed0." in f.read()
  # The model of a reused row is the twin's (bench/rank_levers.py ranks it); a trained run's is
  # its own.
  assert runner.trained_folder(os.path.join(root, "main", "ColaRec", "seed0")) == \
      os.path.join(root, "levers", "as_configured", "seed0")
  trained = os.path.join(root, "main", "ColaRec", "seed1")
  assert runner.trained_folder(trained) == trained


def test_a_run_that_only_ranks_another_way_ranks_its_twins_model_again(tmp_path):
  """An arm differing from a finished run only in eval.* trains nothing: it tests a copy of that
  run's best checkpoint with its own ranking, as `--mode=evaluate` on the twin would, and leaves
  the twin's files as they were."""
  from colarec_jax.cli import modes
  from colarec_jax.cli.flags import EvaluateFlags
  from colarec_jax.config.settings import Settings
  root, logs = str(tmp_path), []
  first = runner.run_suite(small_config(), "", root, [0], arms=["as configured"],
                           study="levers", log=logs.append)[0]
  twin = os.path.join(root, "levers", "as_configured", "seed0")
  with open(os.path.join(twin, "colarec", "metrics.json")) as f:
    twin_metrics = f.read()
  logs.clear()
  row = runner.run_suite(small_config(), "", root, [0], arms=["rescored:eval.encoder_weight=2.0"],
                         study="ranking", log=logs.append)[0]
  assert row["ranked_from"] == os.path.join("levers", "as_configured", "seed0")
  assert "reused_from" not in row and not any("colarec epoch" in line for line in logs)
  assert row["curve"] == first["curve"] and row["wall_seconds"] >= first["wall_seconds"]
  config = small_config()
  config.eval.encoder_weight = 2.0
  expected = modes.evaluate_checkpoint(Settings.parse(config), twin, EvaluateFlags(split="test"),
                                       log=lambda *_: None)
  assert row["test"] == json.loads(json.dumps(expected.to_json()))
  assert row["test"] != first["test"]
  with open(os.path.join(twin, "colarec", "metrics.json")) as f:
    assert f.read() == twin_metrics


def make_row(folder, variant, order, seed, overall, long_tail, per_user, ks=(5, 10, 20),
             selection=None):
  run = os.path.join(folder, variants.Variant(variant).slug, f"seed{seed}")
  os.makedirs(run)
  # As evaluation writes them: recall@k and ndcg@k interleaved, k ascending.
  metrics = lambda v: {f"{m}@{k}": v for k in ks for m in ("recall", "ndcg")}
  row = {"suite": "ablation", "variant": variant, "order": order, "seed": seed,
         "dataset": "hand", "budget": "cpu", "commit": "abc", "wall_seconds": 10.0,
         "examples_seen": 100, "long_tail_rule": "the 20% with the fewest (<= 3)",
         "test": {"overall": metrics(overall), "long_tail": metrics(long_tail)},
         "valid": {"overall": metrics(overall / 2)},
         "curve": [[50, overall / 2], [100, overall]]}
  if selection:
    row["selection"] = selection
  with open(os.path.join(run, "row.json"), "w") as f:
    json.dump(row, f)
  np.savez(os.path.join(run, "per_user_test.npz"), users=np.arange(1, len(per_user) + 1),
           **{f"ndcg_at_{max(ks)}": np.asarray(per_user)})


def test_report_reads_its_cut_offs_and_metric_from_the_rows(tmp_path):
  """A study run with eval.ks=(1, 3) and eval.metric=ndcg@3 reports those columns and tests
  per-user NDCG@3, not the default @5/10/20 (which its rows do not hold)."""
  folder = str(tmp_path)
  base = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
  make_row(folder, "full", 0, 0, 0.30, 0.20, base, ks=(1, 3), selection="ndcg@3")
  make_row(folder, "w/o x", 1, 0, 0.20, 0.25, base + np.arange(1, 7) / 100, ks=(1, 3),
           selection="ndcg@3")
  text = report.write_report(folder, reference="full")
  assert ("| variant | seeds | valid ndcg@3 | recall@1 | recall@3 | ndcg@1 | ndcg@3 | LT recall@1 "
          "| LT recall@3 | LT ndcg@1 | LT ndcg@3 | p (ndcg@3) vs full |") in text
  assert f"| {2 / 2 ** 6:.3g} (6 users) |" in text and "@20" not in text


def test_report_from_hand_made_rows(tmp_path):
  folder = str(tmp_path)
  base = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
  make_row(folder, "full", 0, 0, 0.30, 0.20, base)
  make_row(folder, "full", 0, 1, 0.34, 0.24, base)
  # Every user better by a different amount: the exact two-sided signed-rank p is 2 / 2^6.
  make_row(folder, "w/o x", 1, 0, 0.20, 0.25, base + np.arange(1, 7) / 100)
  make_row(folder, "w/o x", 1, 1, 0.22, 0.29, base + np.arange(1, 7) / 100)
  text = report.write_report(folder, reference="full")
  rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines()
          if line.startswith("| full") or line.startswith("| w/o x")}
  std = np.std([0.30, 0.34], ddof=1)
  assert f"**0.3200 ± {std:.4f}**" in rows["full"]  # best overall: bold
  # The first metric column is the validation metric settings are chosen on.
  assert rows["full"].startswith(f"| full | 2 | **0.1600 ± {std / 2:.4f}** | **0.3200")
  assert "| variant | seeds | valid ndcg@10 | recall@5 |" in text
  assert f"0.2100 ± {np.std([0.20, 0.22], ddof=1):.4f}" in rows["w/o x"]
  assert f"**0.2700 ± {np.std([0.25, 0.29], ddof=1):.4f}**" in rows["w/o x"]  # best long-tail
  assert rows["w/o x"].endswith(f"| {2 / 2 ** 6:.3g} (6 users) |")
  assert "Wilcoxon signed-rank" in text and "(<= 3)" in text
  assert text.index("| full") < text.index("| w/o x")
  for name in ("curves.png", "long_tail.png"):
    assert os.path.getsize(os.path.join(folder, name)) > 1000
  with open(os.path.join(folder, "rows.jsonl")) as f:
    assert [json.loads(line)["variant"] for line in f] == ["full", "full", "w/o x", "w/o x"]


@pytest.mark.parametrize("name", ["phones", "beauty", "sports"])
def test_paper_datasets_have_a_cpu_budget_variant(name):
  module = __import__(f"configs.{name}", fromlist=["get_config"])
  paper, cpu = module.get_config(), module.get_config("cpu")
  assert paper.model.d_model == 512 and paper.eval.valid_sample == 0
  # the number phones and beauty adopted (their levers and steps-24 studies); sports takes theirs
  epochs = 24
  assert (cpu.model.d_model, cpu.model.num_encoder_layers, cpu.train.epochs,
          cpu.train.steps_per_epoch, cpu.cf.epochs, cpu.eval.valid_sample) == (64, 1, epochs, 300,
                                                                                60, 2000)
  assert cpu.data.to_dict() == paper.data.to_dict()  # the same dataset and split
  # The negatives and encoder weight phones and beauty chose on validation; the paper size
  # trains and ranks as the paper.
  assert (cpu.loss.pair_negatives, cpu.eval.encoder_weight) == ("in_batch", 2.0)
  assert (paper.loss.pair_negatives, paper.eval.encoder_weight) == ("single", 0.0)
  # The code-popularity prior chosen with it (rank-levers/code-prior*.json); the paper has none.
  assert (tuple(cpu.eval.code_prior), tuple(paper.eval.code_prior)) == ((0.0, 1.0, 1.0), ())
  # Added items tie their best sibling where the encoder's term orders them (cold_levers_*.json)
  assert (cpu.eval.new_item_score, paper.eval.new_item_score) == ("sibling_max", "sibling_mean")
  # placed by their nearest trained items' vote (cold_levers_*_24_placement.json)
  assert ((cpu.eval.new_item_placement, cpu.eval.placement_neighbours,
           paper.eval.new_item_placement) == ("neighbours", 10, "neighbours"))
  with pytest.raises(ValueError, match="unknown variant 'gpu'"):
    module.get_config("gpu")


def test_arms_study_writes_its_own_folder_with_the_first_arm_as_reference(tmp_path):
  root = str(tmp_path)
  arms = ["base", "no L_c:loss.contrastive_weight=0"]
  rows = runner.run_suite(small_config(), "", root, [0], arms=arms, study="levers",
                               log=lambda *_: None)
  assert [r["variant"] for r in rows] == ["base", "no L_c"]
  assert rows[1]["overrides"] == {"loss.contrastive_weight": 0.0}
  with open(os.path.join(root, "levers", "report.md")) as f:
    assert "vs base" in f.read()
  with pytest.raises(UsageError, match="--arm: expected --arm or --sweep, not both"):
    runner.run_suite(small_config(), "", root, [0], arms=arms, sweeps=["seed=1,2"])
  with pytest.raises(UsageError, match="--study: got 'a/b', expected a folder name"):
    runner.run_suite(small_config(), "", root, [0], arms=arms, study="a/b")


def test_a_finished_run_of_another_config_is_an_error_not_its_stale_row(tmp_path):
  root = str(tmp_path)
  runner.run_suite(small_config(), "main", root, [0], log=lambda *_: None)
  longer = small_config()
  longer.train.epochs = 2
  # MostPop and LightGCN do not depend on ColaRec's epochs: their rows stand; ColaRec's does not.
  with pytest.raises(UsageError, match=r"--root: .*main/ColaRec/seed0 finished with another "
                     r"config \(train\.epochs: 1 there, 2 now\)"):
    runner.run_suite(longer, "main", root, [0], log=lambda *_: None)
  other_cf = small_config()
  other_cf.cf.epochs = 3
  with pytest.raises(UsageError, match=r"main/LightGCN/seed0 finished with another config \(cf\."
                     r"epochs, in its lightgcn stage: 2 there, 3 now\)"):
    runner.run_suite(other_cf, "main", root, [0], log=lambda *_: None)
  # A row reused from a twin is checked against the twin's config.
  runner.run_suite(small_config(), "", root, [0], arms=["ColaRec"], study="arms",
                        log=lambda *_: None)
  with pytest.raises(UsageError, match=r"arms/ColaRec/seed0 \(whose row is that of .*main/"
                     r"ColaRec/seed0\) finished with another config \(train\.epochs"):
    runner.run_suite(longer, "", root, [0], arms=["ColaRec"], study="arms",
                          log=lambda *_: None)


def test_every_arm_is_checked_before_the_first_run(tmp_path):
  """`--sweep=train.epochs=1,-1`: the bad second arm is reported before the first one trains."""
  root = str(tmp_path / "root")
  with pytest.raises(ConfigError, match=r"config\.train\.epochs: got -1, expected >= 1 \(in arm "
                     r"'train\.epochs=-1', seed 0\)"):
    runner.run_suite(small_config(), "main", root, [0], sweeps=["train.epochs=1,-1"],
                     log=lambda *_: None)
  assert not os.path.exists(root)


def test_a_resumed_run_records_the_whole_runs_wall_time(tmp_path):
  """An interrupted attempt's time is kept: the resumed run's row holds both."""
  root = str(tmp_path)
  workdir = os.path.join(root, "arms", "as_configured", "seed0")
  os.makedirs(workdir)
  with open(os.path.join(workdir, runner.WALL), "w") as f:
    json.dump({"seconds": 1000.0}, f)  # what a killed first attempt had spent
  rows = runner.run_suite(small_config(), "", root, [0], arms=["as configured"],
                          log=lambda *_: None)
  assert 1000.0 < rows[0]["wall_seconds"] < 1000.0 + 600


def test_a_second_runner_skips_the_run_the_first_holds_and_comes_back(tmp_path, monkeypatch):
  """Two runners on one root: a run held by the other is not an error; it is taken up after the
  rest (by then the other has finished it, and its row is read)."""
  import threading

  from colarec_jax.data import fileio
  monkeypatch.setattr(runner, "POLL_SECONDS", 0.2)
  root, logs = str(tmp_path), []
  held = os.path.join(root, "sweep", variants.sweep_variants(
      small_config(), ["loss.contrastive_weight=0.1,0.0"])[0].slug, "seed0")
  lock = fileio.workdir_lock(held, log=lambda *_: None)
  lock.__enter__()
  released = threading.Event()

  def release_once_the_other_run_started():
    while not any("coming back to it" in line for line in logs):
      released.wait(0.05)
    while not any("colarec epoch 1" in line for line in logs):  # the other run trains meanwhile
      released.wait(0.05)
    lock.__exit__(None, None, None)
    released.set()

  thread = threading.Thread(target=release_once_the_other_run_started, daemon=True)
  thread.start()
  rows = runner.run_suite(small_config(), "", root, [0],
                          sweeps=["loss.contrastive_weight=0.1,0.0"], log=logs.append)
  thread.join(60)
  assert released.is_set() and len(rows) == 2
  assert [r["overrides"]["loss.contrastive_weight"] for r in rows] == [0.1, 0.0]
  first_try = next(n for n, line in enumerate(logs) if "coming back to it" in line)
  assert any("colarec epoch" in line for line in logs[first_try:])


def test_rows_record_the_commit_the_study_started_at(tmp_path, monkeypatch):
  """A commit landing while a long study runs is not the code its processes run: every row names
  the commit the runner started at."""
  commits = iter(["aaaaaaa", "bbbbbbb", "ccccccc"])
  monkeypatch.setattr(runner, "_commit", lambda: next(commits))
  rows = runner.run_suite(small_config(), "", str(tmp_path), [0],
                          sweeps=["loss.contrastive_weight=0.1,0.0"], log=lambda *_: None)
  assert [r["commit"] for r in rows] == ["aaaaaaa", "aaaaaaa"]


def test_a_study_with_results_resumes_on_another_machine_from_its_committed_rows(tmp_path):
  """`--results`: what one machine finished is published there (rows with their configs, report,
  per-user metrics) and is not trained again by a fresh root elsewhere; a changed config is."""
  results, logs = str(tmp_path / "results" / "main"), []
  first = runner.run_suite(small_config(), "main", str(tmp_path / "a"), [0], results=results,
                           log=lambda *_: None)
  with open(os.path.join(results, "rows.jsonl")) as f:
    published = [json.loads(line) for line in f]
  assert [r["variant"] for r in published] == ["MostPop", "LightGCN", "ColaRec"]
  assert all(r["config"]["seed"] == 0 and r["config"]["train"]["epochs"] == 1 for r in published)
  assert os.path.isfile(os.path.join(results, "report.md"))
  for row in first:
    with np.load(os.path.join(tmp_path, "a", "main", variants.slug(row["variant"]), "seed0",
                              "per_user_test.npz")) as mine, \
        np.load(os.path.join(results, "per_user", f"{variants.slug(row['variant'])}-seed0.npz")) \
        as there:
      assert sorted(mine) == sorted(there)
      assert all(np.array_equal(mine[k], there[k]) for k in mine)
  # Another machine (a fresh root), more seeds: seed 0 is restored, seed 1 trains.
  rows = runner.run_suite(small_config(), "main", str(tmp_path / "b"), [0, 1], results=results,
                          log=logs.append)
  restored = [r for r in rows if "restored_from" in r]
  assert [(r["variant"], r["seed"]) for r in restored] == [
      ("MostPop", 0), ("LightGCN", 0), ("ColaRec", 0)]
  assert [r["test"] for r in restored] == [r["test"] for r in first]
  assert restored[2]["restored_from"] == f"{os.path.relpath(results)} (ColaRec, seed 0)"
  assert sum(line.startswith("colarec epoch") for line in logs) == 1  # seed 1 only
  with open(os.path.join(results, "report.md")) as f:
    text = f.read()
  assert "ColaRec seed 0 is " in text and "Finished on another machine" in text
  assert "(2 users)" not in text and " users) |" in text  # the paired test read both seeds
  # The same config under another arm name in another study beside it is found there too; a
  # study beside it committed before rows kept their per-user metrics is passed over.
  old = tmp_path / "results" / "before"
  old.mkdir()
  (old / "rows.jsonl").write_text(json.dumps(published[2]) + "\nnot a row\n")
  logs.clear()
  arms = runner.run_suite(small_config(), "", str(tmp_path / "c"), [1], arms=["as configured"],
                          study="levers", results=str(tmp_path / "results" / "levers"),
                          log=logs.append)
  assert arms[0]["restored_from"].endswith("main (ColaRec, seed 1)")
  assert arms[0]["test"] == rows[5]["test"] and not any("colarec epoch" in l for l in logs)
  # Two epochs is another ColaRec model (it trains), not another MostPop or LightGCN: a study
  # beside it restores those.
  longer = small_config()
  longer.train.epochs = 2
  logs.clear()
  again = runner.run_suite(longer, "main", str(tmp_path / "d"), [0], study="main-longer",
                           results=str(tmp_path / "results" / "main-longer"), log=logs.append)
  assert ["restored_from" in r for r in again] == [True, True, False]
  assert sum(line.startswith("colarec epoch") for line in logs) == 2
  # A restored row is checked against its config when the runner comes to it, as a trained one
  # is: the same study with another config is an error, not a stale row.
  with pytest.raises(UsageError, match=r"e/main/ColaRec/seed0 finished with another config "
                     r"\(train\.epochs: 1 there, 2 now\)"):
    runner.run_suite(longer, "main", str(tmp_path / "e"), [0], results=results,
                     log=lambda *_: None)
  # A damaged rows file is one error naming its file and line; nothing is restored from it.
  with open(os.path.join(results, "rows.jsonl"), "a") as f:
    f.write('{"variant": "ColaRec"}\n')
  with pytest.raises(UsageError, match=r"--results: .*main/rows\.jsonl:7: expected a row"):
    runner.run_suite(small_config(), "main", str(tmp_path / "f"), [0], results=results,
                     log=lambda *_: None)
  assert not os.path.exists(tmp_path / "f" / "main")
  os.remove(os.path.join(results, "per_user", "LightGCN-seed1.npz"))
  with open(os.path.join(results, "rows.jsonl")) as f:
    lines = f.read().splitlines()[:-1]
  with open(os.path.join(results, "rows.jsonl"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with pytest.raises(UsageError, match=r"rows\.jsonl:4: .*LightGCN-seed1\.npz is missing"):
    runner.run_suite(small_config(), "main", str(tmp_path / "f"), [0], results=results,
                     log=lambda *_: None)


def test_a_committed_row_is_this_runs_only_with_its_config():
  from colarec_jax.config.settings import Settings
  from colarec_jax.studies import results as results_lib
  settings = Settings.parse(small_config())
  row = {"model": "colarec", "config": json.loads(json.dumps(settings.full))}
  assert results_lib.difference(row, settings) is None
  del row["config"]["loss"]["contrastive_weight"]  # a key added to the code since: its default
  assert results_lib.difference(row, settings) is None
  row["config"]["optim"]["learning_rate"] *= 2
  assert results_lib.difference(row, settings)[0] == "optim.learning_rate"
  lightgcn = Settings.parse(variants.variant_config(
      small_config(), variants.Variant("LightGCN", (("model.name", "lightgcn"),)), 0))
  assert results_lib.difference(row, lightgcn)[0] == "model.name"
  # LightGCN depends on its sections (data, cf, gid, eval, seed), not ColaRec's optimiser.
  assert results_lib.difference(dict(row, model="lightgcn"), lightgcn) is None
  row["config"]["cf"]["epochs"] += 1
  assert results_lib.difference(dict(row, model="lightgcn"), lightgcn)[0] == "cf.epochs"
  assert results_lib.difference({"model": "colarec"}, settings)[0] == "config"
  row["config"]["loss"]["gone"] = 1  # a key the code no longer has: not this run's
  assert results_lib.difference(row, settings)[0] == "config"


def experiments_cli(*args):
  return subprocess.run([sys.executable, "-m", "colarec_jax.studies.runner", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["--config=/nonexistent.py", "--root={tmp}/r"],
     "error: --config: '/nonexistent.py' is not a file"),
    (["--config=configs/tiny.py", "--config.data.sourc=x", "--root={tmp}/r"],
     "error: config.data.sourc: there is no such config key"),
    (["--config=configs/tiny.py", "--root={tmp}/a-file"],
     "error: --root: {tmp}/a-file is a file; expected a folder"),
    (["--config=configs/tiny.py", "--root={tmp}/r", "--results={tmp}/a-file"],
     "error: --results: {tmp}/a-file is a file; expected a folder for the study's committed"),
    (["--config=configs/tiny.py", "--root={tmp}/r", "--budget=huge"],
     "error: --budget=huge: value should be one of <cpu|paper>"),
    (["--config=configs/tiny.py", "--root={tmp}/r", "--suite=paper"],
     "error: --suite: got 'paper', expected one of main, ablation, gid"),
])
def test_the_experiments_cli_says_one_line(tmp_path, args, message):
  (tmp_path / "a-file").write_text("")
  result = experiments_cli(*(a.replace("{tmp}", str(tmp_path)) for a in args))
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
  assert lines[0].startswith(message.replace("{tmp}", str(tmp_path))), lines[0]


def test_publish_rewrites_a_per_user_file_whose_content_changed_whatever_its_date(tmp_path):
  """A published per-user file is rewritten when its run's metrics differ, even if the published
  copy is newer (a checkout resets dates), and left byte-for-byte alone when they are equal."""
  run = tmp_path / "study" / "arm" / "seed0"
  run.mkdir(parents=True)
  (run / "row.json").write_text(json.dumps({"variant": "arm", "seed": 0, "order": 0}))
  (tmp_path / "study" / "report.md").write_text("report")
  (tmp_path / "study" / "rows.jsonl").write_text("{}\n")
  first = {"users": np.arange(3), "ndcg_at_20": np.array([0.1, 0.2, 0.3])}
  np.savez(run / "per_user_test.npz", **first)
  out = tmp_path / "results"
  results_lib.publish(str(tmp_path / "study"), str(out))
  target = out / results_lib.per_user_name("arm", 0)
  published = target.read_bytes()
  results_lib.publish(str(tmp_path / "study"), str(out))
  assert target.read_bytes() == published
  second = {"users": np.arange(3), "ndcg_at_20": np.array([0.1, 0.25, 0.3])}
  np.savez(run / "per_user_test.npz", **second)
  later = os.path.getmtime(target) + 100
  os.utime(target, (later, later))  # the published copy looks newer than the run
  results_lib.publish(str(tmp_path / "study"), str(out))
  with np.load(target) as z:
    np.testing.assert_array_equal(z["ndcg_at_20"], second["ndcg_at_20"])
