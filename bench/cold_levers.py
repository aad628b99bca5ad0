"""How items added from text alone rank, per scoring, in the cold-start protocol
(`data.cold_item_fraction`), on a trained run, without retraining.

The held-out items are indexed once (`coldstart.cold_test`); then each added items' last-step
score (`eval.new_item_score`), search width (`eval.search_width`), count of added-item
candidates beside the beam (`eval.added_candidates`) and code-popularity prior
(`eval.code_prior`) ranks every test user once,
and each encoder weight (`eval.encoder_weight`) re-sorts those lists (`ranker.rescored`, as
`Ranker.ranked` does). Rows as the protocol's table (`--mode=all`): overall, and the held-out
items' interactions alone, beside the TF-IDF content baseline. The held-out items have no
validation interactions, so nothing here can be chosen on validation: the weights come from the
validation study of the same dataset (bench/rank_levers.py).

  python bench/cold_levers.py --workdir=runs/phones-cpu-cold \\
      --scores=model,sibling_mean,sibling_max --widths=0,1024 --candidates=0,20 --weights=0,0.5 \\
      --out=bench/results/cold_levers_phones.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import time

import common
import numpy as np

from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.newitems import coldstart
from colarec_jax.ranking.ranker import rescored


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a finished run of the cold-start protocol")
  p.add_argument("--scores", default="model,sibling_mean,sibling_max")
  p.add_argument("--widths", default="0,1024")
  p.add_argument("--candidates", default="0", help="eval.added_candidates values")
  p.add_argument("--weights", default="0,0.5")
  p.add_argument("--priors", default="none",
                 help="eval.code_prior values, ';'-separated, each 'none' or weights joined by ':'")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  priors = common.parse_priors(p, "--priors", a.priors)
  settings = Settings.parse(stored.load(a.workdir))
  test = coldstart.cold_test(settings, a.workdir)
  parts, k = test.parts, max(settings.eval.ks)
  ds = parts.prepared.dataset
  rows = test.rows(coldstart.CONTENT, coldstart.content_ranking(
      [ds.content(i) for i in range(parts.gids.num_items + 1)],
      [np.asarray(parts.builder.eval_history(u), np.int64) for u in test.users], test.exclude, k))
  inputs = parts.builder.eval_inputs(test.users)
  users_h, items_h, speed = None, None, {}
  for score, width, m, prior in itertools.product(a.scores.split(","),
                                                  map(int, a.widths.split(",")),
                                                  map(int, a.candidates.split(",")), priors):
    ev = dataclasses.replace(settings.eval, new_item_score=score, search_width=width,
                             added_candidates=m, encoder_weight=0.0, code_prior=prior)
    ranker = parts.with_eval(ev).ranker(test.params)
    if users_h is None:
      users_h, items_h = ranker.encode(inputs), ranker.item_encodings()
    start = time.perf_counter()
    items, scores = ranker.ranked(inputs, test.exclude, ranker.longest)
    setting = (f"{score}, width {width}" + (f", {m} added candidates" if m else "")
               + (f", prior {common.prior_label(prior)}" if prior else ""))
    speed[setting] = len(items) / (time.perf_counter() - start)
    for weight in map(float, a.weights.split(",")):
      lists = rescored(items, scores, users_h, items_h, weight)[0] if weight else items
      name = f"colarec {setting}, weight {weight:g}"
      rows.update(test.rows(name, lists[:, :k]))
      print(f"{name}: recall@20 {rows[name].overall['recall@20']:.4f}, cold items "
            f"{rows[name + coldstart.COLD].overall['recall@20']:.4f}", flush=True)
  out = {"workdir": a.workdir, "held_out_items": test.held_out, "indexed": test.indexed,
         "held_out_interactions": test.interactions, "users_per_second": speed,
         "rows": {n: r.to_json() for n, r in rows.items()}}
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"{'row':<62} {'R@20':>7} {'N@20':>7}")
  for name, report in rows.items():
    print(f"{name:<62} {report.overall['recall@20']:7.4f} {report.overall['ndcg@20']:7.4f}")


if __name__ == "__main__":
  main()
