"""What the trainers show and keep of a run: TensorBoard scalars, epoch lines, learning curves."""

from __future__ import annotations

from colarec_jax.runtime import sharding

LOSS_TERMS = ("loss", "rec", "index", "bpr", "contrastive")


def summary_writer(path: str):
  """A TensorBoard event writer for `path` on the main process; a no-op writer elsewhere."""
  if not sharding.is_main_process():
    return NullWriter()
  from tensorboardX import SummaryWriter
  return SummaryWriter(path)


class NullWriter:
  """Stands in for the TensorBoard writer on processes other than the main one."""

  def add_scalar(self, *args):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def epoch_line(record: dict, metric: str) -> str:
  """One ColaRec epoch on the console: mean losses, time, speed, and validation when it ran."""
  losses = " ".join(f"{k} {record[k]:.4f}" for k in LOSS_TERMS if k in record)
  line = (f"colarec epoch {record['epoch']}: {losses} ({record['seconds']:.1f} s, "
          f"{record['examples_per_second']:.1f} ex/s)")
  if f"valid/{metric}" in record:
    line += f" valid {metric} {record[f'valid/{metric}']:.4f}"
  return line


def plot_curves(history: list[dict], metric: str, path: str) -> None:
  """Per-epoch losses and the validation metric, as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt

  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  epochs = [r["epoch"] for r in history]
  for k in LOSS_TERMS:
    if history and k in history[0]:
      left.plot(epochs, [r[k] for r in history], label=k)
  left.set(xlabel="epoch", ylabel="training loss (epoch mean)", yscale="log")
  left.legend()
  points = [(r["epoch"], r[f"valid/{metric}"]) for r in history if f"valid/{metric}" in r]
  if points:
    right.plot(*zip(*points), marker="o")
  right.set(xlabel="epoch", ylabel=f"valid {metric}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
