"""Where GIDs come from (config.gid.source), the cached GID stage in `<workdir>/gid/`, and its
report.

  lightgcn  hierarchical balanced k-means on LightGCN item embeddings (the paper's method)
  content   the same clustering on item-text embeddings: TF-IDF over content words, truncated SVD
  random    a balanced random tree (ablation)
  file      codes read from a column of the dataset's item file, e.g. phones' `colarec_gid`
            (the authors' own GIDs), for like-for-like comparisons
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from colarec_jax.data import atomic
from colarec_jax.data.fileio import cached_stage
from colarec_jax.data.prepare import Prepared
from colarec_jax.data.tfidf import Tfidf
from colarec_jax.gid import builder
from colarec_jax.gid.table import GidTable
from colarec_jax.runtime.errors import ConfigError, DataError

SOURCES = ("lightgcn", "content", "random", "file")


@dataclasses.dataclass(frozen=True)
class GidConfig:
  """config.gid, checked."""

  source: str
  branching: int
  depth: int
  n_init: int
  max_iters: int
  seed: int
  file_column: str
  content_dim: int

  @classmethod
  def from_config(cls, gid) -> "GidConfig":
    if gid.source not in SOURCES:
      raise ConfigError("gid.source", f"got {gid.source!r}, expected one of "
                        f"{', '.join(map(repr, SOURCES))}")
    if int(gid.branching) < 2:
      raise ConfigError("gid.branching", f"got {gid.branching}, expected >= 2")
    if int(gid.depth) < 2 and int(gid.depth) != 0:
      raise ConfigError("gid.depth", f"got {gid.depth}, expected >= 2, or 0 for the smallest "
                        "depth whose K^l holds the catalogue")
    for key in ("n_init", "max_iters", "content_dim"):
      if int(gid[key]) < 1:
        raise ConfigError(f"gid.{key}", f"got {gid[key]}, expected >= 1")
    return cls(gid.source, int(gid.branching), int(gid.depth), int(gid.n_init),
               int(gid.max_iters), int(gid.seed), str(gid.file_column), int(gid.content_dim))


def content_embeddings(texts: list[str], dim: int, seed: int = 0) -> np.ndarray:
  """TF-IDF over lowercased whitespace words (`Tfidf`), reduced by a randomized truncated SVD (Halko et
  al.: an oversampled random range, power iterations, then an exact SVD of the small projection).

  Args:
    texts: [n] content strings.
    dim: output dimension (capped by the vocabulary and n).
    seed: seed of the random projection.

  Returns:
    [n, dim'] float32 embeddings (rows scaled by the singular values, as in LSA).
  """
  tfidf = Tfidf.fit(texts)
  r, c, values = tfidf.rows, tfidf.cols, tfidf.values
  words = tfidf.shape[1]
  dim = max(1, min(dim, words, len(texts)))

  by_col = np.argsort(c, kind="stable")

  def segment_sum(segments, contributions, size):  # rows of `contributions` summed by segment
    out = np.zeros((size, contributions.shape[1]))
    present, starts = np.unique(segments, return_index=True)
    if len(present):
      out[present] = np.add.reduceat(contributions, starts, axis=0)
    return out

  def matmul(dense):  # X @ dense, X sparse [n, V] (pairs are sorted by row)
    return segment_sum(r, values[:, None] * dense[c], len(texts))

  def rmatmul(dense):  # X.T @ dense
    return segment_sum(c[by_col], (values[:, None] * dense[r])[by_col], words)

  rng = np.random.default_rng(seed)
  width = min(2 * dim + 16, words, len(texts))  # oversampled range finder
  q = np.linalg.qr(matmul(rng.normal(size=(words, width))))[0]
  for _ in range(4):  # power iterations sharpen the spectrum
    q = np.linalg.qr(matmul(rmatmul(q)))[0]
  # X ~ Q B with B = Q^T X = (X^T Q)^T; the SVD of the small B gives X's leading factors.
  u, s, _ = np.linalg.svd(rmatmul(q).T, full_matrices=False)
  return ((q @ u[:, :dim]) * s[:dim]).astype(np.float32)


def file_codes(prepared: Prepared, data_dir: str, column: str, branching: int,
               depth: int) -> np.ndarray:
  """Codes from a `token_seq` column of `<data.dir>/<name>.item`, in our item order.

  Raises:
    DataError: naming the file and line of an item without codes or with the wrong number.
  """
  path = os.path.join(data_dir, f"{prepared.dataset.name}.item")
  table = atomic.read_atomic(path)
  col = table.index(column, "GID")
  id_col = table.names.index("item_id") if "item_id" in table.names else 0
  by_item = {row[id_col]: (row[col], line) for row, line in zip(table.rows, table.lines)}
  codes = np.zeros((prepared.dataset.num_items, depth), np.int32)
  for n, item in enumerate(prepared.dataset.item_ids[1:].tolist()):
    value, line = by_item.get(item, ("", 1))
    parts = value.split()
    if len(parts) != depth or not all(p.isdigit() for p in parts):
      raise DataError(path, f"item {item!r} has GID {value!r} in column {column!r}; expected "
                      f"{depth} codes in 1..{branching} (config.gid.depth)", line)
    codes[n] = [int(p) for p in parts]
  return codes


def _embeddings(gid_cfg: GidConfig, prepared: Prepared, lightgcn_items) -> np.ndarray | None:
  ds = prepared.dataset
  if gid_cfg.source == "lightgcn":
    return np.asarray(lightgcn_items())[1:]
  if gid_cfg.source == "content":
    return content_embeddings([ds.content(i) for i in range(1, ds.num_items + 1)],
                              gid_cfg.content_dim, gid_cfg.seed)
  return None


def stage_key(data_key: dict, gid_cfg: GidConfig, lightgcn_key: dict) -> dict:
  """What the GIDs depend on: the prepared data, config.gid, and LightGCN when it is the source."""
  key = {"data": data_key, "gid": dataclasses.asdict(gid_cfg)}
  if gid_cfg.source == "lightgcn":
    key["lightgcn"] = lightgcn_key
  return key


def build_gid_table(prepared: Prepared, workdir: str, gid_cfg: GidConfig, *, lightgcn_items,
                    lightgcn_key: dict, data_dir: str = "", log=print,
                    read_only: bool = False) -> GidTable:
  """The GID table of `gid_cfg`, built or reused from `<workdir>/gid/`.

  Args:
    prepared: the prepared dataset.
    workdir: the run's folder.
    gid_cfg: config.gid, checked.
    lightgcn_items: callable returning LightGCN item embeddings [num_items + 1, d] (called only
      for source 'lightgcn', when the GIDs are built; it trains or reuses LightGCN).
    lightgcn_key: what those embeddings depend on (`cf.train.result_key`); part of the stage's
      key for source 'lightgcn', so retrained embeddings give new GIDs.
    data_dir: config.data.dir (source 'file' reads `<data_dir>/<name>.item`).
    log: where the summary line goes.
    read_only: use the folder as it is or fail (see `fileio.cached_stage`); never build.
  """
  # gid.depth=0: the smallest depth that holds the catalogue, keyed as that depth (so an explicit
  # gid.depth of the same value reuses the folder).
  gid_cfg = dataclasses.replace(gid_cfg, depth=builder.resolve_depth(
      prepared.dataset.num_items, gid_cfg.branching, gid_cfg.depth))
  builder.check_capacity(prepared.dataset.num_items, gid_cfg.branching, gid_cfg.depth)
  key = stage_key(prepared.manifest["key"], gid_cfg, lightgcn_key)

  def build(staging):
    embeddings = _embeddings(gid_cfg, prepared, lightgcn_items)
    if embeddings is not None:
      codes = builder.hierarchical_codes(
          embeddings, branching=gid_cfg.branching, depth=gid_cfg.depth, key=jax.random.key(gid_cfg.seed),
          n_init=gid_cfg.n_init, max_iters=gid_cfg.max_iters)
    elif gid_cfg.source == "random":
      codes = builder.random_codes(prepared.dataset.num_items, branching=gid_cfg.branching,
                                   depth=gid_cfg.depth, seed=gid_cfg.seed)
    else:
      codes = file_codes(prepared, data_dir, gid_cfg.file_column, gid_cfg.branching, gid_cfg.depth)
    table = GidTable.from_codes(codes, gid_cfg.branching, source=f"gid.source={gid_cfg.source}")
    report = tree_report(table, embeddings, gid_cfg.source)
    table.save(os.path.join(staging, "gids.npz"))
    plot_balance(report, os.path.join(staging, "tree_balance.png"))
    return {"summary": summary_line(report), "report": report}

  def load(directory, manifest):
    log(manifest["summary"])
    return GidTable.load(os.path.join(directory, "gids.npz"))

  return cached_stage(os.path.join(workdir, "gid"), key, build, load, what="GIDs", log=log,
                      read_only=read_only)


def tree_report(table: GidTable, embeddings: np.ndarray | None, source: str) -> dict:
  """Per level: cluster sizes (histogram), within-cluster squared error; leaf fill."""
  codes = table.codes[1:]
  levels = []
  for level in range(1, table.depth):
    prefix = np.unique(codes[:, :level], axis=0, return_counts=True)[1]
    levels.append({
        "level": level, "clusters": int(len(prefix)), "min_size": int(prefix.min()),
        "max_size": int(prefix.max()), "mean_size": float(prefix.mean()),
        "capacity": table.branching ** (table.depth - level),
        "size_histogram": np.bincount(prefix).tolist(),
        "squared_error": (None if embeddings is None
                          else builder.within_cluster_error(embeddings, codes, level)),
    })
  leaves = levels[-1]
  return {"source": source, "items": table.num_items, "branching": table.branching,
          "depth": table.depth, "levels": levels,
          "leaf_fill": leaves["mean_size"] / table.branching}


def summary_line(report: dict) -> str:
  parts = [f"GIDs ({report['source']}, K={report['branching']}, l={report['depth']}): "
           f"{report['items']} items"]
  for level in report["levels"]:
    error = ("" if level["squared_error"] is None
             else f", squared error {level['squared_error']:.4g}")
    parts.append(f"level {level['level']}: {level['clusters']} clusters of "
                 f"{level['min_size']}-{level['max_size']} items (cap {level['capacity']})"
                 f"{error}")
  parts.append(f"leaf fill {100 * report['leaf_fill']:.0f}%")
  return "; ".join(parts)


def plot_balance(report: dict, path: str) -> None:
  """One histogram of cluster sizes per level, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  levels = report["levels"]
  fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 3.2), squeeze=False)
  for ax, level in zip(axes[0], levels):
    hist = np.asarray(level["size_histogram"])
    sizes = np.flatnonzero(hist)
    ax.bar(sizes, hist[sizes], width=max(1, (sizes.max() - sizes.min()) / 40 if len(sizes) else 1))
    ax.axvline(level["capacity"], color="red", linestyle="--", label="capacity")
    ax.set_title(f"level {level['level']}: {level['clusters']} clusters")
    ax.set_xlabel("items per cluster")
    ax.set_ylabel("clusters")
    ax.legend()
  fig.suptitle(f"GID tree balance ({report['source']}, K={report['branching']}, "
               f"l={report['depth']}, {report['items']} items)")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
