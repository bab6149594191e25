"""The wall-clock budget of a training loop (StageConfig.max_minutes): how many steps fit.

The loop leaves its first COMPILE_STEPS untimed (torch.compile and the first allocations run there), fits
its step count after FIT_AFTER steps and checks it again every REFIT_EVERY steps after that, from the mean
seconds per step since timing began: mid-stage evals and checkpoints are in that mean, so a stage that saves
or evaluates often still ends on time. The count only ever goes down, and only when the stage would overrun
by more than SLACK, so noise in the timing does not nibble steps away. The seconds spent are checkpointed,
so a stage resumed after a stop gets what is left of its budget, not all of it again.
"""

from __future__ import annotations

from dataclasses import dataclass

COMPILE_STEPS = 3  # steps left untimed after the loop (re)starts
FIT_AFTER = 10  # the first fit, in steps after the loop (re)starts
REFIT_EVERY = 10  # steps between later checks
SLACK = 0.02  # a projected overrun up to this share of the budget is left alone


def steps_that_fit(step: int, total: int, seconds_per_step: float, spent_s: float, budget_s: float) -> int:
    """The step to end at: `total` while the projected end stays within the budget (+ SLACK), else the steps
    done plus those the remaining seconds pay for, at least one more (never more than `total`)."""
    if spent_s + (total - step) * seconds_per_step <= budget_s * (1 + SLACK):
        return total
    return min(total, step + max(1, int(max(0.0, budget_s - spent_s) / seconds_per_step)))


@dataclass
class TimeBudget:
    """When to fit, and the timing that goes into it, for one run of a loop (all ranks call it alike)."""

    seconds: float
    start_step: int  # the step the loop (re)started at
    started: float  # clock time of the loop's start, less the seconds spent before a resume
    timed_from: tuple[int, float] | None = None  # (step, clock) where timing began

    @classmethod
    def begin(cls, minutes: float, step: int, now: float, spent_before: float = 0.0) -> TimeBudget:
        return cls(minutes * 60, step, now - spent_before)

    def spent(self, now: float) -> float:
        return now - self.started

    def due(self, step: int, now: float) -> bool:
        """Whether to fit after `step`: FIT_AFTER steps into this run, then every REFIT_EVERY."""
        ran = step - self.start_step
        if self.timed_from is None:
            if ran >= COMPILE_STEPS:
                self.timed_from = (step, now)
            return False
        return ran >= FIT_AFTER and (ran - FIT_AFTER) % REFIT_EVERY == 0

    def timing(self, step: int, now: float) -> tuple[float, float]:
        """(seconds per timed step, seconds spent), for the ranks to reduce with MAX before fitting."""
        step0, t0 = self.timed_from
        return (now - t0) / (step - step0), self.spent(now)
