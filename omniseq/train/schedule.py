"""The learning rate of every optimizer step: linear warmup to the peak, then a cosine down to the floor.

Optimizer step k (1-based) of a stage of T steps with W warmup steps runs at `lr * lr_factor(k, T, W, floor)`:

    k / W                                               k <= W: step 1 at lr / W, step W at the peak
    floor + (1 - floor) * (1 + cos(pi * p)) / 2         after, p = (k - S) / (T - S) with S = max(W, 1):
                                                        the peak at step S, lr * floor at step T

so without warmup step 1 runs at the peak. DeepSpeed's WarmupCosineLR, used before, gives lr 0 at its first
iteration and at least 2 warmup steps: the first two steps left the weights unchanged, the peak was never
used and the last step was not at the floor.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from omniseq.config import ConfigError


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """The fraction of the peak lr that optimizer step `step` (1-based) uses."""
    if warmup > 0 and step <= warmup:
        return step / warmup
    start = max(warmup, 1)  # the step at the peak
    if total <= start:  # nothing left to decay over (a one-step stage, or warmup to the end)
        return 1.0
    progress = min(step - start, total - start) / (total - start)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine(LRScheduler):
    """`lr_factor` as a torch scheduler, passed to deepspeed.initialize. DeepSpeed steps it after every
    optimizer step, so `last_epoch` counts the steps taken and the optimizer's lr is the next step's.

    Only that count is checkpointed: the step total, the warmup and the peak come from the stage config (the
    time budget may lower the total, `reshape`), so a resumed run follows its config, as DeepSpeed's own
    schedulers did."""

    def __init__(self, optimizer: torch.optim.Optimizer, total: int, warmup: int, floor: float):
        self.total, self.warmup, self.floor = total, warmup, floor
        super().__init__(optimizer)  # sets the lr of step 1

    def get_lr(self) -> list[float]:
        factor = lr_factor(self.last_epoch + 1, self.total, self.warmup, self.floor)
        return [base * factor for base in self.base_lrs]

    def reshape(self, total: int, warmup: int) -> None:
        """End the schedule at `total` steps instead, from the next step on."""
        self.total, self.warmup = total, warmup
        self._apply()

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count}

    def load_state_dict(self, state_dict: dict) -> None:
        if "last_epoch" not in state_dict:  # DeepSpeed's WarmupCosineLR wrote {"last_batch_iteration": n}
            raise ConfigError(
                "this checkpoint was written before omniseq's own lr schedule (2026-12-06) and cannot resume with "
                "it: train into a new out_dir, or delete the stage's ckpt/ folder to start the stage again"
            )
        self.last_epoch, self._step_count = state_dict["last_epoch"], state_dict["_step_count"]
        self._apply()  # the optimizer's groups may hold another schedule's lr (or none, a fresh optimizer)

    def _apply(self) -> None:
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr
