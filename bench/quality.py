"""Diagnose how a ColaRec run learns: curves, beam-search prefix survival, generation vs encoder.

  python bench/quality.py --config=configs/default.py --workdir=runs/quality/default \
      --name=default [--config.train.epochs=12 --config.train.steps_per_epoch=50]

Trains ColaRec in --workdir (or reuses the finished run there), then, on the validation split
with the best checkpoint (the test split is never looked at):
  - the curves: each loss term and valid NDCG@10 against training examples seen, per epoch
    (more, shorter epochs give finer curves at the same budget);
  - how often the held-out item's GID prefix survives each beam step (`diagnose.prefix_survival`);
  - each GID level's NLL of the held-out item from the user's input, from another user's input,
    and from code popularity (`diagnose.level_nll`): which levels use the user at all;
  - Recall/NDCG of beam search, of greedy decoding (beam 1), and of the encoder's ranking signal
    h(X_u) . h(X_i) over all items (`diagnose.encoder_report`).
Writes bench/results/quality/<name>.json and <name>.png and prints a table.
"""

import json
import os
import sys

import common
from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, common.REPO)

from colarec_jax import evaluate
from colarec_jax.cli import modes
from colarec_jax.runtime import checkpoint, reporting
from colarec_jax.studies import diagnose
from colarec_jax.data.dataset import VALID
from colarec_jax.config.settings import Settings
from colarec_jax.run import parts as parts_lib

config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's workdir (trained here unless finished).")
flags.DEFINE_string("name", None, "Results name: bench/results/quality/<name>.json/.png.")
flags.DEFINE_string("out", os.path.join(common.REPO, "bench", "results", "quality"),
                    "Results folder.")
flags.mark_flags_as_required(["config", "workdir", "name"])
FLAGS = flags.FLAGS


def curves(history: list[dict], batch_size: int, metric: str) -> list[dict]:
  """Per epoch: examples seen so far, the mean of each loss term, and the valid metric."""
  seen, out = 0, []
  for record in history:
    seen += round(record["examples_per_second"] * record["seconds"] / batch_size) * batch_size
    row = {"epoch": record["epoch"], "examples": seen,
           **{k: record[k] for k in reporting.LOSS_TERMS if k in record}}
    if f"valid/{metric}" in record:
      row[f"valid/{metric}"] = record[f"valid/{metric}"]
    out.append(row)
  return out


def plot(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  rows, metric = result["curves"], result["metric"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  x = [r["examples"] for r in rows]
  for k in reporting.LOSS_TERMS[1:]:
    if rows and k in rows[0]:
      axes[0].plot(x, [r[k] for r in rows], marker=".", label=k)
  axes[0].set(xlabel="training examples seen", ylabel="loss term (epoch mean)", yscale="log")
  axes[0].legend()
  points = [(r["examples"], r[f"valid/{metric}"]) for r in rows if f"valid/{metric}" in r]
  if points:
    axes[1].plot(*zip(*points), marker="o")
  axes[1].set(xlabel="training examples seen", ylabel=f"valid {metric}")
  survival = result["prefix_survival"]
  axes[2].bar([f"step {t + 1}" for t in range(len(survival))], survival)
  axes[2].set(ylabel="held-out GID prefix still in the beam", ylim=(0, 1))
  fig.suptitle(result["name"])
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def main(_):
  logging.set_verbosity(logging.WARNING)
  settings = Settings.parse(FLAGS.config)
  quiet = lambda *_: None
  reports = modes.train_models(settings, FLAGS.workdir, ["colarec"], log=print)["colarec"]
  parts = parts_lib.build(settings, FLAGS.workdir, log=quiet, read_only=True)
  params, best_epoch = parts_lib.checkpoints(parts, settings, FLAGS.workdir).load_params(
      checkpoint.BEST, parts.abstract_params())
  split, inputs = parts.eval_data(VALID)
  with open(os.path.join(parts_lib.run_dir(FLAGS.workdir), "metrics.json")) as f:
    history = json.load(f)["history"]
  metric, ks = settings.eval.metric, settings.eval.ks
  rankings = {"beam": reports["valid"],
              "greedy": diagnose.greedy_report(parts, params, split, inputs),
              "encoder": diagnose.encoder_report(parts, params, split, inputs)}
  result = {
      "name": FLAGS.name, "config": FLAGS.config.to_dict(), "host": common.host(),
      "metric": metric, "best_epoch": best_epoch, "beam_size": settings.eval.beam_size,
      "curves": curves(history, settings.optim.batch_size, metric),
      "prefix_survival": diagnose.prefix_survival(parts, params, split, inputs),
      "level_nll": {"own input": diagnose.level_nll(parts, params, split, inputs),
                    "another user's input": diagnose.level_nll(parts, params, split, inputs,
                                                               shuffle_seed=0),
                    "code popularity": diagnose.popularity_level_nll(parts, split)},
      "valid": {name: r.to_json() for name, r in rankings.items()},
  }
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(os.path.join(FLAGS.out, f"{FLAGS.name}.json"), "w") as f:
    json.dump(result, f, indent=1, default=str)
  plot(result, os.path.join(FLAGS.out, f"{FLAGS.name}.png"))
  print("\n".join(f"epoch {r['epoch']}: {r['examples']} examples, " + ", ".join(
      f"{k} {v:.4f}" for k, v in r.items() if k not in ("epoch", "examples"))
      for r in result["curves"]))
  print("prefix survival per beam step: " + ", ".join(f"{v:.3f}"
                                                      for v in result["prefix_survival"]))
  for name, values in result["level_nll"].items():
    print(f"NLL per GID level, {name}: " + ", ".join(f"{v:.3f}" for v in values))
  print("valid metrics (best checkpoint)\n" + evaluate.format_table(rankings, ks))


if __name__ == "__main__":
  app.run(main)
