"""`--mode=import_official`: the authors' trained model and data folder -> a colarec-jax workdir.

Their `model_train.py` leaves `epochN/` folders (`config.json` + `pytorch_model.bin`, written by
`save_pretrained`) and reads a data folder of `corpus_512.json` (each item's `atom_id`, content
string and GID `cid`) and `train_time_inter.csv` / `valid_inter.csv` / `test_inter.csv`. The
import turns both into a workdir that evaluates, recommends, exports and serves like one we
trained:

  1. their data as atomic files in `<workdir>/official_data/` (the content string whole, the GID
     as the `gid.source=file` column, their split as given, rows in their files' order), read
     with `data.time_ties='quicksort'` so that each user's history is in the order their pandas
     sort gives it, ties included;
  2. the data and GID stages over those files, with the tokenizer given (`--tokenizer`: theirs is
     t5-small's vocabulary, as a tokenizer.json);
  3. their tensors mapped onto the model (`official.weights`), saved as the checkpoint of their
     epoch, both `latest` and `best` (scored on validation);
  4. the config stored with it: `--config` with the keys the checkpoint and their code fix (sizes,
     GIDs, their input layout: no uad slot on i and i-, the mid-item token cut, data.max_item_tokens
     = their max_info_len - 1, their test protocol that keeps validation items in rankings, and
     their loss forms, should training continue from it).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import jax
import ml_collections
import numpy as np

from colarec_jax.config import stored
from colarec_jax.config.settings import Settings
from colarec_jax.data.dataset import VALID
from colarec_jax.official import weights
from colarec_jax.run import parts as parts_lib
from colarec_jax.run import stages
from colarec_jax.runtime import checkpoint
from colarec_jax.runtime.errors import DataError, UsageError
from colarec_jax.runtime.progress import Progress
from colarec_jax.run.store import state_arrays
from colarec_jax.training.state import initial_state
from colarec_jax.training.loop import run_optimizer

NAME = "official"  # the dataset name of the written atomic files
DATA_DIR = "official_data"
CORPUS, SPLITS = "corpus_512.json", (("train", "train_time_inter.csv"),
                                      ("valid", "valid_inter.csv"), ("test", "test_inter.csv"))
GID_COLUMN = "colarec_gid"


def _read_corpus(folder: str) -> dict[int, tuple[str, list[int]]]:
  """{item id: (content string, GID codes)} of their corpus_512.json."""
  path = os.path.join(folder, CORPUS)
  try:
    with open(path) as f:
      corpus = json.load(f)
  except FileNotFoundError:
    raise UsageError("official_data", f"{path} not found; expected the authors' data folder "
                     f"({CORPUS} and {', '.join(n for _, n in SPLITS)})") from None
  except (OSError, ValueError) as e:
    raise DataError(path, f"not readable JSON ({e})") from None
  if not isinstance(corpus, dict):
    raise DataError(path, f"holds a JSON {type(corpus).__name__}; expected an object of items")
  out = {}
  for key, value in corpus.items():
    if not (isinstance(value, dict) and {"content", "cid"} <= set(value)):
      raise DataError(path, f"item {key!r} lacks 'content' or 'cid'")
    cid = value["cid"]
    codes = ([int(c) for c in re.findall(r"\d+", cid)] if isinstance(cid, str)
             else [int(c) for c in cid])
    try:
      item = int(value.get("atom_id", key))
    except (TypeError, ValueError):
      raise DataError(path, f"item {key!r} has atom_id {value.get('atom_id')!r}; expected an "
                      "integer") from None
    out[item] = (str(value["content"]), codes)
  return out


def _read_csv(folder: str, name: str, with_time: bool) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
  """(users, items, times) of one of their CSVs, in file order (times 0 without a time column)."""
  path = os.path.join(folder, name)
  try:
    f = open(path, newline="")
  except FileNotFoundError:
    raise UsageError("official_data", f"{path} not found; the authors' data folder has "
                     f"{', '.join(n for _, n in SPLITS)}") from None
  with f:
    reader = csv.reader(f)
    header = next(reader, [])
    need = ["user_id", "item_id"] + (["time"] if with_time else [])
    missing = [c for c in need if c not in header]
    if missing:
      raise DataError(path, f"no column {missing[0]!r} in the header {header}", 1)
    cols = [header.index(c) for c in need]
    rows = []
    for line, row in enumerate(reader, start=2):
      try:
        rows.append([int(float(row[c])) for c in cols])
      except (ValueError, IndexError):
        raise DataError(path, f"expected integer {', '.join(need)}, got {row}", line) from None
  table = np.asarray(rows, np.int64).reshape(-1, len(need))
  times = table[:, 2] if with_time else np.zeros(len(table), np.int64)
  return table[:, 0], table[:, 1], times


def write_atomic(folder: str, out: str, depth: int) -> dict[str, int]:
  """Their data folder as `<out>/official.{item,train.inter,valid.inter,test.inter}`.

  Returns:
    {'items', 'users', 'unused_items', 'respaced_items'}: counts (unused: corpus items without
    any interaction, which colarec-jax's catalogue leaves out; respaced: content strings whose
    tabs or line breaks became spaces).
  """
  corpus = _read_corpus(folder)
  bad = [item for item, (_, codes) in corpus.items() if len(codes) != depth]
  if bad:
    raise DataError(os.path.join(folder, CORPUS), f"item {bad[0]} has GID {corpus[bad[0]][1]}; "
                    f"the checkpoint's config.json has code_length={depth}")
  os.makedirs(out, exist_ok=True)
  seen, users_all = set(), set()
  for split, name in SPLITS:
    users, items, times = _read_csv(folder, name, with_time=split == "train")
    unknown = sorted(set(items.tolist()) - set(corpus))
    if unknown:
      raise DataError(os.path.join(folder, name), f"item {unknown[0]} is not in {CORPUS}")
    with open(os.path.join(out, f"{NAME}.{split}.inter"), "w") as f:  # in their file order
      f.write("user_id:token\titem_id:token\ttimestamp:float\n")
      for user, item, time in zip(users.tolist(), items.tolist(), times.tolist()):
        f.write(f"{user}\t{item}\t{time}\n")
    seen.update(items.tolist())
    users_all.update(users.tolist())
  changed = 0
  with open(os.path.join(out, f"{NAME}.item"), "w") as f:
    f.write(f"item_id:token\tcontent:token_seq\t{GID_COLUMN}:token_seq\n")
    for item in sorted(corpus):
      content, codes = corpus[item]
      # Verbatim (double spaces change the tokens), but a tab or line break would end the field.
      text = re.sub(r"[\t\r\n]", " ", content)
      changed += text != content
      f.write(f"{item}\t{text}\t{' '.join(map(str, codes))}\n")
  return {"items": len(corpus), "users": len(users_all), "unused_items": len(set(corpus) - seen),
          "respaced_items": changed}


def import_settings(settings: Settings, their_config: dict, data_dir: str,
                    tokenizer: str) -> Settings:
  """`settings` with what their checkpoint and code fix (see the module docstring)."""
  config = ml_collections.ConfigDict(settings.full)
  config.data.update(source="atomic", name=NAME, dir=data_dir, text_fields="content:",
                     time_field="timestamp", rating_field="", min_rating=0.0, kcore=0,
                     split="given", tokenizer=tokenizer, cold_item_fraction=0.0,
                     time_ties="quicksort",
                     max_item_tokens=int(their_config.get("max_info_len", 30)) - 1)
  config.gid.update(source="file", file_column=GID_COLUMN,
                    branching=int(their_config.get("cid_token_num", 0)),
                    depth=int(their_config.get("code_length", 0)))
  hf = {k: their_config.get(k) for k in ("d_model", "d_ff", "num_heads", "num_layers",
                                         "num_decoder_layers", "dropout_rate")}
  if None in (hf["d_model"], hf["d_ff"], hf["num_heads"], hf["num_layers"]):
    raise UsageError(weights.FLAG, "their config.json lacks d_model, d_ff, num_heads or "
                     "num_layers; not a T5 config")
  config.model.update(
      name="colarec", d_model=int(hf["d_model"]), d_ff=int(hf["d_ff"]),
      num_heads=int(hf["num_heads"]), num_encoder_layers=int(hf["num_layers"]),
      num_decoder_layers=int(hf["num_decoder_layers"] or hf["num_layers"]),
      dropout_rate=float(hf["dropout_rate"] if hf["dropout_rate"] is not None else 0.1),
      init_from="", id_init="random", pooled_start=False, freeze_ids=False,
      tie_last_level=False, prefix_embed=False, init="official")
  config.inputs.update(uad_on_item_inputs=False, history_cut="token", use_content=True,
                       history_codes=False, item_id_dropout=0.0, index_users=1)
  config.loss.update(generation_reduction="mean", pair_form="official")
  config.eval.exclude_valid_at_test = False
  return Settings.parse(config)


def import_official(settings: Settings, workdir: str, checkpoint_path: str, official_data: str,
                    tokenizer: str, *, log=print) -> dict:
  """Writes a colarec-jax workdir from their checkpoint and data folder (see the module doc).

  Returns:
    {'epoch', 'valid' (the validation report's overall metrics), 'settings'}.

  Raises:
    UsageError: a missing or mismatched file, or a workdir that already holds a model.
  """
  if stored.stored(workdir) is not None:
    raise UsageError("workdir", f"{workdir} already holds a trained model; import into a new "
                     "--workdir")
  their_config, tensors = weights.read_checkpoint(checkpoint_path)
  data_dir = os.path.join(os.path.abspath(workdir), DATA_DIR)
  counts = write_atomic(official_data, data_dir, int(their_config.get("code_length", 0)))
  if counts["respaced_items"]:
    log(f"warning: {counts['respaced_items']} content strings hold tabs or line breaks, written "
        "as spaces (the atomic item file cannot hold them); their tokens may differ from theirs")
  if counts["unused_items"]:
    log(f"warning: {counts['unused_items']} of {counts['items']} items in {CORPUS} have no "
        "interaction; colarec-jax's catalogue leaves them out, theirs ranks them too")
  local_tokenizer = os.path.join(data_dir, "tokenizer.json")
  shutil.copy(tokenizer, local_tokenizer)
  settings = import_settings(settings, their_config, data_dir, local_tokenizer)
  prepared, gids = stages.data_and_gids(settings, workdir, log=log)
  parts = parts_lib.build(settings, workdir, log=log, prepared=prepared, gids=gids)
  weights.check_config(their_config, parts.model.config.transformer, branching=gids.branching,
                       depth=gids.depth)
  state = initial_state(parts, settings, workdir, run_optimizer(prepared, settings), log)
  ds = prepared.dataset
  params = weights.to_params(tensors, jax.device_get(state.params),
                             parts.model.config.transformer, item_ids=ds.item_ids,
                             user_ids=ds.user_ids)
  state = state.replace(params=jax.device_put(params, jax.tree.map(lambda x: x.sharding,
                                                                   state.params)))
  folder = os.path.basename(os.path.normpath(
      checkpoint_path if os.path.isdir(checkpoint_path) else os.path.dirname(checkpoint_path)))
  match = re.fullmatch(r"epoch(\d+)", folder)
  epoch = int(match.group(1)) if match else 1
  report = parts.ranker(state.params).evaluate(*parts.eval_data(VALID))
  metric = settings.eval.metric
  run = Progress(epoch=epoch, best_metric=report.overall[metric], best_epoch=epoch,
                 history=[{"epoch": epoch, "imported_from": os.path.abspath(checkpoint_path),
                           **{f"valid/{k}": v for k, v in report.overall.items()}}])
  ckpts = parts_lib.checkpoints(parts, settings, workdir)
  meta = ckpts.meta(run)
  checkpoint.save(ckpts.manager(checkpoint.LATEST), epoch, state_arrays(state), meta)
  checkpoint.save(ckpts.manager(checkpoint.BEST), epoch, state_arrays(state), meta,
                  score=report.overall[metric])
  stored.save(settings.full, workdir)
  log(f"imported their epoch-{epoch} model ({counts['items']} items, {counts['users']} users) "
      f"into {workdir}; valid {metric} {report.overall[metric]:.4f}")
  return {"epoch": epoch, "valid": dict(report.overall), "settings": settings}
