"""The README's set-up commands, CI's use of them, and the launch scripts."""

import os
import re
import subprocess

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


def test_launch_scripts_parse():
  for name in os.listdir(os.path.join(REPO, "launch")):
    if name.endswith(".sh"):
      subprocess.run(["bash", "-n", os.path.join(REPO, "launch", name)], check=True)


def test_run_local_runs_tiny(tmp_path):
  result = subprocess.run(["bash", "launch/run_local.sh", "configs/tiny.py", str(tmp_path),
                           "--mode=prepare"], cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  assert os.path.isfile(tmp_path / "data" / "arrays.npz")
