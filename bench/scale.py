"""Benchmark: how each stage's time and peak memory grow with the catalogue, on synthetic data.

For each catalogue size (default 10k, 100k and 1M items, ~10 interactions per item, users to
match: `colarec_jax/data/synthetic.py`) every stage runs in its own process, one after the other
(`configs/synthetic.py:cpu`: the cpu budget's model, K=32 and the smallest depth that holds the
catalogue, l=3 up to 32,768 items and l=4 above):

  generate        draw the dataset and write its atomic files
  prepare         read, split 8:1:1, train the tokenizer, tokenise (`--mode=prepare`'s stage)
  lightgcn_epoch  one LightGCN epoch over the training interactions (batches of cf.batch_size)
  lightgcn_eval   its full-ranking evaluation of every validation user against every item
  gid             hierarchical balanced k-means of the epoch's item embeddings (gid.n_init)
  train_step      ColaRec train steps after one compiling step (time: one step), a checkpoint
  recommender     `Recommender.load` of that checkpoint (its resident memory), then beam search
                  of 1,024 users (time: those users)
  export          `export.export` of 512 users to .jsonl (time: those users)

A stage that runs past --cap seconds stops itself where it can (the epoch, the evaluation) and
reports the rate it reached and the time the whole would take at that rate ("extrapolated");
one that cannot (the GID build) is killed at twice the cap plus 5 minutes and reported as not
finished. Each process reports its own peak
resident memory (ru_maxrss) and the resident memory after its imports, before the stage's work.
ColaRec's stages use a random tree of the same shape as the k-means one (gid.source=random): their
cost depends on K and l, not on which item has which code.

  python bench/scale.py [--sizes 10000,100000,1000000] [--cap 1200] [--root /tmp/colarec-scale]

Prints a table and the fitted growth exponent of each stage (the slope of log time against log
items, over the sizes that ran), writes JSON (default bench/results/scale.json) and a log-log plot
beside it (scale.png).
"""

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

from common import REPO, write_json

STAGES = ("generate", "prepare", "lightgcn_epoch", "lightgcn_eval", "gid", "train_step",
          "recommender", "export")
TRAIN_STEPS = 10  # timed ColaRec steps after the compiling one
BEAM_USERS = 1024  # users ranked by the recommender stage (after a warm-up batch)
EXPORT_USERS = 512  # users exported


def rss_mb() -> float:
  """This process's peak resident memory so far, MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def settings_for(folder: str, overrides: dict):
  from configs import synthetic
  from colarec_jax.config.settings import Settings
  config = synthetic.get_config("cpu")
  config.data.dir = os.path.join(folder, "data")
  config.gid.source = "random"
  config.cf.epochs = 1
  config.eval.valid_sample = 0  # the evaluation stage ranks every validation user
  for key, value in overrides.items():
    section, name = key.rsplit(".", 1)
    config.update_from_flattened_dict({key: type(config[section][name])(value)})
  return Settings.parse(config)


def child(stage: str, size: int, folder: str, cap: float, overrides: dict) -> dict:
  """Runs one stage of one size in this process; returns its JSON row."""
  sys.path.insert(0, REPO)
  import jax
  import numpy as np
  from colarec_jax.runtime import allocator
  allocator.keep_freed_memory()  # as the CLI does
  from colarec_jax.data import prepare as prepare_lib
  from colarec_jax.data import synthetic
  workdir = os.path.join(folder, "work")
  settings = settings_for(folder, overrides)
  out = {"stage": stage, "items": size, "finished": True}
  jax.numpy.zeros(1).block_until_ready()  # the backend's own memory is part of the baseline
  out["baseline_rss_mb"] = current_rss_mb()
  start = time.perf_counter()

  if stage == "generate":
    data = synthetic.generate(synthetic.Shape(size), seed=0)
    synthetic.write_atomic(data, settings.data.dir)
    out["dataset"] = synthetic.describe(data)

  elif stage == "prepare":
    shutil.rmtree(os.path.join(workdir, "data"), ignore_errors=True)
    prepared = prepare_lib.prepare(settings.data, workdir, log=lambda *_: None)
    out["users"] = prepared.dataset.num_users
    out["interactions"] = prepared.dataset.num_interactions

  elif stage == "lightgcn_epoch":
    from colarec_jax.cf import lightgcn
    from colarec_jax.cf.train import epoch_batches
    from colarec_jax.data.dataset import TRAIN
    from colarec_jax.data.sampling import NegativeSampler
    prepared = prepare_lib.prepare(settings.data, workdir, log=lambda *_: None, read_only=True)
    start = time.perf_counter()
    ds, cfg = prepared.dataset, settings.cf
    users, items = prepared.rows(TRAIN)
    graph = lightgcn.build_graph(users, items, ds.num_users, ds.num_items)
    optimizer = lightgcn.make_optimizer(cfg)
    params = lightgcn.init_params(jax.random.key(0), ds.num_users, ds.num_items,
                                  cfg.embedding_dim)
    opt_state = optimizer.init(params)
    step = lightgcn.make_train_step(cfg, optimizer, ds.num_users, None)
    sampler = NegativeSampler(users, items, ds.num_items)
    batch_size = lightgcn.batch_size_for(cfg, len(users))
    total = -(-len(users) // batch_size)
    done, first = 0, None
    for batch in epoch_batches(users, items, sampler, batch_size, np.random.default_rng(0)):
      params, opt_state, metrics = step(params, opt_state, graph, batch)
      done += 1
      if first is None:
        jax.block_until_ready(metrics)
        first = time.perf_counter()
        out["setup_and_first_step_seconds"] = first - start
      elif time.perf_counter() - start > cap:
        break
    jax.block_until_ready(params)
    final = lightgcn.final_embeddings(params, graph, num_layers=cfg.num_layers,
                                      num_users=ds.num_users)
    np.save(os.path.join(folder, "item_embeddings.npy"), np.asarray(final[1])[1:])
    np.save(os.path.join(folder, "user_embeddings.npy"), np.asarray(final[0]))
    rate = (done - 1) / max(time.perf_counter() - first, 1e-9) if done > 1 else 0.0
    out.update(steps=done, steps_total=total, batch_size=batch_size, rate=rate,
               unit="steps/s", finished=done == total)
    if done < total:
      out["extrapolated_seconds"] = out["setup_and_first_step_seconds"] + (total - 1) / rate

  elif stage == "lightgcn_eval":
    from colarec_jax import evaluate
    from colarec_jax.cf.train import embedding_scores
    from colarec_jax.data.dataset import VALID
    prepared = prepare_lib.prepare(settings.data, workdir, log=lambda *_: None, read_only=True)
    start = time.perf_counter()
    score_fn = embedding_scores(np.load(os.path.join(folder, "user_embeddings.npy")),
                                np.concatenate([np.zeros((1, settings.cf.embedding_dim),
                                                         np.float32),
                                                np.load(os.path.join(folder,
                                                                     "item_embeddings.npy"))]))
    split = evaluate.EvalSplit.build(prepared, VALID, settings.eval)
    users, done = split.users, 0
    chunk = 8 * settings.eval.batch_size
    first = None
    while done < len(users):
      evaluate.top_k_items(score_fn, users[done:done + chunk], split.exclude,
                           prepared.dataset.num_items, max(settings.eval.ks),
                           settings.eval.batch_size)
      done = min(done + chunk, len(users))
      if first is None:
        first = (time.perf_counter(), done)
        out["setup_and_first_chunk_seconds"] = first[0] - start
      if time.perf_counter() - start > cap:
        break
    rate = ((done - first[1]) / (time.perf_counter() - first[0]) if done > first[1]
            else first[1] / out["setup_and_first_chunk_seconds"])
    out.update(users=done, users_total=len(users), rate=rate, unit="users/s",
               finished=done == len(users))
    if done < len(users):
      out["extrapolated_seconds"] = (out["setup_and_first_chunk_seconds"]
                                     + (len(users) - first[1]) / rate)

  elif stage == "gid":
    from colarec_jax.gid import builder
    x = np.load(os.path.join(folder, "item_embeddings.npy"))
    start = time.perf_counter()
    depth = builder.fitting_depth(len(x), settings.gid.branching)
    codes = builder.hierarchical_codes(x, branching=settings.gid.branching, depth=depth,
                                       key=jax.random.key(0), n_init=settings.gid.n_init,
                                       max_iters=settings.gid.max_iters)
    out.update(branching=settings.gid.branching, depth=depth, n_init=settings.gid.n_init,
               unique=len(np.unique(codes, axis=0)) == len(codes))

  elif stage == "train_step":
    from colarec_jax.config import stored
    from colarec_jax.run import parts as parts_lib
    from colarec_jax.run.store import state_arrays
    from colarec_jax.runtime import checkpoint
    from colarec_jax.runtime.progress import Progress
    from colarec_jax.training.loop import epoch_batches, prefetch
    from colarec_jax.training.state import initial_state
    from colarec_jax.training.step import create_optimizer, make_train_step
    shutil.rmtree(os.path.join(workdir, "colarec"), ignore_errors=True)
    parts = parts_lib.build(settings, workdir, log=lambda *_: None)
    state = initial_state(parts, settings, workdir, create_optimizer(settings.optim))
    step = make_train_step(parts.model, settings.loss, parts.mesh)
    key = jax.random.key(0)
    out["setup_seconds"] = time.perf_counter() - start
    times = []
    for batch in prefetch(epoch_batches(parts, 0, settings.optim.batch_size, 0,
                                        TRAIN_STEPS + 1)):
      began = time.perf_counter()
      state, metrics = step(state, batch, key)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - began)
    per_step = float(np.median(times[1:]))
    ckpts = parts_lib.checkpoints(parts, settings, workdir)
    run = Progress(epoch=1, best_metric=0.0, best_epoch=1)
    manager = ckpts.manager(checkpoint.BEST)
    checkpoint.save(manager, 1, state_arrays(state), ckpts.meta(run), score=0.0)
    manager.wait_until_finished()
    stored.save(settings.full, workdir)
    out.update(depth=parts.gids.depth, compile_step_seconds=times[0], seconds=per_step,
               rate=settings.optim.batch_size / per_step, unit="examples/s",
               item_table_mb=parts.model.config.num_items * settings.model.d_model * 4 / 2**20,
               params=int(sum(x.size for x in jax.tree.leaves(state.params))))

  elif stage == "recommender":
    from colarec_jax.serving.recommender import Recommender
    rec = Recommender.load(workdir)
    out["load_seconds"] = time.perf_counter() - start
    out["loaded_rss_mb"] = current_rss_mb()
    ids = rec.catalog.dataset.user_ids[1:]
    sample = np.random.default_rng(0).choice(len(ids), BEAM_USERS + rec.batch_size,
                                             replace=False)  # (the first batch: unused)
    queries = [rec.query(user=str(ids[u])) for u in sample]
    timed = queries[rec.batch_size:]
    rec.rank(timed)  # compile (one search shape per call), and warm the caches
    began = time.perf_counter()
    rec.rank(timed)
    seconds = time.perf_counter() - began
    out.update(seconds=seconds, rate=BEAM_USERS / seconds, unit="users/s",
               beam=rec.parts.trie.beam_size, batch_size=rec.batch_size)

  elif stage == "export":
    from colarec_jax.serving import export
    from colarec_jax.serving.recommender import Recommender
    rec = Recommender.load(workdir)
    ids = rec.catalog.dataset.user_ids[1:]
    users = [str(ids[u]) for u in np.random.default_rng(1).choice(len(ids), EXPORT_USERS,
                                                                  replace=False)]
    path = os.path.join(folder, "export.jsonl")
    export.export(rec, path, users=users, progress_bar=False,
                  log=lambda *_: None)  # compile (one search shape per call), warm the caches
    start = time.perf_counter()
    result = export.export(rec, path, users=users, progress_bar=False, log=lambda *_: None)
    out.update(rate=result["users_per_second"], unit="users/s", users=len(users))
  else:
    raise SystemExit(f"unknown stage {stage!r}")

  out.setdefault("seconds", time.perf_counter() - start)
  out["peak_rss_mb"] = rss_mb()
  return out


def fit_exponent(sizes: list[float], seconds: list[float]) -> float | None:
  """Least-squares slope of log(seconds) against log(sizes) (None with fewer than 2 points)."""
  points = [(math.log(n), math.log(s)) for n, s in zip(sizes, seconds) if s and s > 0]
  if len(points) < 2:
    return None
  mx = sum(p[0] for p in points) / len(points)
  my = sum(p[1] for p in points) / len(points)
  return (sum((x - mx) * (y - my) for x, y in points)
          / sum((x - mx) ** 2 for x, _ in points))


def stage_seconds(row: dict) -> float | None:
  """The stage's time: measured, or extrapolated from its rate when capped."""
  if row.get("killed"):
    return None
  return row.get("extrapolated_seconds", row["seconds"])


def run_stage(stage: str, size: int, folder: str, cap: float, sets: list[str]) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--child", stage, "--size", str(size),
         "--root", os.path.dirname(folder), "--cap", str(cap)] + [f"--set={s}" for s in sets]
  began = time.perf_counter()
  try:
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=2 * cap + 300)
  except subprocess.TimeoutExpired:
    return {"stage": stage, "items": size, "finished": False, "killed": True,
            "seconds": time.perf_counter() - began}
  if result.returncode:
    raise SystemExit(f"stage {stage} at {size} items failed:\n{result.stderr[-3000:]}")
  row = json.loads(result.stdout.strip().splitlines()[-1])
  row["process_seconds"] = time.perf_counter() - began
  return row


def table(rows: list[dict], sizes: list[int]) -> str:
  header = (f"{'stage':<15} " + " ".join(f"{f'{n:,} items':>26}" for n in sizes)
            + f" {'time exp.':>9} {'mem exp.':>8}")
  lines = [header, f"{'':<15} " + " ".join(f"{'s':>9} {'peak MB':>8} {'rate':>7}"
                                           for _ in sizes), "-" * len(header)]
  for stage in STAGES:
    cells, xs, ts, ms = [], [], [], []
    for n in sizes:
      row = next((r for r in rows if r["stage"] == stage and r["items"] == n), None)
      if row is None:
        cells.append(f"{'':>26}")
        continue
      seconds = stage_seconds(row)
      mark = "" if row["finished"] else ("*" if seconds else "!")
      text = f"{seconds:.1f}{mark}" if seconds else "killed"
      rate = f"{row['rate']:.3g}" if row.get("rate") else ""
      cells.append(f"{text:>9} {row.get('peak_rss_mb', 0):>8.0f} {rate:>7}")
      if seconds:
        xs.append(n)
        ts.append(seconds)
        ms.append(row.get("peak_rss_mb", 0) - row.get("baseline_rss_mb", 0))
    t_exp, m_exp = fit_exponent(xs, ts), fit_exponent(xs, ms)
    lines.append(f"{stage:<15} " + " ".join(cells)
                 + f" {t_exp if t_exp is not None else float('nan'):>9.2f}"
                 + f" {m_exp if m_exp is not None else float('nan'):>8.2f}")
  lines.append("* capped: time extrapolated from the rate reached; rate units: lightgcn_epoch "
               "steps/s, lightgcn_eval users/s, train_step examples/s, recommender and export "
               "users/s. mem exp.: of peak minus the process's baseline.")
  return "\n".join(lines)


def plot(rows: list[dict], sizes: list[int], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  for stage in STAGES:
    points = [(r["items"], stage_seconds(r), r.get("peak_rss_mb", 0) - r.get("baseline_rss_mb", 0))
              for r in rows if r["stage"] == stage and stage_seconds(r)]
    if not points:
      continue
    xs, ts, ms = zip(*sorted(points))
    exp = fit_exponent(xs, ts)
    axes[0].plot(xs, ts, "o-", label=f"{stage} (slope {exp:.2f})" if exp else stage)
    axes[1].plot(xs, [max(m, 1) for m in ms], "o-", label=stage)
  for ax, ylabel in zip(axes, ("seconds (capped stages extrapolated)",
                               "peak resident MB above the process baseline")):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalogue items")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle("colarec-jax stage cost against catalogue size (synthetic, 2-core CPU)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="10000,100000,1000000")
  parser.add_argument("--stages", default=",".join(STAGES))
  parser.add_argument("--cap", type=float, default=1200.0, help="seconds per stage")
  parser.add_argument("--root", default="/tmp/colarec-scale")
  parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "scale.json"))
  parser.add_argument("--merge", action="store_true",
                      help="keep the rows of --out for the sizes and stages not run now")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="a config override for every stage, e.g. cf.batch_size=2048")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  overrides = dict(kv.split("=", 1) for kv in args.set)
  if args.child:
    print(json.dumps(child(args.child, args.size, os.path.join(args.root, str(args.size)),
                           args.cap, overrides)))
    return
  sizes = [int(s) for s in args.sizes.split(",")]
  stages = args.stages.split(",")
  rows = []
  if args.merge and os.path.exists(args.out):
    with open(args.out) as f:
      rows = [r for r in json.load(f)["rows"]
              if not (r["items"] in sizes and r["stage"] in stages)]
  for size in sizes:
    for stage in STAGES:
      if stage not in stages:
        continue
      row = run_stage(stage, size, os.path.join(args.root, str(size)), args.cap, args.set)
      if args.set:
        row["overrides"] = overrides
      print(json.dumps(row), flush=True)
      rows.append(row)
      text = save(rows, args)  # after every stage: a long run stopped midway keeps its rows
  print(text)
  plot(rows, sorted({r["items"] for r in rows}), os.path.splitext(args.out)[0] + ".png")


def save(rows: list[dict], args) -> str:
  """Writes the results file of `rows`; returns its table."""
  sizes = sorted({r["items"] for r in rows})
  text = table(rows, sizes)
  write_json(args.out, {"cap_seconds": args.cap, "config": "configs/synthetic.py:cpu",
                        "sizes": sizes, "rows": rows, "table": text})
  return text


if __name__ == "__main__":
  main()
