"""TF-IDF over the lowercased whitespace words of item content strings: the text side of the
content GIDs (`gid.sources.content_embeddings`) and of the content baseline (`coldstart`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse


@dataclasses.dataclass(frozen=True)
class Tfidf:
  """A sparse [n, vocab] TF-IDF matrix as (row, column, value) triples sorted by row, then column.

  Values are term counts times the smoothed idf log((1 + n) / (1 + df)) + 1, each row scaled to
  unit length (rows without words stay zero).
  """

  rows: np.ndarray
  cols: np.ndarray
  values: np.ndarray
  shape: tuple[int, int]

  @classmethod
  def fit(cls, texts: list[str]) -> Tfidf:
    vocab: dict[str, int] = {}
    rows, cols = [], []
    for n, text in enumerate(texts):
      for word in text.lower().split():
        rows.append(n)
        cols.append(vocab.setdefault(word, len(vocab)))
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    width = max(1, len(vocab))
    pair, counts = np.unique(rows * width + cols, return_counts=True)
    r, c = pair // width, pair % width
    df = np.bincount(c, minlength=len(vocab))
    values = counts * (np.log((1 + len(texts)) / (1 + df[c])) + 1)
    norms = np.sqrt(np.bincount(r, weights=values ** 2, minlength=len(texts)))
    return cls(r, c, values / np.maximum(norms[r], 1e-12), (len(texts), len(vocab)))

  def matrix(self) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix((self.values, (self.rows, self.cols)), shape=self.shape)
