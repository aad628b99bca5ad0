"""Runs RecBole 1.2.1's LightGCN on benchmark files and prints one JSON line (the peer of
bench/lightgcn.py). Usage: python bench/recbole_lightgcn.py DATA_DIR NAME EPOCHS EVAL_EVERY

DATA_DIR/NAME/NAME.{train,valid,test}.inter are the split files bench/lightgcn.py wrote from our
prepared split, so both libraries train and test on exactly the same interactions. Uses RecBole's
low-level API (Config, create_dataset, Trainer): its quick_start imports ray, which fails to import
without pkg_resources.
"""

import json
import os
import sys
import time

# RecBole 1.2.1 reloads its own best checkpoint with torch.load, which torch >= 2.6 refuses under
# weights_only; the file is the one this process just wrote.
os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.model.general_recommender import LightGCN
from recbole.trainer import Trainer
from recbole.utils import init_seed


def main(data_dir, name, epochs, eval_every):
  config = Config(model="LightGCN", dataset=name, config_dict={
      "data_path": data_dir, "benchmark_filename": ["train", "valid", "test"],
      "load_col": {"inter": ["user_id", "item_id"]}, "USER_ID_FIELD": "user_id",
      "ITEM_ID_FIELD": "item_id", "embedding_size": 64, "n_layers": 3, "reg_weight": 1e-4,
      "learning_rate": 1e-3, "train_batch_size": 2048, "eval_batch_size": 4096,
      "epochs": int(epochs), "eval_step": int(eval_every), "stopping_step": 10,
      "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
      "eval_args": {"mode": "full", "order": "RO", "group_by": "user"},
      "metrics": ["Recall", "NDCG"], "topk": [5, 10, 20], "valid_metric": "NDCG@10",
      "device": "cpu", "use_gpu": False, "seed": 2020, "reproducibility": True,
      "show_progress": False, "checkpoint_dir": f"{data_dir}/saved", "log_wandb": False,
      "worker": 0, "metric_decimal_place": 6,
      # LightGCN's regulariser, reg_weight / 2 * squared norms per example, which ours uses too;
      # RecBole's default (require_pow False) adds the unsquared norms instead.
      "require_pow": True})
  init_seed(config["seed"], config["reproducibility"])
  dataset = create_dataset(config)
  train, valid, test = data_preparation(config, dataset)
  model = LightGCN(config, train.dataset).to(config["device"])
  trainer = Trainer(config, model)
  train_times, eval_times, best_epoch, history = [], [], -1, []
  original_train, original_valid = trainer._train_epoch, trainer._valid_epoch

  def timed_train(*args, **kwargs):
    start = time.perf_counter()
    out = original_train(*args, **kwargs)
    train_times.append(time.perf_counter() - start)
    return out

  def timed_valid(*args, **kwargs):
    start = time.perf_counter()
    out = original_valid(*args, **kwargs)
    eval_times.append(time.perf_counter() - start)
    history.append((len(train_times), out[0]))
    return out

  trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
  best_valid, _ = trainer.fit(train, valid, saved=True, show_progress=False)
  for epoch, score in history:
    if score == best_valid:
      best_epoch = epoch
      break
  result = trainer.evaluate(test, load_best_model=True, show_progress=False)
  print(json.dumps({
      "seconds_per_epoch": sum(train_times[1:] or train_times) / max(1, len(train_times) - 1),
      "seconds_per_eval": sum(eval_times) / max(1, len(eval_times)),
      "epochs_run": len(train_times), "best_epoch": best_epoch, "valid_ndcg@10": best_valid,
      "test": {k: float(v) for k, v in result.items()}}))


if __name__ == "__main__":
  main(*sys.argv[1:])
