"""Where a training run is: epochs done, the best validation so far, and early stopping.

Both trainers (LightGCN's and ColaRec's) keep one `Progress`; ColaRec saves it with every
checkpoint (as JSON), so a resumed run continues its early-stopping count exactly.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass
class Progress:
  """A run's position and its validation record.

  Attributes:
    epoch: epochs completed.
    best_metric: the best validation metric so far (-inf before the first validation).
    best_epoch: the epoch that reached it (0 before the first validation).
    bad_evals: validations since the last improvement.
    stopped: early stopping ended the run.
    history: one dict per epoch (losses, speed, validation metrics).
  """

  epoch: int = 0
  best_metric: float = -math.inf
  best_epoch: int = 0
  bad_evals: int = 0
  stopped: bool = False
  history: list = dataclasses.field(default_factory=list)

  def validated(self, value: float, epoch: int, patience: int) -> bool:
    """Records epoch `epoch`'s validation metric; True when it is a new best.

    `patience` validations in a row without a new best stop the run (`stopped`).
    """
    if value > self.best_metric:
      self.best_metric, self.best_epoch, self.bad_evals = value, epoch, 0
      return True
    self.bad_evals += 1
    self.stopped = self.bad_evals >= patience
    return False
