"""Benchmark: our LightGCN against RecBole 1.2.1's on the same split files, same hyper-parameters.

Both train with embedding 64, 3 layers, Adam lr 1e-3, batch 2048, L2 1e-4 (LightGCN's form:
reg / 2 * squared norms of the batch's layer-0 embeddings, RecBole with require_pow), one uniform
negative, for the same number of epochs, validating NDCG@10 every `--eval-every` epochs and
testing the best epoch with full ranking (train and valid items removed). Each library runs in its
own subprocess under /usr/bin/time for its peak memory, one after the other on this machine.

  python bench/lightgcn.py --datasets beauty,phones --epochs 30 --eval-every 5

RecBole comes from the `bench` extra (`pip install -e '.[bench]'`), or `--recbole-python` names an
interpreter that has it. Prints a table and writes JSON (default bench/results/lightgcn.json).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from common import REPO, write_json

sys.path.insert(0, REPO)

from colarec_jax.data import prepare as prepare_lib  # noqa: E402
from colarec_jax.config.settings import Settings  # noqa: E402
from colarec_jax.data.dataset import SPLIT_NAMES  # noqa: E402


def timed(cmd, env=None, cwd=REPO):
  """Runs cmd under /usr/bin/time; returns (stdout, peak RSS in MB)."""
  with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
    result = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", t.name, *cmd], cwd=cwd,
                            capture_output=True, text=True, env=env)
    if result.returncode:
      raise RuntimeError(f"{cmd[:4]} failed:\n{result.stderr[-3000:]}")
    return result.stdout, int(t.read().split()[-1]) / 1024


def export_split(prepared, out_dir, name):
  """Our prepared split as RecBole benchmark files (internal integer ids as tokens)."""
  folder = os.path.join(out_dir, name)
  os.makedirs(folder, exist_ok=True)
  for code, part in enumerate(SPLIT_NAMES):
    users, items = prepared.rows(code)
    with open(os.path.join(folder, f"{name}.{part}.inter"), "w") as f:
      f.write("user_id:token\titem_id:token\n")
      f.writelines(f"{u}\t{i}\n" for u, i in zip(users.tolist(), items.tolist()))


def config_path(name):
  return os.path.join(REPO, "configs", f"{name}.py")


def run_ours(name, data_dir, workdir, epochs, eval_every):
  cmd = [sys.executable, "-m", "colarec_jax.main", f"--config={config_path(name)}",
         f"--workdir={workdir}", "--mode=train", "--config.model.name=lightgcn",
         f"--config.cf.epochs={epochs}", f"--config.cf.eval_every={eval_every}",
         f"--config.data.dir={data_dir}"]
  _, peak = timed(cmd, env=dict(os.environ, TQDM_DISABLE="1"))
  with open(os.path.join(workdir, "lightgcn", "manifest.json")) as f:
    result = json.load(f)["result"]
  return {"seconds_per_epoch": result["seconds_per_epoch"], "epochs_run": result["epochs_run"],
          "best_epoch": result["best_epoch"], "test": result["test"]["overall"],
          "peak_mb": peak}


def run_recbole(python, rb_dir, name, epochs, eval_every):
  # RecBole writes log_tensorboard/ into its working directory: keep it out of the checkout.
  out, peak = timed([python, os.path.join(REPO, "bench", "recbole_lightgcn.py"), rb_dir, name,
                     str(epochs), str(eval_every)], cwd=rb_dir)
  result = json.loads(out.strip().splitlines()[-1])
  test = {k.lower(): v for k, v in result["test"].items()}
  return {"seconds_per_epoch": result["seconds_per_epoch"], "epochs_run": result["epochs_run"],
          "best_epoch": result["best_epoch"], "test": test, "peak_mb": peak,
          "seconds_per_eval": result["seconds_per_eval"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default="beauty,phones")
  parser.add_argument("--shared-data", default=os.environ.get("COLAREC_SHARED_DATA",
                                                             "../shared/data"))
  parser.add_argument("--epochs", type=int, default=30)
  parser.add_argument("--eval-every", type=int, default=5)
  parser.add_argument("--recbole-python", default=sys.executable)
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "lightgcn.json"))
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name in args.datasets.split(","):
      data_dir = os.path.abspath(os.path.join(args.shared_data, name))
      workdir = os.path.join(tmp, f"ours-{name}")
      sys.argv = [sys.argv[0]]
      config = __import__(f"configs.{name}", fromlist=["get_config"]).get_config()
      config.data.dir = data_dir
      prepared = prepare_lib.prepare(Settings.parse(config).data, workdir, log=lambda *_: 0)
      export_split(prepared, os.path.join(tmp, "recbole"), name)
      for lib, run in (("colarec-jax", lambda: run_ours(name, data_dir, workdir, args.epochs,
                                                         args.eval_every)),
                       ("recbole", lambda: run_recbole(args.recbole_python,
                                                       os.path.join(tmp, "recbole"), name,
                                                       args.epochs, args.eval_every))):
        row = {"dataset": name, "library": lib, **run()}
        rows.append(row)
        print(json.dumps(row), flush=True)
  header = (f"{'dataset':<8} {'library':<12} {'s/epoch':>8} {'speed-up':>8} {'best ep':>7} "
            f"{'R@20':>7} {'N@20':>7} {'peak MB':>8}")
  lines = [header, "-" * len(header)]
  for row in rows:
    peer = next(r for r in rows if r["dataset"] == row["dataset"] and r["library"] == "recbole")
    lines.append(f"{row['dataset']:<8} {row['library']:<12} {row['seconds_per_epoch']:>8.2f} "
                 f"{peer['seconds_per_epoch'] / row['seconds_per_epoch']:>7.2f}x "
                 f"{row['best_epoch']:>7} {row['test']['recall@20']:>7.4f} "
                 f"{row['test']['ndcg@20']:>7.4f} {row['peak_mb']:>8.0f}")
  print("\n".join(lines))
  write_json(args.out, {"epochs": args.epochs, "eval_every": args.eval_every, "rows": rows,
                        "cpu_count": os.cpu_count(), "numpy": np.__version__})


if __name__ == "__main__":
  main()
