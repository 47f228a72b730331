"""Worker speeds: how much slower each worker computes, in the simulator and emulated on Ray.

``worker_speeds(cfg)[m] = speed[m] * straggler[m]`` (dimensionless, 1 =
nominal): ``speed`` is ``--speeds``, else ``exp(hetero_sigma * z_m)`` with
``z ~ N(0, 1)`` drawn from the run's seed, else 1.  The simulator scales
each gradient's compute time by it; the Ray backend slows worker m by
``k_m = speed[m] / min(speed)`` (:func:`emulated_slowdowns`): a
:class:`SlowdownPacer` makes each of its cycles k_m times the running mean
cycle of the unslowed workers (the reference), sleeping the difference.
"""

from __future__ import annotations

import numpy as np

from ..config import TrainConfig


def worker_speeds(cfg: TrainConfig, rng: np.random.Generator | None = None) -> list[float]:
    """Each worker's compute-time multiplier, ``speed[m] * straggler[m]``.

    ``rng`` (default: a fresh ``default_rng(cfg.seed)``, the same draw the
    simulator makes first) supplies the lognormal draw for ``hetero_sigma``.
    """
    if cfg.speeds:
        speed = [float(s) for s in cfg.speeds]
    elif cfg.hetero_sigma > 0:
        rng = np.random.default_rng(cfg.seed) if rng is None else rng
        speed = [float(s) for s in np.exp(cfg.hetero_sigma * rng.standard_normal(cfg.workers))]
    else:
        speed = [1.0] * cfg.workers
    for worker, factor in cfg.stragglers.items():
        speed[worker] *= factor
    return speed


def emulated_slowdowns(cfg: TrainConfig) -> list[float]:
    """Each worker's emulated slow-down k_m = speed[m] / min(speed) (>= 1; the fastest is 1)."""
    speeds = worker_speeds(cfg)
    fastest = min(speeds)
    return [s / fastest for s in speeds]


def reference_workers(cfg: TrainConfig) -> list[int]:
    """The unslowed workers (k_m = 1), whose cycles pace the slowed ones; none when no worker is slowed."""
    slowdowns = emulated_slowdowns(cfg)
    return [m for m, k in enumerate(slowdowns) if k == 1.0] if max(slowdowns) > 1.0 else []


def achieved_slowdowns(mean_cycles: list[float | None], requested: list[float]) -> list[float | None]:
    """The slow-down each worker achieved: its mean cycle over the unslowed workers' (``requested`` k = 1).

    ``mean_cycles`` are seconds per gradient, holds left out (None: no gradient recorded).
    """
    unslowed = [x for x, k in zip(mean_cycles, requested) if k == 1.0 and x]
    if not unslowed:
        return [None] * len(mean_cycles)
    reference = sum(unslowed) / len(unslowed)
    return [x / reference if x else None for x in mean_cycles]


def emulated_pause(slowdown: float, busy_s: float) -> float:
    """Seconds a worker ``slowdown`` times slower than the fastest sleeps after a round trip that kept it
    busy ``busy_s`` seconds: ``(slowdown - 1) * busy_s``, so the round trip takes ``slowdown * busy_s``.
    (:class:`SlowdownPacer` uses it only until a reference cycle is known.)"""
    return max(0.0, (slowdown - 1.0) * busy_s)


class SlowdownPacer:
    """Paces one emulated slow worker: each cycle ``factor`` times the unslowed workers' cycle.

    Before sending a gradient, the worker has been busy ``busy_s`` seconds of
    this cycle (its own pull, compute and exchange, holds left out); the
    unslowed workers' running mean cycle is ``reference_s``.  It sleeps::

        pause = factor * reference_s - busy_s + debt          (at least 0)

    and once the push is sent, ``debt += factor * reference_s - cycle_s`` for the
    whole cycle it achieved (the sleep included).  So the cycles track
    ``factor`` times the reference whatever the worker's own busy time, which a
    machine shared with other processes inflates, and a sleep that overshoots
    or a reference that moves is made up on later cycles.  ``debt`` is kept
    within ``DEBT_CYCLES`` target cycles either way, so a stretch where the
    target cannot be met (busy longer than it) is not repaid in a burst.
    Without a reference yet it falls back to :func:`emulated_pause`.
    """

    DEBT_CYCLES = 2.0

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.debt = 0.0

    def pause(self, busy_s: float, reference_s: float | None) -> float:
        if not reference_s:
            return emulated_pause(self.factor, busy_s)
        return max(0.0, self.factor * reference_s - busy_s + self.debt)

    def record(self, cycle_s: float, reference_s: float | None) -> None:
        if not reference_s:
            return
        target = self.factor * reference_s
        bound = self.DEBT_CYCLES * target
        self.debt = min(bound, max(-bound, self.debt + target - cycle_s))
