"""launch/gpu_check.py, the prepared device check: its pieces run end to end at toy sizes on this
CPU (--smoke, a real subprocess), and its device plan is a valid phones config within budget."""

import json
import os
import subprocess
import sys

import pytest

from colarec_jax.config.settings import Settings
from configs import phones
from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "launch"))
import gpu_check  # noqa: E402


def test_smoke_runs_every_stage_and_writes_one_json(tmp_path):
  out = tmp_path / "out"
  result = subprocess.run([sys.executable, "launch/gpu_check.py", "--out", str(out), "--smoke",
                           "--budget", "900"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout + result.stderr
  # Six files: within the device tool's eight, none more than one folder down.
  assert sorted(os.listdir(out)) == ["decode.log", "gpu_check.json", "phones.log",
                                     "phones_gid.log", "tests.log", "train_step.log"]
  with open(out / "gpu_check.json") as f:
    check = json.load(f)
  assert set(check["stages"]) == {"tests", "phones_gid", "train_step", "decode", "phones"}
  assert all(stage["exit_code"] == 0 for stage in check["stages"].values())
  assert check["tests_summary"].endswith("passed") or " passed in " in check["tests_summary"]
  steps = {row["library"]: row for row in check["train_step"]["rows"]}
  assert set(steps) == {"colarec-jax float32", "colarec-jax bfloat16"}
  assert all(row["examples_per_second"] > 0 and row["flops_per_step"] > 0
             for row in steps.values())
  assert [row["batch"] for row in check["decode"]["rows"]] == [2, 4]
  assert check["decode"]["dtype"] == "bfloat16"
  phones_run = check["phones"]
  assert [e["epoch"] for e in phones_run["epochs"]] == [1, 2, 3]
  assert all("valid/ndcg@10" in e for e in phones_run["epochs"])  # validated every epoch
  results = phones_run["results"]
  assert set(results) == {"colarec", "lightgcn", "mostpop"}
  for name in results:
    assert set(results[name]["test"]["long_tail"]) >= {"recall@20", "ndcg@20"}


def test_without_a_gpu_the_device_plan_refuses_to_run(tmp_path):
  result = subprocess.run([sys.executable, "launch/gpu_check.py", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 2
  assert "expected a GPU, JAX found cpu" in result.stderr and "--smoke" in result.stderr


def test_device_plan_is_a_valid_phones_config_that_fits_the_budget():
  plan = gpu_check.PLANS["device"]
  config = phones.get_config()
  config.train.max_seconds = 100.0  # what the phones stage adds
  for flag in ["--config.model.dtype=bfloat16", f"--config.cf.epochs={plan['cf_epochs']}",
               f"--config.eval.decode_batch_size={plan['decode_batch']}"]:
    key, value = flag.removeprefix("--config.").split("=")
    section, name = key.split(".")
    config[section][name] = type(config[section][name])(value)
  settings = Settings.parse(config)
  assert settings.model.dtype == "bfloat16" and settings.train.epochs == 60  # paper's schedule
  for test in plan["tests"][2:]:
    assert os.path.isfile(os.path.join(REPO, test)), test
  # The timed stages and the test's reserve leave phones' training at least two minutes of 540 s.
  fixed = sum(plan["shares"].values()) + plan["test_reserve"]
  assert 540 - fixed >= 120
