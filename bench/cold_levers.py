"""How items added from text alone rank, per placement and scoring, in the cold-start protocol
(`data.cold_item_fraction`), on a trained run, without retraining.

For each placement (`eval.new_item_placement`, with `eval.placement_neighbours` as `name@k`) the
held-out items are indexed once (`coldstart.cold_test`); then each added items' last-step
score (`eval.new_item_score`), search width (`eval.search_width`), count of added-item
candidates beside the beam (`eval.added_candidates`) and code-popularity prior
(`eval.code_prior`) ranks every test user once, and each encoder weight (`eval.encoder_weight`)
re-sorts those lists (`ranker.rescored`, as `Ranker.ranked` does). Rows as the protocol's table
(`--mode=all`): overall, and the held-out items' interactions alone, beside the TF-IDF content
baseline; the cold rows also per half of the held-out items (`ColdTest.halves`): the held-out
items have no validation interactions, so a setting for added items is chosen on the selection
half and reported on the report half. `--valid` also ranks the validation split with the added
items in the catalogue (their cost to the trained items' validation recall).

  python bench/cold_levers.py --workdir=runs/phones-cpu-cold \\
      --placements=indexing,neighbours@10 --scores=sibling_max --widths=0 --weights=2 \\
      --priors=0:1:1 --valid --out=bench/results/cold_levers_phones.json
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
from colarec_jax.data.dataset import VALID
from colarec_jax.newitems import coldstart
from colarec_jax.run import parts as parts_lib
from colarec_jax.ranking.ranker import rescored


HALVES = (" (selection half)", " (report half)")
NO_ADDED = "colarec as trained, no added items"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a finished run of the cold-start protocol")
  p.add_argument("--placements", default="",
                 help="eval.new_item_placement values, each 'name' or 'name@k' (k: "
                 "eval.placement_neighbours); default the run's")
  p.add_argument("--scores", default="model,sibling_mean,sibling_max")
  p.add_argument("--widths", default="0,1024")
  p.add_argument("--candidates", default="0", help="eval.added_candidates values")
  p.add_argument("--weights", default="0,0.5")
  p.add_argument("--priors", default="none",
                 help="eval.code_prior values, ';'-separated, each 'none' or weights joined by ':'")
  p.add_argument("--valid", action="store_true",
                 help="also the validation split's recall with the added items in the catalogue")
  p.add_argument("--out", required=True)
  a = p.parse_args()
  priors = common.parse_priors(p, "--priors", a.priors)
  settings = Settings.parse(stored.load(a.workdir))
  placements = [(name, int(k) if k else settings.eval.placement_neighbours)
                for name, _, k in (text.partition("@") for text in a.placements.split(",") if text)]
  rows, speed, valid, out = {}, {}, {}, {}
  for placement, neighbours in placements or [(settings.eval.new_item_placement,
                                               settings.eval.placement_neighbours)]:
    placed = dataclasses.replace(settings, eval=dataclasses.replace(
        settings.eval, new_item_placement=placement, placement_neighbours=neighbours))
    test = coldstart.cold_test(placed, a.workdir)
    halves = test.halves()
    parts, k = test.parts, max(settings.eval.ks)
    label = placement + (f"@{neighbours}" if placement == "neighbours" else "")

    def add(name, lists):
      rows.update(test.rows(name, lists))
      for half, items in zip(HALVES, halves):
        rows[name + coldstart.COLD + half] = test.rows(name, lists, items=items)[
            name + coldstart.COLD]

    if not rows:
      ds = parts.prepared.dataset
      add(coldstart.CONTENT, coldstart.content_ranking(
          [ds.content(i) for i in range(parts.gids.num_items + 1)],
          [np.asarray(parts.builder.eval_history(u), np.int64) for u in test.users],
          test.exclude, k))
      out.update(held_out_items=test.held_out, indexed=test.indexed,
                 held_out_interactions=test.interactions,
                 halves=[len(h) for h in halves])
      if a.valid:  # the same ranking without the added items
        base = parts_lib.build(settings, a.workdir)
        valid[NO_ADDED] = base.ranker(test.params).evaluate(*base.eval_data(VALID)).to_json()
    inputs = parts.builder.eval_inputs(test.users)
    users_h, items_h = None, None
    for score, width, m, prior in itertools.product(a.scores.split(","),
                                                    map(int, a.widths.split(",")),
                                                    map(int, a.candidates.split(",")), priors):
      ev = dataclasses.replace(parts.eval, new_item_score=score, search_width=width,
                               added_candidates=m, encoder_weight=0.0, code_prior=prior)
      ranker = parts.with_eval(ev).ranker(test.params)
      if users_h is None:
        users_h, items_h = ranker.encode(inputs), ranker.item_encodings()
      start = time.perf_counter()
      items, scores = ranker.ranked(inputs, test.exclude, ranker.longest)
      setting = (f"{label}, {score}, width {width}" + (f", {m} added candidates" if m else "")
                 + (f", prior {common.prior_label(prior)}" if prior else ""))
      speed[setting] = len(items) / (time.perf_counter() - start)
      for weight in map(float, a.weights.split(",")):
        lists = rescored(items, scores, users_h, items_h, weight)[0] if weight else items
        name = f"colarec {setting}, weight {weight:g}"
        add(name, lists[:, :k])
        if a.valid:
          scorer = parts.with_eval(dataclasses.replace(ev, encoder_weight=weight)).ranker(
              test.params)
          valid[name] = scorer.evaluate(*parts.eval_data(VALID)).to_json()
        print(f"{name}: recall@20 {rows[name].overall['recall@20']:.4f}, cold items "
              + ", ".join(f"{rows[name + coldstart.COLD + h].overall['recall@20']:.4f}{h}"
                          for h in HALVES)
              + (f", valid {valid[name]['overall']['recall@20']:.4f}" if name in valid else ""),
              flush=True)
  out.update(workdir=a.workdir, users_per_second=speed, valid=valid,
             rows={n: r.to_json() for n, r in rows.items()})
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(out, f, indent=1)
  print(f"{'row':<90} {'R@20':>7} {'N@20':>7}")
  for name, report in rows.items():
    print(f"{name:<90} {report.overall['recall@20']:7.4f} {report.overall['ndcg@20']:7.4f}")


if __name__ == "__main__":
  main()
