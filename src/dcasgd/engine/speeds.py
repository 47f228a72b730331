"""Worker speeds: how much slower each worker computes, in the simulator and emulated on Ray.

``worker_speeds(cfg)[m] = speed[m] * straggler[m]`` (dimensionless, 1 =
nominal): ``speed`` is ``--speeds``, else ``exp(hetero_sigma * z_m)`` with
``z ~ N(0, 1)`` drawn from the run's seed, else 1.  The simulator scales
each gradient's compute time by it; the Ray backend slows worker m by
``k_m = speed[m] / min(speed)`` (:func:`emulated_slowdowns`), sleeping
:func:`emulated_pause` after each round trip.
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


def emulated_pause(slowdown: float, busy_s: float) -> float:
    """Seconds a worker ``slowdown`` times slower than the fastest sleeps after a round trip that kept it
    busy ``busy_s`` seconds: ``(slowdown - 1) * busy_s``, so the round trip takes ``slowdown * busy_s``."""
    return max(0.0, (slowdown - 1.0) * busy_s)
