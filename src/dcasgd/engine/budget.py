"""When a run ends: the epoch cap, a time budget, a target error; and the lr schedule's horizon under a budget.

A run ends at the first of (``summary["ended_by"]``):

- ``"target"``: an evaluation scores at or below ``target_error`` (the metric's
  units; lower is better).  ``summary["time_to_target_s"]`` is the time of that
  evaluation, ``target_epoch`` and ``target_version`` where it stood;
- ``"time_budget"``: the training clock passes ``time_budget`` seconds
  (simulated seconds on the simulator: no event after the budget is handled, and
  the last evaluation is at the budget; wall seconds of training on Ray);
- ``"epochs"``: ``epochs`` passes over the training set (the epoch cap).

All three are a normal finish (``outcome`` ``"finished"``, exit status 0).

**The lr schedule under a budget.**  The schedule (:class:`~dcasgd.core.rules.LRSchedule`)
is a function of the epoch, with ``epochs`` as its horizon.  Under a time budget
it is evaluated at the run's *progress* in epoch units::

    progress = max(epoch, epochs * time_s / time_budget)

so a cosine schedule reaches its end whichever of the cap and the budget ends the
run, and step milestones fall at the same fractions of the run.  Without a
budget the progress is the epoch itself, and runs compute exactly what they did
before budgets existed.  The simulator supplies its clock
(:meth:`BudgetSchedule.follow`); on Ray the server shards see no training
clock, so there the schedule follows the epochs alone and the budget only ends
the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..config import TrainConfig

ENDED_BY = ("epochs", "time_budget", "target")


def schedule_progress(epoch: float, time_s: float, epochs: float, time_budget: float) -> float:
    """Where the lr schedule stands, in epochs: ``max(epoch, epochs * time_s / time_budget)`` (budget > 0)."""
    if time_budget > 0:
        return max(epoch, epochs * time_s / time_budget)
    return epoch


@dataclass
class BudgetSchedule:
    """An lr schedule evaluated at :func:`schedule_progress`, reading the run's clock (None: epochs alone)."""

    schedule: Callable[[float], float]
    epochs: float
    time_budget: float
    clock: Callable[[], float] | None = None

    def follow(self, clock: Callable[[], float]) -> None:
        """Read the training clock (seconds) from ``clock`` from now on."""
        self.clock = clock

    def __call__(self, epoch: float) -> float:
        time_s = self.clock() if self.clock is not None else 0.0
        return self.schedule(schedule_progress(epoch, time_s, self.epochs, self.time_budget))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "clock": None}      # a backend's clock stays with its process


def budgeted(schedule: Callable[[float], float], cfg: TrainConfig) -> Callable[[float], float]:
    """``schedule`` itself without a time budget, else a :class:`BudgetSchedule` around it."""
    return BudgetSchedule(schedule, cfg.epochs, cfg.time_budget) if cfg.time_budget > 0 else schedule


def follow_clock(schedule: Callable[[float], float], clock: Callable[[], float]) -> None:
    """Let a budgeted schedule read the backend's training clock (nothing to do without a budget)."""
    if isinstance(schedule, BudgetSchedule):
        schedule.follow(clock)


class StopRule:
    """The target and the time budget of one run: did an evaluation reach the target, is the budget spent?"""

    def __init__(self, cfg: TrainConfig) -> None:
        self.time_budget, self.target = cfg.time_budget, cfg.target_error
        self.ended_by: str | None = None              # "target" or "time_budget" once one of them ended the run
        self.reached: dict[str, Any] | None = None    # the evaluation that reached the target

    def evaluated(self, error: float | None, *, time_s: float, epoch: float, version: int) -> None:
        """An evaluation scored ``error``: the first at or below the target ends the run."""
        if (self.target is not None and self.reached is None and error is not None and math.isfinite(error)
                and error <= self.target):
            self.reached = {"time_s": time_s, "epoch": epoch, "version": version, "error": error}
            self.ended_by = self.ended_by or "target"

    def over_budget(self, time_s: float) -> bool:
        """True when ``time_s`` lies past the budget (never without one)."""
        return self.time_budget > 0 and time_s > self.time_budget

    def end_at_budget(self) -> None:
        self.ended_by = self.ended_by or "time_budget"

    def summary(self, outcome: str) -> dict[str, Any]:
        """The summary fields: ``ended_by`` (a finished run's reason), the budget, the target, and when it was
        reached (``time_to_target_s``, ``target_epoch``, ``target_version``; None when not reached)."""
        reached = self.reached or {}
        return {"ended_by": (self.ended_by or "epochs") if outcome == "finished" else None,
                "time_budget_s": self.time_budget or None, "target_error": self.target,
                "time_to_target_s": reached.get("time_s"), "target_epoch": reached.get("epoch"),
                "target_version": reached.get("version")}

    def state_dict(self) -> dict[str, Any]:
        return {"ended_by": self.ended_by, "reached": self.reached}

    def load_state_dict(self, sd: dict[str, Any] | None) -> None:
        sd = sd or {}
        self.ended_by, self.reached = sd.get("ended_by"), sd.get("reached")
