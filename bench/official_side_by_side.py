"""colarec-jax beside the authors' PyTorch code at the same budget: quality on the same users,
training examples/s and ranking users/s (issue 35's side-by-side).

Their side is trained by the shared harness (`../shared/peers/official_cpu/run_official.py train`,
which runs their `model_train.main()` with small shims) and imported into a workdir with
`colarec-jax --mode=import_official`; its test rankings are then computed by our engine, which
the parity test shows is their function (and this script checks it again at full size against
their own beam search's lists on a sample of users). Both workdirs are tested on every test user
under their protocol (validation items kept in rankings: `eval.exclude_valid_at_test=False`).

  python bench/official_side_by_side.py --ours=W --theirs=W_IMPORTED \\
      --their_train_log=train.log --their_eval=official_test.json \\
      --out=bench/results/official_side_by_side.json

--their_train_log: run_official.py train's output (their logged batch times give the steady
  rate; run it alone, e.g. one epoch, for a clean figure); --their_eval: run_official.py eval's
  JSON (their beam search's top-100 lists and seconds on sampled users).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time

import numpy as np
from scipy import stats

from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import TEST
from colarec_jax.run import parts as parts_lib
from colarec_jax.run.store import BEST

METRICS = ("recall@20", "ndcg@20", "recall@10", "ndcg@10")


def _load(workdir: str):
  config = stored.load(workdir)
  config.eval.exclude_valid_at_test = False  # their protocol
  settings = Settings.parse(config)
  parts = parts_lib.build(settings, workdir, log=lambda *_: None)
  params, epoch = parts_lib.checkpoints(parts, settings, workdir).load_params(
      BEST, parts.abstract_params())
  return settings, parts, params, epoch


def _test(parts, params) -> tuple[dict, float]:
  """(per-user test metrics keyed by raw user id, users/s of the ranking, the report)."""
  split, inputs = parts.eval_data(TEST)
  ranker = parts.ranker(params)
  rows = ranker.batch_size  # one batch first: the timed pass runs compiled
  ranker.ranked({k: v[:rows] for k, v in inputs.items()}, [np.zeros(0, np.int32)] * rows,
                max(parts.eval.ks))
  start = time.perf_counter()
  report = ranker.evaluate(split, inputs)
  seconds = time.perf_counter() - start
  raw = parts.prepared.dataset.user_ids[report.users]
  return ({m: dict(zip(raw.tolist(), report.per_user[m].tolist())) for m in METRICS},
          len(report.users) / seconds, report)


def _paired(a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
  diff = a - b
  rng = np.random.default_rng(seed)
  boots = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(2000)]
  nonzero = diff[diff != 0]
  return {"mean_diff": float(diff.mean()),
          "ci95": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
          "wilcoxon_p": float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0}


def _their_train(log_path: str, steps: int) -> dict:
  """Their training speed from run_official.py train's output: the steady rate between the first
  and the last logged batch (their logger stamps every print_steps batches), and the whole wall
  time (data loading and model building included)."""
  text = open(log_path).read()
  seconds = float(re.search(r"TRAIN_WALL_SECONDS ([\d.]+)", text).group(1))
  batch = int(re.search(r"'batch_size': (\d+)", text).group(1))
  epochs = int(re.search(r"'n_epochs': (\d+)", text).group(1))
  stamps = [(int(m.group(2)), datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"))
            for m in re.finditer(r"^(\S+ \S+)\s+--INFO --the current batch (\d+),", text, re.M)]
  (first, t0), (last, t1) = stamps[0], stamps[-1]
  return {"wall_seconds": seconds, "examples": batch * epochs * steps,
          "wall_examples_per_second": batch * epochs * steps / seconds,
          "examples_per_second": (last - first) * batch / (t1 - t0).total_seconds(),
          "rate_over_batches": [first, last]}


def _same_lists(parts, params, their_eval: dict) -> dict:
  """Our engine's top-100 on their model against their own beam search's, on their users."""
  ds = parts.prepared.dataset
  user_index = {int(r): n for n, r in enumerate(ds.user_ids.tolist()) if n}
  users = np.array([user_index[u] for u in their_eval["users"]])
  inputs = parts.builder.eval_inputs(users)
  beam = parts.trie.beam_size
  items, scores = parts.ranker(params).ranked(inputs, [np.zeros(0, np.int32)] * len(users), beam)
  ours = ds.item_ids[items].astype(np.int64)
  theirs = np.array(their_eval["raw_top100"])[:, :beam]
  equal = (ours == theirs).all(axis=1)
  # A differing list differs only by swapped neighbours of (nearly) equal score.
  swaps_only = [bool(e) or sorted(o) == sorted(t) for e, o, t in zip(equal, ours, theirs)]
  overlap = np.mean([len(set(o) & set(t)) / beam for o, t in zip(ours, theirs)])
  return {"users": len(users), "identical_lists": int(equal.sum()),
          "same_items_reordered_by_ties": int(sum(swaps_only) - equal.sum()),
          "mean_overlap": float(overlap)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--ours", required=True)
  p.add_argument("--theirs", required=True, help="the workdir import_official made")
  p.add_argument("--their_train_log", required=True)
  p.add_argument("--their_eval", required=True)
  p.add_argument("--their_steps_per_epoch", type=int, default=300,
                 help="run_official.py train's --steps_per_epoch")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  their_eval = json.load(open(a.their_eval))
  out = {"protocol": "official (validation items kept in test rankings)", "sides": {}}
  per_user = {}
  for side, workdir in (("colarec-jax", a.ours), ("authors' code", a.theirs)):
    settings, parts, params, epoch = _load(workdir)
    metrics, users_per_second, report = _test(parts, params)
    per_user[side] = metrics
    out["sides"][side] = {"workdir": os.path.abspath(workdir), "checkpoint_epoch": epoch,
                          "test": {m: float(report.overall[m]) for m in METRICS},
                          "test_users": len(report.users),
                          "ranking_users_per_second_in_colarec_jax": users_per_second}
    if side == "colarec-jax":
      history = json.load(open(os.path.join(workdir, "colarec", "metrics.json")))["history"]
      out["sides"][side]["train_examples_per_second"] = float(
          np.mean([h["examples_per_second"] for h in history]))
    else:
      out["sides"][side]["train"] = _their_train(a.their_train_log, a.their_steps_per_epoch)
      out["sides"][side]["their_ranking"] = {
          "users": len(their_eval["users"]), "seconds": their_eval["eval_seconds"],
          "users_per_second": len(their_eval["users"]) / their_eval["eval_seconds"]}
      out["sides"][side]["lists_vs_their_beam_search"] = _same_lists(parts, params, their_eval)
  users = sorted(set(per_user["colarec-jax"]["ndcg@20"]) & set(per_user["authors' code"]["ndcg@20"]))
  out["paired"] = {m: _paired(np.array([per_user["authors' code"][m][u] for u in users]),
                              np.array([per_user["colarec-jax"][m][u] for u in users]))
                   for m in ("ndcg@20", "recall@20")}
  out["paired"]["users"] = len(users)
  out["paired"]["sign"] = "authors' code minus colarec-jax"
  ours, theirs = out["sides"]["colarec-jax"], out["sides"]["authors' code"]
  out["speedup"] = {
      "training": ours["train_examples_per_second"] / theirs["train"]["examples_per_second"],
      "ranking": ours["ranking_users_per_second_in_colarec_jax"]
                 / theirs["their_ranking"]["users_per_second"]}
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"{'side':<16}{'N@20':>8}{'R@20':>8}{'train ex/s':>12}{'rank users/s':>14}")
  print(f"{'colarec-jax':<16}{ours['test']['ndcg@20']:>8.4f}{ours['test']['recall@20']:>8.4f}"
        f"{ours['train_examples_per_second']:>12.1f}"
        f"{ours['ranking_users_per_second_in_colarec_jax']:>14.1f}")
  print(f"{'authors code':<16}{theirs['test']['ndcg@20']:>8.4f}{theirs['test']['recall@20']:>8.4f}"
        f"{theirs['train']['examples_per_second']:>12.1f}"
        f"{theirs['their_ranking']['users_per_second']:>14.1f}")
  print(json.dumps(out["paired"], indent=1))
  print(json.dumps(theirs["lists_vs_their_beam_search"]))
  print("wrote", a.out, file=sys.stderr)


if __name__ == "__main__":
  main()
