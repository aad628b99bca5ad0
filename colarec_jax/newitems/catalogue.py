"""The catalogue a trained run ranks: its trained items, plus those added after training.

Items added by `--mode=add_items` live in `<workdir>/new_items.npz` (`gid.overlay`), tied to the
trained run's fingerprint. `with_new_items` gives the run's parts that also rank them: they join
the dataset's item table, the GID table and trie, and the inputs (with the unknown-item token in
their ID slot). The model and its checkpoints are unchanged; no interaction involves them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from colarec_jax.gid import overlay
from colarec_jax.run.parts import RunParts


def load(parts: RunParts, workdir: str) -> overlay.NewItems | None:
  """The items added to `workdir` after training, or None (a file of another trained run is
  refused by `overlay.NewItems.load`)."""
  return overlay.NewItems.load(workdir, parts.fingerprint)


def with_new_items(parts: RunParts, new: overlay.NewItems | None) -> RunParts:
  """`parts` that also rank `new` (items num_items + 1, ...); `parts` itself when none."""
  if not new:
    return parts
  ds = parts.prepared.dataset
  dataset = dataclasses.replace(ds, item_ids=np.concatenate([ds.item_ids, new.item_ids]),
                                item_text=np.concatenate([ds.item_text, new.item_text]))
  prepared = dataclasses.replace(
      parts.prepared, dataset=dataset,
      item_tokens=np.concatenate([parts.prepared.item_tokens, new.tokens]),
      item_token_len=np.concatenate([parts.prepared.item_token_len, new.token_len]))
  gids = overlay.extend(parts.gids, new.codes)
  return dataclasses.replace(
      parts, prepared=prepared, gids=gids, _eval_data={},
      builder=parts.builder.with_items(new.tokens, prepared.pad_id, gids)).with_eval(parts.eval)
