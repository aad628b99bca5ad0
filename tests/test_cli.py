"""The real command line, in subprocesses: modes, locked config, one-line errors."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, TINY_TRAINED


def cli(*args, env=None, cwd=REPO):
  full_env = dict(os.environ, **(env or {}))
  return subprocess.run([sys.executable, "-m", "colarec_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, env=full_env, timeout=300)


def test_default_mode_prepares_prints_stats_and_baselines(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.cf.epochs=2")
  assert result.returncode == 0, result.stderr
  assert "prepared data written" in result.stdout
  assert "test metrics" in result.stdout and "lightgcn long-tail" in result.stdout
  rows = dict(line.split(None, 1) for line in result.stdout.splitlines() if line[:1].isalpha())
  assert rows["users"].strip() == "48" and rows["interactions"].strip() == "395"
  assert os.path.isfile(tmp_path / "data" / "manifest.json")


def test_prepare_then_stats_reuses(tmp_path):
  assert cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=prepare").returncode == 0
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=stats")
  assert result.returncode == 0 and "reusing prepared data" in result.stdout


def test_override_changes_preparation(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}",
               "--mode=prepare", "--config.data.split_order=temporal",
               "--config.data.max_item_tokens=7")
  assert result.returncode == 0, result.stderr
  assert '"max_item_tokens": 7' in (tmp_path / "data" / "manifest.json").read_text()


def test_mistyped_key_fails_at_startup(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--config.data.sourc=atomic")
  assert result.returncode != 0
  assert "sourc" in result.stderr
  assert not os.path.exists(tmp_path / "data")


@pytest.mark.parametrize("flag,message", [
    ("--config.data.source=csv", "error: config.data.source: got 'csv', expected one of "
                                 "'movielens', 'atomic', 'amazon', 'foodcom'"),
    ("--config.cpu_devices=-1", "error: config.cpu_devices: got -1, expected 0 (JAX's own "
                                "setting) or a count of CPU devices, e.g. the number of cores"),
    ("--config.cpu_devices=3", "error: config.optim.batch_size: got 16, expected a positive "
                               "multiple of the 3 devices that training splits it over"),
])
def test_bad_value_is_one_line_without_traceback(tmp_path, flag, message):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", flag)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [message]
  assert os.listdir(tmp_path) == []


def test_a_warm_up_the_run_cannot_hold_is_refused_before_lightgcn_trains(tmp_path):
  # 1 epoch over every training row (batches of 16): a warm-up of 10,000 steps leaves nothing to
  # decay over. The step count needs the prepared data (an uncapped epoch is every training
  # row), so the data stage may finish; nothing trains.
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=all",
               "--config.optim.schedule=warmup_cosine", "--config.optim.warmup_steps=10000",
               "--config.train.epochs=1", "--config.train.steps_per_epoch=0")
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
  assert re.fullmatch(r"error: config\.optim\.warmup_steps: got 10000, expected fewer than "
                      r"the \d+ training steps", lines[0]), lines[0]
  assert sorted(os.listdir(tmp_path)) == [".colarec.lock", "data"]


def test_bad_file_names_file_and_line(tmp_path):
  src = tmp_path / "src"
  shutil.copytree(os.path.join(REPO, "tests", "fixtures", "tiny"), src)
  with open(src / "tiny.inter", "a") as f:
    f.write("u01\ti02\n")
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path / 'w'}",
               f"--config.data.dir={src}")
  assert result.returncode == 2
  assert result.stderr.strip() == f"error: {src}/tiny.inter:397: row has 2 fields, header has 3"
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "w")  # the run made the folder, and wrote nothing


def test_default_config_on_embedded_dataset_offline(shared_data, tmp_path):
  cache = tmp_path / "cache" / "ml-100k"
  shutil.copytree(os.path.join(shared_data, "ml-100k"), cache)
  result = cli("--config=configs/default.py", f"--workdir={tmp_path / 'w'}", "--mode=stats",
               env={"COLAREC_CACHE": str(tmp_path / "cache"), "PIP_NO_INDEX": "1",
                    "PIP_CONFIG_FILE": os.devnull})
  assert result.returncode == 0, result.stderr
  assert "ml-100k" in result.stdout and "100,000" in result.stdout


@pytest.mark.skipif(shutil.which("colarec-jax") is None, reason="package not pip-installed")
def test_console_script(tmp_path):
  result = subprocess.run(["colarec-jax", "--config=configs/tiny.py", f"--workdir={tmp_path}",
                           "--mode=prepare"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr


def test_train_mode_runs_the_named_baseline(tmp_path):
  result = cli("--config=configs/tiny.py", f"--workdir={tmp_path}", "--mode=train",
               "--config.model.name=mostpop")
  assert result.returncode == 0, result.stderr
  table = result.stdout.split("test metrics\n")[1].splitlines()
  assert table[2].startswith("mostpop ") and table[3].startswith("mostpop long-tail")
  assert "lightgcn" not in result.stdout


@pytest.fixture(scope="module")
def trained(trained_tiny):
  """ColaRec trained for 2 short epochs on the tiny config through the CLI (conftest)."""
  return trained_tiny


def test_train_mode_trains_colarec_and_writes_outputs(trained):
  workdir, result = trained
  assert result.returncode == 0, result.stderr
  table = result.stdout.split("test metrics\n")[1].splitlines()
  assert table[2].startswith("colarec ") and table[3].startswith("colarec long-tail")
  assert "colarec epoch 2:" in result.stdout
  run = workdir / "colarec"
  with open(run / "metrics.json") as f:
    metrics = json.load(f)
  assert len(metrics["history"]) == 2 and 0 <= metrics["test"]["overall"]["ndcg@10"] <= 1
  assert (run / "training_curves.png").is_file()
  assert sorted(os.listdir(run / "checkpoints" / "latest")) == ["1", "2"]
  assert os.listdir(run / "checkpoints" / "best") == [str(metrics["best_epoch"])]


def test_training_stores_its_config_in_the_workdir(trained):
  from colarec_jax.config.settings import Settings
  from configs import tiny
  workdir, _ = trained
  config = tiny.get_config()
  config.cf.epochs, config.train.epochs, config.train.steps_per_epoch = 2, 2, 4
  with open(workdir / "config.json") as f:
    assert json.load(f) == Settings.parse(config).full


@pytest.mark.parametrize("config,cpu_devices,used", [
    (TINY_TRAINED, 0, "4 cpu devices"), ((), 3, "3 cpu devices"), ((), 0, "4 cpu devices")])
def test_evaluate_mode_reproduces_the_test_metrics(trained, config, cpu_devices, used):
  """Trained on conftest's 4 fake CPU devices; ranked on 3 (`config.cpu_devices`), the same.
  Without --config, the workdir's stored config is used; with it, it must be training's.

  3 does not divide the training batch (16): ranking pads its own batches, so only training
  asks for a multiple (see the bad-value test)."""
  workdir, _ = trained
  result = cli(*config, f"--workdir={workdir}", "--mode=evaluate",
               f"--config.cpu_devices={cpu_devices}")
  assert result.returncode == 0, result.stderr
  assert re.search(rf"^using the best checkpoint \(epoch \d\) in .*, on {used}$", result.stdout,
                   re.M), result.stdout
  with open(workdir / "colarec" / "metrics.json") as f:
    expected = json.load(f)["test"]["overall"]["ndcg@10"]
  row = next(line for line in result.stdout.splitlines() if line.startswith("colarec "))
  header = next(line for line in result.stdout.splitlines() if line.startswith("model "))
  # Another device count compiles other programs: a last-bit difference may swap a near-tie in
  # one user's ranking, which moves NDCG@10 by at most 1 / users.
  users = int(row.split()[header.split().index("users")])
  tolerance = 1e-4 if cpu_devices == 0 else 1 / users + 1e-4
  assert float(row.split()[header.split().index("ndcg@10")]) == pytest.approx(expected,
                                                                               abs=tolerance)


def test_train_mode_resumes_from_the_stored_config(trained, tmp_path):
  """Only --workdir: the stored config's run is finished, so it is tested, not trained again."""
  workdir = tmp_path / "copy"
  shutil.copytree(trained[0], workdir)
  result = cli(f"--workdir={workdir}", "--mode=train")
  assert result.returncode == 0, result.stderr
  assert "colarec epoch" not in result.stdout and "test metrics" in result.stdout


@pytest.mark.parametrize("mode", ["train", "gid"])
def test_writing_modes_refuse_other_model_keys_before_rebuilding_a_stage(trained, tmp_path, mode):
  """Other GIDs under a trained model would make its checkpoints decode the wrong tree: the
  stored config refuses them before the GID stage is touched."""
  workdir = tmp_path / "copy"
  shutil.copytree(trained[0], workdir)
  manifest = workdir / "gid" / "manifest.json"
  before = (manifest.read_text(), os.stat(workdir / "gid" / "gids.npz").st_mtime_ns)
  result = cli(*TINY_TRAINED, f"--workdir={workdir}", f"--mode={mode}",
               "--config.gid.branching=5")
  assert result.returncode == 2, result.stdout + result.stderr
  assert re.search(r"^error: config\.gid\.branching: got 5, but the checkpoints in .*copy were "
                   r"trained with \d+; use that value or a new --workdir$", result.stderr, re.M)
  assert "gid" not in result.stdout.lower()  # no stage was built or logged
  assert (manifest.read_text(), os.stat(workdir / "gid" / "gids.npz").st_mtime_ns) == before


@pytest.mark.parametrize("flag", ["--user=u03", "--items=i04,i29"])
def test_recommend_prints_top_n(trained, flag):
  workdir, _ = trained
  result = cli(f"--workdir={workdir}", "--mode=recommend", flag, "--top_n=5",
               "--checkpoint=latest")
  assert result.returncode == 0, result.stderr
  lines = [line for line in result.stdout.splitlines() if line[:4].strip().rstrip(".").isdigit()]
  assert [int(line.split(".")[0]) for line in lines] == [1, 2, 3, 4, 5]
  items = [line.split()[1] for line in lines]
  assert len(set(items)) == 5 and all(i.startswith("i") for i in items)
  assert all("title" in line for line in lines)  # the item's content string
  if flag.startswith("--items"):
    assert not {"i04", "i29"} & set(items)  # the history is not recommended back


@pytest.mark.parametrize("flags,message", [
    (["--user=nobody"], "error: --user: 'nobody' is not a user of tiny (48 users, e.g. 'u00')"),
    (["--items=i04,zz"], "error: --items: 'zz' is not an item of tiny (36 items, e.g. 'i00')"),
    (["--user=u03", "--items=i04"], "error: --user: give exactly one of --user=<user id> or "
                                    "--items=<id,id,...>"),
    (["--user=u03", "--checkpoint=7"], "error: --checkpoint: no latest checkpoint for epoch 7"),
])
def test_recommend_errors_are_one_line(trained, flags, message):
  workdir, _ = trained
  result = cli(f"--workdir={workdir}", "--mode=recommend", *flags)
  assert result.returncode == 2
  assert result.stderr.strip().startswith(message), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


def test_recommend_for_a_user_leaves_out_everything_the_user_has(trained):
  """Training, validation and test items alike: a user is not recommended what they have
  (with training items alone left out, most tiny users got their test items back)."""
  from colarec_jax.cli import modes
  from colarec_jax.cli.flags import RecommendFlags
  from colarec_jax.data.prepare import load_prepared
  from colarec_jax.config.settings import Settings
  from configs import tiny
  workdir, _ = trained
  config = tiny.get_config()
  config.cf.epochs = 2
  settings = Settings.parse(config)
  prepared = load_prepared(str(workdir / "data"))
  ds = prepared.dataset
  for raw in ("u00", "u01", "u02", "u04", "u05"):
    user = list(ds.user_ids).index(raw)
    known = {str(ds.item_ids[i]) for i in ds.items[ds.users == user]}
    got = set(modes.recommend(settings, str(workdir), RecommendFlags(user=raw, top_n=20),
                                 log=lambda *_: None).items)
    assert got and not got & known, (raw, got & known)


def test_split_id_tables_train_and_rank_on_any_mesh(tmp_path):
  """model.shard_ids through the CLI: trained on 4 fake CPU devices with the ID tables split by
  rows, the run tests itself; `--mode=evaluate` restores the split checkpoint onto 4 devices (the
  same metrics) and onto 2 (each holding half the rows; ties aside, the same)."""
  workdir = tmp_path / "split"
  trained = cli(*TINY_TRAINED, "--config.model.shard_ids=True", f"--workdir={workdir}",
                "--mode=train")
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(workdir / "colarec" / "metrics.json") as f:
    expected = json.load(f)["test"]["overall"]["ndcg@10"]
  for devices, used in ((0, "4 cpu devices"), (2, "2 cpu devices")):
    result = cli(f"--workdir={workdir}", "--mode=evaluate", f"--config.cpu_devices={devices}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"on {used}" in result.stdout
    lines = result.stdout.splitlines()
    row = next(line for line in lines if line.startswith("colarec "))
    header = next(line for line in lines if line.startswith("model "))
    users = int(row.split()[header.split().index("users")])
    tolerance = 1e-4 if devices == 0 else 1 / users + 1e-4
    assert float(row.split()[header.split().index("ndcg@10")]) == pytest.approx(
        expected, abs=tolerance)
