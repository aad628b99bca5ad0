"""Records the parity fixture (`tests/fixtures/official/`) by running the authors' ColaRec code.

The authors' PyTorch code (GitHub Junewang0614/ColaRec) is imported from a checkout you provide;
nothing of it is copied here. Two steps, each in its own environment:

  1. In colarec-jax's environment, prepare the tiny dataset and its GIDs, then export them in the
     authors' data format (corpus_512.json, train_time_inter.csv, valid_inter.csv, test_inter.csv,
     cid_neg_dict.json), with our tokenizer's ids for every content string:

       colarec-jax --config=configs/tiny.py --workdir=/tmp/tinywd --mode=gid
       python tools/official_fixture.py export --workdir=/tmp/tinywd --config=configs/tiny.py \
           --out=/tmp/official_export

  2. In a virtualenv with the authors' pins (the two conflict with colarec-jax's `tokenizers`):

       python -m venv --system-site-packages /tmp/peer-venv   # reuses torch
       /tmp/peer-venv/bin/pip install transformers==4.30.2 accelerate==0.21.0 pandas
       /tmp/peer-venv/bin/python tools/official_fixture.py record \
           --official=/path/to/ColaRec --export=/tmp/official_export \
           --out=tests/fixtures/official

`record` builds their `V4T5smallModel` at the tiny size with `set_seed(0)`, saves its initial
weights with their `save_pretrained` (model/pytorch_model.bin + config.json), draws one training
batch with their `v7CL2TrainDataset` (history, i, i-, i+, the uad slot), computes their four losses
and the per-tensor gradient norms of their weighted objective in eval mode (no dropout), and runs
their constrained beam search (`model.predict`, HF `generate`) for the first test users. The text
goes through a stand-in tokenizer whose `encode`/`padding`/`__call__` are the authors'
`V4T5Tokenizer` methods and whose vocabulary is colarec-jax's (SentencePiece's t5-small
vocabulary cannot be downloaded here). Everything but the weights goes to `parity.json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys

import numpy as np

# The authors' settings this fixture runs at (their model_train.py defaults, except sizes).
BATCH = 8  # training examples in the recorded batch
BEAM_USERS = 4  # test users whose beams are recorded
GENERATE_LAMBDA, CL_LAMBDA = 0.08, 0.1  # model_train.py: generate_lamda, content_cl_lamda
DROPOUT = 0.1


def export(workdir: str, config_file: str, out: str) -> None:
  """Our prepared tiny dataset and GIDs, in the authors' data format (raw ids = our ids)."""
  import importlib.util

  from colarec_jax.data.dataset import TEST, TRAIN, VALID
  from colarec_jax.data.prepare import load_prepared
  from colarec_jax.gid.table import GidTable

  prepared = load_prepared(os.path.join(workdir, "data"))
  gids = GidTable.load(os.path.join(workdir, "gid", "gids.npz"))
  spec = importlib.util.spec_from_file_location("fixture_config", config_file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  ds = prepared.dataset
  data = os.path.join(out, "data")
  os.makedirs(data, exist_ok=True)
  corpus, tokens = {}, {}
  for item in range(1, ds.num_items + 1):
    content = ds.content(item)
    row = prepared.item_tokens[item]
    tokens[content] = row[row != prepared.pad_id].tolist()
    corpus[str(item)] = {"atom_id": item, "content": content,
                         "cid": gids.codes[item].tolist()}
  with open(os.path.join(data, "corpus_512.json"), "w") as f:
    json.dump(corpus, f)
  siblings = gids.siblings()
  with open(os.path.join(data, "cid_neg_dict.json"), "w") as f:
    json.dump({str(i): {"sec": [int(s) for s in siblings.row(i) if s != i]}
               for i in range(1, ds.num_items + 1)}, f)
  times = ds.timestamps
  for name, part, with_time in (("train_time_inter.csv", TRAIN, True),
                                ("valid_inter.csv", VALID, False),
                                ("test_inter.csv", TEST, False)):
    rows = np.flatnonzero(prepared.split == part)
    with open(os.path.join(data, name), "w") as f:
      f.write("user_id,item_id" + (",time\n" if with_time else "\n"))
      for r in rows:
        f.write(f"{ds.users[r]},{ds.items[r]}" + (f",{int(times[r])}\n" if with_time else "\n"))
  with open(os.path.join(out, "tokens.json"), "w") as f:
    json.dump(tokens, f)
  shutil.copy(os.path.join(workdir, "data", "tokenizer.json"), os.path.join(out, "tokenizer.json"))
  meta = {
      "vocab_size": prepared.vocab_size, "pad_id": prepared.pad_id, "eos_id": prepared.eos_id,
      "num_items": ds.num_items, "num_users": ds.num_users,
      "branching": gids.branching, "depth": gids.depth,
      "max_item_tokens": int(prepared.item_tokens.shape[1]),
      "max_length": int(config.inputs.max_length), "beam_size": int(config.eval.beam_size),
  }
  for key in ("d_model", "d_ff", "num_heads", "num_encoder_layers", "num_decoder_layers"):
    meta[key] = int(config.model[key])
  with open(os.path.join(out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  print(f"exported {ds.num_items} items, {ds.num_users} users to {out}")


def record(official: str, export_dir: str, out: str) -> None:
  """Runs the authors' code on the export; writes model/, data/, tokenizer.json, parity.json."""
  import torch

  sys.path.insert(0, os.path.abspath(official))
  from other.config_class import DataProcessConfig
  from other.new_utils import PrefixTree, compute_bpr_loss, get_lastpos_state, set_seed
  from src.datasets import get_train_dataloader_augitem, get_valid_dataloader_timeorder
  from src.models import CIDT5RecConfig, V4T5smallModel
  from src.tokenization import V4T5Tokenizer

  with open(os.path.join(export_dir, "meta.json")) as f:
    meta = json.load(f)
  with open(os.path.join(export_dir, "tokens.json")) as f:
    table = json.load(f)

  class Tokenizer:
    """The authors' V4T5Tokenizer layout methods over colarec-jax's vocabulary."""
    __call__ = V4T5Tokenizer.__call__
    encode = V4T5Tokenizer.encode
    padding = V4T5Tokenizer.padding
    batch_encode = V4T5Tokenizer.batch_encode

    def __init__(self, config):
      self.config = config
      self.pad_token_id, self.eos_token_id = meta["pad_id"], meta["eos_id"]
      # <extra_id_0/1>: two ids past our vocabulary (their rows are overwritten by the ID slots).
      self.atom_pad_id, self.atom_user_pad_id = meta["vocab_size"], meta["vocab_size"] + 1

    def tokenize(self, text):
      return list(table[text])

    def convert_tokens_to_ids(self, ids):
      return list(ids)

  class DataFiles:  # the two attributes their loaders read of DataFileConfig
    dataset_path = os.path.join(export_dir, "data")
    corpus_file = os.path.join(export_dir, "data", "corpus_512.json")

  pro = DataProcessConfig(mode="latest", sample_user_num=1, seq_type="short")
  pro.updata_for_type()
  pro.max_token_num = meta["max_length"]
  pro.max_infor_len = meta["max_item_tokens"] + 1  # the iad slot and the content tokens
  tok = Tokenizer(pro)
  torch.set_num_threads(1)

  set_seed(0)
  d_model, heads = meta["d_model"], meta["num_heads"]
  config = CIDT5RecConfig(
      vocab_size=meta["vocab_size"] + 2, d_model=d_model, d_ff=meta["d_ff"], num_heads=heads,
      d_kv=d_model // heads, num_layers=meta["num_encoder_layers"],
      num_decoder_layers=meta["num_decoder_layers"], dropout_rate=DROPOUT,
      feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
      item_num=meta["num_items"], cid_token_num=meta["branching"], code_num=meta["depth"],
      code_length=meta["depth"])
  config.update(dict(user_num=meta["num_users"], max_info_len=pro.max_infor_len,
                     item_position=False))
  model = V4T5smallModel(config)
  if os.path.exists(out):
    shutil.rmtree(out)
  os.makedirs(out)
  model.save_pretrained(os.path.join(out, "model"), safe_serialization=False)
  shutil.copytree(os.path.join(export_dir, "data"), os.path.join(out, "data"))
  shutil.copy(os.path.join(export_dir, "tokenizer.json"), os.path.join(out, "tokenizer.json"))

  # One training batch, sampled by their dataset.
  dataset, _ = get_train_dataloader_augitem(DataFiles, pro, tok, BATCH, num_workers=0,
                                            return_dataset=True)
  set_seed(0)
  rows = np.random.default_rng(0).choice(len(dataset), BATCH, replace=False).tolist()
  examples = [dataset[r] for r in rows]
  sampled = copy.deepcopy(examples)
  user_in, pos_in, neg_in, labels, neg_labels, aug_in = dataset.collate_fn(examples)

  model.eval()  # no dropout
  pos_out = model.forward_train(**pos_in, **labels, ty="item")
  neg_out = model.forward_train(**neg_in, **neg_labels, ty="item")
  rec_out = model.forward_train(**user_in, **labels, ty="user")
  last = lambda o, d: get_lastpos_state(o.encoder_last_hidden_state, d["attention_mask"])
  h_pos, h_neg, h_user = last(pos_out, pos_in), last(neg_out, neg_in), last(rec_out, user_in)
  aug_out = model.get_encoder_state(**aug_in, **labels, ty="item")
  h_aug = last(aug_out, aug_in)
  index_loss = pos_out.loss + neg_out.loss
  bpr = compute_bpr_loss(model.bpr_loss, h_user, h_pos, h_neg)
  cl = compute_bpr_loss(model.bpr_loss, h_pos, h_aug, h_neg)
  total = GENERATE_LAMBDA * (index_loss + rec_out.loss) + bpr + CL_LAMBDA * cl
  total.backward()
  grad_norms = {name: float(p.grad.norm()) for name, p in model.named_parameters()
                if p.grad is not None}
  grad_norms["(global)"] = float(torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()
                                                if p.grad is not None)))

  # Beam search for the first test users, as their constrained_eval_process calls it.
  _, test_set = get_valid_dataloader_timeorder(DataFiles, pro, tok, batch_size=BEAM_USERS,
                                               split="test", num_workers=0)
  users = test_set.dataset[:BEAM_USERS]
  user_batch, _, _ = test_set.collate_fn([test_set[n] for n in range(BEAM_USERS)])
  trie = PrefixTree()
  trie.set_all([[tok.pad_token_id] + v["cid"] for v in test_set.item_corpus.values()])
  beam = meta["beam_size"]
  with torch.no_grad():
    generated = model.predict(dict(num_beams=beam, num_return_sequences=beam,
                                   max_new_tokens=meta["depth"],
                                   eos_token_id=meta["branching"] + 1, row=1,
                                   prefix_allowed_tokens_fn=trie, output_scores=True,
                                   return_dict_in_generate=True), **user_batch)
  sequences = generated.sequences[:, 1:].reshape(BEAM_USERS, beam, -1).tolist()
  scores = generated.sequences_scores.reshape(BEAM_USERS, beam).tolist()

  as_lists = lambda d: {k: v.tolist() for k, v in d.items()}
  fixture = {
      "about": "Recorded by tools/official_fixture.py from the authors' ColaRec code "
               "(Junewang0614/ColaRec); see that script for how to regenerate it.",
      "settings": {"meta": meta, "max_token_num": pro.max_token_num,
                   "max_infor_len": pro.max_infor_len, "sample_item_num": pro.sample_item_num,
                   "max_item_num": pro.max_item_num, "generate_lamda": GENERATE_LAMBDA,
                   "content_cl_lamda": CL_LAMBDA, "seed": 0, "dropout_rate": DROPOUT,
                   "torch": torch.__version__,
                   "transformers": __import__("transformers").__version__},
      "batch": {
          "rows": rows, "users": [int(dataset.dataset[r][0]) for r in rows],
          "examples": sampled,
          "their_inputs": {"user": as_lists(user_in), "pos": as_lists(pos_in),
                           "neg": as_lists(neg_in), "aug": as_lists(aug_in),
                           "labels": labels["labels"].tolist(),
                           "neg_labels": neg_labels["labels"].tolist()},
      },
      "losses": {"rec": float(rec_out.loss), "index": float(index_loss), "bpr": float(bpr),
                 "contrastive": float(cl), "total": float(total)},
      "grad_norms": grad_norms,
      "beams": {"users": [int(u) for u in users], "beam_size": beam,
                "history_input": as_lists(user_batch), "codes": sequences, "scores": scores},
  }
  with open(os.path.join(out, "parity.json"), "w") as f:
    json.dump(fixture, f, indent=None, separators=(",", ":"))
  print("losses", fixture["losses"])
  print(f"wrote {out}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("export", help="our tiny workdir -> the authors' data format")
  p.add_argument("--workdir", required=True)
  p.add_argument("--config", default="configs/tiny.py", help="the config the workdir was made with")
  p.add_argument("--out", required=True)
  p = sub.add_parser("record", help="run the authors' code on an export, write the fixture")
  p.add_argument("--official", required=True, help="a checkout of Junewang0614/ColaRec")
  p.add_argument("--export", required=True, help="the folder `export` wrote")
  p.add_argument("--out", required=True)
  args = parser.parse_args()
  if args.command == "export":
    export(args.workdir, args.config, args.out)
  else:
    record(args.official, args.export, args.out)


if __name__ == "__main__":
  main()
