"""The authors' GID procedure with `k-means-constrained` (the peer of bench/gid.py).

Usage: python bench/kmc_hierarchical.py EMB.npy OUT_CODES.npy K L N_INIT
Level 1 clusters all items with KMeansConstrained(n_clusters=K, size_max=K^(l-1), n_init, max_iter
300); each level-t cluster is split the same way with size_max K^(l-t) (n_clusters = min(K, size));
the last code is the index inside the leaf. Prints one JSON line with the wall time.
"""

import json
import sys
import time

import numpy as np
from k_means_constrained import KMeansConstrained


def main(emb_path, out_path, k, depth, n_init):
  k, depth, n_init = int(k), int(depth), int(n_init)
  x = np.load(emb_path).astype(np.float64)
  n = len(x)
  codes = np.zeros((n, depth), np.int64)
  start = time.perf_counter()
  groups = [np.arange(n)]
  for level in range(1, depth):
    cap = k ** (depth - level)
    next_groups = []
    for members in groups:
      clusters = min(k, len(members))
      if clusters == len(members):
        labels = np.arange(len(members))
      else:
        labels = KMeansConstrained(n_clusters=clusters, size_max=cap, n_init=n_init, max_iter=300,
                                   random_state=0).fit_predict(x[members])
      codes[members, level - 1] = labels + 1
      next_groups.extend(members[labels == c] for c in range(clusters) if (labels == c).any())
    groups = next_groups
  for members in groups:
    codes[members, depth - 1] = np.arange(1, len(members) + 1)
  seconds = time.perf_counter() - start
  np.save(out_path, codes)
  print(json.dumps({"seconds": seconds}))


if __name__ == "__main__":
  main(*sys.argv[1:])
