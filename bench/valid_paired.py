"""A paired test of two arms of a study on the validation split (what settings are chosen on).

The studies' reports test arms per user on the test split; a choice made on validation needs the
same on validation. For each finished run of the two arms (one per seed) this ranks the
validation users with the run's best checkpoint, averages each user's metric over seeds, and
compares the arms per user (two-sided Wilcoxon signed-rank) and per seed (paired t-test).

  python bench/valid_paired.py --study=runs/experiments-phones-parity/authors-scale \\
      --reference=as_configured --arm=authors__scale_and_init \\
      --out=bench/results/experiments/phones/authors-scale/valid_paired.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np
from scipy import stats

from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import VALID
from colarec_jax.run import parts as parts_lib
from colarec_jax.run.store import BEST


def per_user_valid(workdir: str, metric: str) -> dict[int, float]:
  """{user: metric} of the run's best checkpoint on its validation users."""
  settings = Settings.parse(stored.load(workdir))
  parts = parts_lib.build(settings, workdir, log=lambda *_: None)
  params, _ = parts_lib.checkpoints(parts, settings, workdir).load_params(
      BEST, parts.abstract_params())
  report = parts.ranker(params).evaluate(*parts.eval_data(VALID))
  return dict(zip(report.users.tolist(), report.per_user[metric].tolist()))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--study", required=True, help="the study folder (one folder per arm)")
  p.add_argument("--reference", required=True)
  p.add_argument("--arm", required=True)
  p.add_argument("--metric", default="ndcg@10")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  runs = {}
  for arm in (a.reference, a.arm):
    for seed_dir in sorted(glob.glob(os.path.join(a.study, arm, "seed*"))):
      seed = int(os.path.basename(seed_dir)[4:])
      runs.setdefault(arm, {})[seed] = per_user_valid(seed_dir, a.metric)
  seeds = sorted(set(runs[a.reference]) & set(runs[a.arm]))
  users = sorted(set.intersection(*(set(runs[arm][s]) for arm in runs for s in seeds)))
  mean = {arm: np.array([np.mean([runs[arm][s][u] for s in seeds]) for u in users])
          for arm in runs}
  diff = mean[a.arm] - mean[a.reference]
  per_seed = {arm: [float(np.mean(list(runs[arm][s].values()))) for s in seeds] for arm in runs}
  out = {
      "study": a.study, "metric": f"valid {a.metric}", "seeds": seeds, "users": len(users),
      "per_seed": per_seed,
      "mean": {arm: float(np.mean(v)) for arm, v in per_seed.items()},
      "std": {arm: float(np.std(v, ddof=1)) for arm, v in per_seed.items()},
      "arm_minus_reference": float(diff.mean()),
      "wilcoxon_p_per_user": float(stats.wilcoxon(diff[diff != 0]).pvalue),
      "ttest_p_per_seed": float(stats.ttest_rel(per_seed[a.arm], per_seed[a.reference]).pvalue),
  }
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"{a.reference:<28} {out['mean'][a.reference]:.4f} ± {out['std'][a.reference]:.4f}")
  print(f"{a.arm:<28} {out['mean'][a.arm]:.4f} ± {out['std'][a.arm]:.4f}")
  print(f"difference {out['arm_minus_reference']:+.4f} over {len(users)} users: Wilcoxon p "
        f"{out['wilcoxon_p_per_user']:.3g}, paired t over {len(seeds)} seeds p "
        f"{out['ttest_p_per_seed']:.3g}")


if __name__ == "__main__":
  main()
