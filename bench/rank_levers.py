"""Ranking-time levers on trained runs, without retraining: how wide the search is
(`eval.search_width`), the codes' popularity prior per GID level (`eval.code_prior`) and how
much of the encoder's user-item score joins the beam's (`eval.encoder_weight`).

For each seed's run (`--runs`, a glob of finished run folders), the best checkpoint ranks the
validation users (the choice is made there) and, for the `--test_widths`, the test users, once per
search width and prior; every encoder weight then re-sorts the same beam lists
(`ranker.rescored`, what `eval.encoder_weight` does inside `Ranker.ranked`). Writes per setting
the mean and standard deviation over seeds, the two-sided Wilcoxon test per user (each user's
metric averaged over seeds) against the paper's ranking (width 0, no prior, weight 0) on
validation and on test, and each search's ranking speed in users/s.

  python bench/rank_levers.py \\
      --runs='runs/experiments-phones-parity/authors-scale/authors__scale_and_init/seed*' \\
      --widths=0,1024 --weights=0,0.01,0.03,0.1,0.3,1 \\
      --out=bench/results/experiments/phones/rank-levers/levers.json
  python bench/rank_levers.py --runs='runs/experiments-phones-parity/main-in-batch/ColaRec/seed*' \\
      --widths=0 --priors='none;0:1:1;0:1.5:1.5' --weights=0,1 --test_widths=none \\
      --out=bench/results/experiments/phones/rank-levers/code-prior.json
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import itertools
import json
import os
import time

import common
import numpy as np
from scipy import stats

from colarec_jax import evaluate
from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import TEST, VALID
from colarec_jax.ranking.ranker import rescored
from colarec_jax.run import parts as parts_lib
from colarec_jax.run.store import BEST
from colarec_jax.studies import runner

SPLITS = {"valid": (VALID, "ndcg@10"), "test": (TEST, "ndcg@20")}


def search_key(width: int, prior: tuple[float, ...]) -> str:
  """How one search is named in the output: its width, and its prior when it has one."""
  return str(width) if not prior else f"{width} prior {common.prior_label(prior)}"


def rank_run(workdir: str, widths: list[int], weights: list[float], test_widths: list[int],
             valid_sample: int | None = None, priors: list[tuple[float, ...]] = ((),),
             in_search: bool | None = None, log=print) -> dict:
  """{split: {(width, prior, weight): Report}} and {split: {search_key: users/s}} for one
  trained run (`valid_sample`: eval.valid_sample instead of the run's, 0 = every validation
  user; `priors`: eval.code_prior values, () for none; `in_search`: eval.exclude_in_search
  instead of the run's)."""
  reports, speed, user_codes = {}, {}, {}
  # The stages as trained (read-only), built and loaded once: eval.valid_sample is in LightGCN's
  # stage key (its own validation), so it changes only the parts' validation split, never a stage.
  settings = Settings.parse(stored.load(workdir))
  base = parts_lib.build(settings, workdir, log=lambda *_: None, read_only=True)
  params, _ = parts_lib.checkpoints(base, settings, workdir).load_params(
      BEST, base.abstract_params())
  changed = {key: value for key, value in (("valid_sample", valid_sample),
                                           ("exclude_in_search", in_search)) if value is not None}
  if changed:
    base = dataclasses.replace(base, eval=dataclasses.replace(base.eval, **changed))
  item_codes = base.ranker(params).item_encodings()
  for width, prior in itertools.product(widths, priors):
    ev = dataclasses.replace(base.eval, search_width=width, encoder_weight=0.0, code_prior=prior)
    parts = base.with_eval(ev)
    ranker = parts.ranker(params)
    search = search_key(width, prior)
    for name, (part, _) in SPLITS.items():
      if name == "test" and width not in test_widths:
        continue
      split, inputs = parts.eval_data(part)
      exclude = [split.exclude.row(u) for u in split.users]
      ranker.ranked({k: v[:ranker.batch_size] for k, v in inputs.items()},
                    exclude[:ranker.batch_size], parts.eval.beam_size)  # compiled outside the clock
      start = time.perf_counter()
      items, scores = ranker.ranked(inputs, exclude, parts.eval.beam_size)
      seconds = time.perf_counter() - start
      speed.setdefault(name, {})[search] = len(items) / seconds
      if name not in user_codes:
        user_codes[name] = ranker.encode(inputs)
      for weight in weights:
        ranked = rescored(items, scores, user_codes[name], item_codes, weight)[0] if weight \
            else items
        reports.setdefault(name, {})[(width, prior, weight)] = evaluate.evaluate_ranking(
            ranked[:, :max(parts.eval.ks)], split.users, split.heldout, split.train_counts,
            parts.eval.ks, parts.eval.long_tail_fraction)
      log(f"{workdir} width {search} {name}: {len(items) / seconds:.1f} users/s, "
          + ", ".join(f"w={w}: {reports[name][(width, prior, w)].overall[SPLITS[name][1]]:.4f}"
                      for w in weights))
  return {"reports": reports, "users_per_second": speed}


def summarise(runs: dict[str, dict]) -> dict:
  """Mean ± std over seeds and the paired tests against the paper's search (width 0, no prior,
  weight 0), per split and setting."""
  out = {}
  for name, (_, metric) in SPLITS.items():
    settings = sorted(set.intersection(*(set(r["reports"].get(name, {})) for r in runs.values())))
    base = (0, (), 0.0)
    per_user = lambda key: _seed_mean([r["reports"][name][key] for r in runs.values()], metric)
    reference = per_user(base) if base in settings else None
    rows = []
    for key in settings:
      found = [r["reports"][name][key] for r in runs.values()]
      row = {"search_width": key[0], "code_prior": list(key[1]), "encoder_weight": key[2]}
      for m in found[0].overall:
        values = [f.overall[m] for f in found]
        row[m] = [float(np.mean(values)), float(np.std(values))]
        tail = [f.long_tail[m] for f in found]
        row["long_tail " + m] = [float(np.mean(tail)), float(np.std(tail))]
      if reference is not None and key != base:
        mine = per_user(key)
        users = sorted(set(mine) & set(reference))
        diff = np.array([mine[u] - reference[u] for u in users])
        row[f"p ({metric}) vs paper"] = (float(stats.wilcoxon(diff).pvalue) if diff.any()
                                         else 1.0)
      rows.append(row)
    out[name] = {"metric": metric, "rows": rows}
  return out


def _seed_mean(reports: list[evaluate.Report], metric: str) -> dict[int, float]:
  sums: dict[int, list[float]] = {}
  for report in reports:
    for user, value in zip(report.users.tolist(), report.per_user[metric].tolist()):
      sums.setdefault(user, []).append(value)
  return {u: float(np.mean(v)) for u, v in sums.items()}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--runs", required=True,
                 help="glob of finished runs, one per seed (a reused row: the run it reused)")
  p.add_argument("--widths", default="0,1024")
  p.add_argument("--test_widths", default="",
                 help="widths also ranked on test (default: all; 'none': validation only)")
  p.add_argument("--weights", default="0,0.01,0.03,0.1,0.3,1")
  p.add_argument("--priors", default="none",
                 help="eval.code_prior values, ';'-separated, each 'none' or per-level weights "
                      "joined by ':' (e.g. 'none;0:1:1')")
  p.add_argument("--valid_sample", type=int, default=None,
                 help="eval.valid_sample (default: the runs'; 0: every validation user)")
  p.add_argument("--exclude_in_search", choices=("true", "false"), default=None,
                 help="eval.exclude_in_search (default: the runs')")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  widths = [int(w) for w in a.widths.split(",")]
  test_widths = ([] if a.test_widths == "none" else
                 [int(w) for w in a.test_widths.split(",")] if a.test_widths else widths)
  weights = [float(w) for w in a.weights.split(",")]
  priors = common.parse_priors(p, "--priors", a.priors)
  in_search = None if a.exclude_in_search is None else a.exclude_in_search == "true"
  # A run that reused another's row ranks that run's model.
  runs = {folder: rank_run(runner.trained_folder(folder), widths, weights, test_widths,
                           a.valid_sample, priors, in_search)
          for folder in sorted(glob.glob(a.runs))}
  if not runs:
    raise SystemExit(f"--runs={a.runs!r} matches no folder")
  out = {"runs": sorted(runs), "widths": widths, "priors": [list(p) for p in priors],
         "exclude_in_search": in_search,
         "weights": weights, "valid_sample": a.valid_sample,
         "users_per_second": {name: {key: [float(r["users_per_second"][name][key])
                                           for r in runs.values()]
                                     for key in (search_key(w, p) for w in ws for p in priors)}
                              for name, ws in (("valid", widths), ("test", test_widths))},
         **summarise(runs)}
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  for name in SPLITS:
    print(f"\n{name} ({out[name]['metric']}), mean over {len(runs)} seeds")
    for row in out[name]["rows"]:
      print(f"  {search_key(row['search_width'], tuple(row['code_prior'])):>16} "
            f"weight {row['encoder_weight']:<5} "
            f"ndcg@10 {row['ndcg@10'][0]:.4f} ± {row['ndcg@10'][1]:.4f}  "
            f"ndcg@20 {row['ndcg@20'][0]:.4f}  recall@20 {row['recall@20'][0]:.4f}  "
            f"LT ndcg@20 {row['long_tail ndcg@20'][0]:.4f}  "
            f"p {row.get('p (' + out[name]['metric'] + ') vs paper', '')}")
  print("users/s:", out["users_per_second"])


if __name__ == "__main__":
  main()
