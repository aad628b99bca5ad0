"""The results report of a study (`runner.py`), computed from its rows alone.

One Markdown table per study: Recall and NDCG at the rows' cut-offs (`eval.ks`, @5/10/20 by
default), overall and on long-tail users, as mean ± standard deviation over seeds, the best mean
of each column in bold, and a paired test of each variant against the reference (the full
model): the two-sided Wilcoxon signed-rank test over test users of NDCG at the largest cut-off
(each user's value averaged over the seeds). Figures: the valid selection metric (`eval.metric`)
against training examples seen (ColaRec variants), and that NDCG overall against long-tail.
The columns and metrics are read from the rows, so a study with other `eval.ks` reports its own.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

# Rows written before they recorded their selection metric chose on eval.metric's default.
DEFAULT_SELECTION = "ndcg@10"


def metrics(rows: list[dict]) -> list[str]:
  """The rows' test metrics, Recall@k then NDCG@k, k ascending (every row of a study has the
  same: its config's eval.ks)."""
  names = [m for m in rows[0]["test"]["overall"] if "@" in m]
  kinds = list(dict.fromkeys(m.split("@")[0] for m in names))
  return sorted(names, key=lambda m: (kinds.index(m.split("@")[0]), int(m.split("@")[1])))


def selection(rows: list[dict]) -> str:
  """The validation metric the rows' settings are chosen on (`eval.metric`)."""
  return rows[0].get("selection", DEFAULT_SELECTION)


def paired_metric(rows: list[dict]) -> str:
  """The per-user metric of the paired test: NDCG at the largest cut-off."""
  return max((m for m in metrics(rows) if m.startswith("ndcg@")),
             key=lambda m: int(m.split("@")[1]))


def load_rows(folder: str) -> list[dict]:
  """The rows of every finished run under a study folder, in variant then seed order."""
  rows = []
  for path in sorted(glob.glob(os.path.join(folder, "*", "seed*", "row.json"))):
    with open(path) as f:
      row = json.load(f)
    row["_dir"] = os.path.dirname(path)
    rows.append(row)
  return sorted(rows, key=lambda r: (r.get("order", 0), r["seed"]))


def _per_user(row: dict, metric: str) -> dict[int, float]:
  path = os.path.join(row["_dir"], "per_user_test.npz")
  with np.load(path) as z:
    return dict(zip(z["users"].tolist(), z[metric.replace("@", "_at_")].tolist()))


def paired_test(rows: list[dict], reference: list[dict]) -> tuple[float, int] | None:
  """(p-value, users) of the Wilcoxon signed-rank test of per-user NDCG at the largest cut-off,
  seed-averaged."""
  from scipy import stats
  metric = paired_metric(rows)
  mine, theirs = _seed_mean(rows, metric), _seed_mean(reference, metric)
  users = sorted(set(mine) & set(theirs))
  diff = np.array([mine[u] - theirs[u] for u in users])
  if not len(users) or not np.any(diff):
    return None
  return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue), len(users)


def _seed_mean(rows: list[dict], metric: str) -> dict[int, float]:
  values: dict[int, list[float]] = {}
  for row in rows:
    for user, value in _per_user(row, metric).items():
      values.setdefault(user, []).append(value)
  return {u: float(np.mean(v)) for u, v in values.items()}


def summary(rows: list[dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
  """variant -> '<metric>' / 'long-tail <metric>' -> (mean, std over seeds, seeds)."""
  out: dict[str, dict] = {}
  chosen_on, names = selection(rows), metrics(rows)
  for variant in dict.fromkeys(r["variant"] for r in rows):
    mine = [r for r in rows if r["variant"] == variant]
    cells = {}
    if all(chosen_on in r.get("valid", {}).get("overall", {}) for r in mine):
      values = np.array([r["valid"]["overall"][chosen_on] for r in mine])
      cells[f"valid {chosen_on}"] = (float(values.mean()), float(values.std(ddof=1))
                                     if len(values) > 1 else 0.0, len(values))
    for group, prefix in (("overall", ""), ("long_tail", "long-tail ")):
      for metric in names:
        values = np.array([r["test"][group][metric] for r in mine])
        cells[prefix + metric] = (float(values.mean()), float(values.std(ddof=1))
                                  if len(values) > 1 else 0.0, len(values))
    out[variant] = cells
  return out


def table(rows: list[dict], reference: str | None = None) -> str:
  """The study's Markdown table (see the module docstring)."""
  stats, names, chosen_on = summary(rows), metrics(rows), selection(rows)
  columns = names + [f"long-tail {m}" for m in names]
  if all(f"valid {chosen_on}" in cells for cells in stats.values()):
    columns.insert(0, f"valid {chosen_on}")
  best = {c: max(v[c][0] for v in stats.values()) for c in columns}
  header = ["variant", "seeds", *[c.replace("long-tail ", "LT ") for c in columns]]
  if reference:
    header.append(f"p ({paired_metric(rows)}) vs {reference}")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  ref_rows = [r for r in rows if r["variant"] == reference]
  for variant, cells in stats.items():
    out = [variant, str(cells[columns[0]][2])]
    for c in columns:
      mean, std, _ = cells[c]
      text = f"{mean:.4f} ± {std:.4f}"
      out.append(f"**{text}**" if np.isclose(mean, best[c]) else text)
    if reference:
      if variant == reference or not ref_rows:
        out.append("")
      else:
        test = paired_test([r for r in rows if r["variant"] == variant], ref_rows)
        out.append("" if test is None else f"{test[0]:.3g} ({test[1]} users)")
    lines.append("| " + " | ".join(out) + " |")
  return "\n".join(lines)


def write_report(folder: str, reference: str | None = None) -> str | None:
  """Writes `<folder>/report.md`, `rows.jsonl` and the figures from the finished rows."""
  rows = load_rows(folder)
  if not rows:
    return None
  with open(os.path.join(folder, "rows.jsonl"), "w") as f:
    for row in rows:
      f.write(json.dumps({k: v for k, v in row.items() if k != "_dir"}) + "\n")
  first, chosen_on, paired = rows[0], selection(rows), paired_metric(rows)
  name = os.path.basename(os.path.normpath(folder))
  text = [f"# {name} study on {first['dataset']} ({first['budget']} budget)", "",
          f"Test split (and valid {chosen_on}, what settings are chosen on), mean ± standard "
          "deviation over seeds; best mean per column in bold. "
          f"Long-tail (LT) users: {first['long_tail_rule']}.", ""]
  if reference:
    text += [f"p: two-sided Wilcoxon signed-rank test over test users of per-user {paired} "
             f"(averaged over seeds), each variant against {reference}.", ""]
  text += [table(rows, reference), ""]
  walls = {}
  for row in rows:
    walls.setdefault(row["variant"], []).append(row["wall_seconds"])
  text += ["Wall time per run (s): " + "; ".join(f"{v} {np.mean(s):.0f}" for v, s in
                                                  walls.items()), "",
           f"Commits: {', '.join(sorted({r['commit'] for r in rows}))}. Rows: rows.jsonl.", ""]
  reused = [r for r in rows if r.get("reused_from")]
  if reused:
    text += ["Trained once for two studies (the same config): " + "; ".join(
        f"{r['variant']} seed {r['seed']} is {r['reused_from']}" for r in reused) + ".", ""]
  restored = [r for r in rows if r.get("restored_from")]
  if restored:
    text += ["Finished on another machine (restored from the committed rows): " + "; ".join(
        f"{r['variant']} seed {r['seed']} is {r['restored_from']}" for r in restored) + ".", ""]
  text += ["![valid curves](curves.png) ![overall vs long-tail](long_tail.png)", ""]
  report = "\n".join(text)
  with open(os.path.join(folder, "report.md"), "w") as f:
    f.write(report)
  _figures(rows, folder)
  return report


def _figures(rows: list[dict], folder: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for color, variant in enumerate(dict.fromkeys(r["variant"] for r in rows)):
    for n, row in enumerate(r for r in rows if r["variant"] == variant and r["curve"]):
      ax.plot(*zip(*row["curve"]), marker="o", color=f"C{color}", alpha=0.8,
              label=variant if n == 0 else None)
  ax.set(xlabel="training examples seen", ylabel=f"valid {selection(rows)}")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(folder, "curves.png"), dpi=90)
  plt.close(fig)

  stats, paired = summary(rows), paired_metric(rows)
  fig, ax = plt.subplots(figsize=(6, 4))
  names = list(stats)
  x = np.arange(len(names))
  for offset, key, label in ((-0.2, paired, "overall"), (0.2, f"long-tail {paired}", "long-tail")):
    ax.bar(x + offset, [stats[n][key][0] for n in names], 0.4,
           yerr=[stats[n][key][1] for n in names], label=label)
  ax.set_xticks(x, names, rotation=20, ha="right", fontsize=7)
  ax.set(ylabel=f"test {paired}")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(folder, "long_tail.png"), dpi=90)
  plt.close(fig)
