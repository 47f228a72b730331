"""A study's time budget and epoch caps: every run of a cluster gets the same simulated time.

**The budget** (grid key ``time_budget``): ``"sequential"`` (the default) is the
simulated time sequential SGD needs for the preset's ``epochs`` on that cluster,
computed without training: the simulator's own timing model
(:class:`~dcasgd.backends.sim.Timing`, the same seeded draws a run makes) summed
over the gradients one worker computes for those epochs
(:func:`sequential_time`).  On a cluster whose speeds depend on the seed (a
lognormal cluster), sequential SGD's time differs by seed; the budget is the
largest over the study's seeds, so every sequential run finishes its epochs
within it and every other run gets at least as much time.  A number gives the
budget in seconds; 0 turns budgets off (every run gets the preset's epochs).

**The epoch cap.**  At M workers the budget holds about M times sequential
SGD's gradients, so a run also stops at an epoch cap: ``epoch_caps[M]``
(a table of worker count -> epochs) where given, else the preset's epochs times
``min(M, epoch_cap_factor)``.  Sequential SGD's cap is the preset's epochs.
Under a budget a run's ``epochs`` setting is its cap, and its lr schedule ends
at whichever of the cap and the budget comes first (:mod:`dcasgd.engine.budget`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ..config import ConfigError, TrainConfig


def sequential_time(cfg: TrainConfig, num_train: int) -> float:
    """Simulated seconds one worker needs for ``cfg.epochs`` over ``num_train`` samples (no gradient computed).

    The simulator's clock for M = 1: each gradient's cycle ``comm + compute + comm`` drawn from
    :class:`~dcasgd.backends.sim.Timing` in the run's order, until the samples of the mini-batches
    (:class:`~dcasgd.compute.worker.BatchStream`, partial last batches included) reach
    ``ceil(epochs * num_train)``.  Exact for the timing model without ``corrupt`` (its draws share the
    generator) or failures.
    """
    from ..engine.timing import Timing             # (torch: imported when a budget is computed, not by report)
    from ..compute.worker import BatchStream
    one = replace(cfg, workers=1)
    timing, stream = Timing(one), BatchStream(num_train, 0, 1, one.batch_size, one.seed)
    target, samples, now = math.ceil(one.epochs * num_train), 0, 0.0
    while samples < target:
        now = now + (one.comm_time + timing.compute_time(0) + one.comm_time)
        samples += stream.next().numel()
    return now


def study_budgets(grid: dict[str, Any], configs: dict[str, list[TrainConfig]]) -> dict[str, Any]:
    """``{"budgets": {cluster: seconds}, "sequential_time_s": {cluster: {seed: seconds}}}``.

    ``configs``: per cluster, sequential SGD's configuration for every seed of the study (M = 1,
    the preset's epochs).  ``time_budget`` ``"sequential"``: the largest of their times; a number:
    that many seconds for every cluster (0: no budget).
    """
    wanted = grid.get("time_budget", "sequential")
    if wanted != "sequential":
        return {"budgets": {cluster: float(wanted) for cluster in configs}, "sequential_time_s": {}}
    times: dict[str, dict[str, float]] = {}
    num_train: int | None = None
    for cluster, seq_configs in configs.items():
        for cfg in seq_configs:
            if cfg.backend != "sim":
                raise ConfigError("compare: time_budget 'sequential' is simulated time; with --backend ray give "
                                  "the budget in seconds (time_budget = N in [compare]) or 0 for none")
            if num_train is None:          # one data set for the whole study: load it once
                from ..compute.task import task_from_config
                num_train = task_from_config(cfg).data.num_train
            times.setdefault(cluster, {})[str(cfg.seed)] = sequential_time(cfg, num_train)
    return {"budgets": {cluster: max(t.values()) for cluster, t in times.items()}, "sequential_time_s": times}


def epoch_cap(grid: dict[str, Any], epochs: float, workers: int) -> float:
    """The epoch cap of a run of ``workers`` workers under a budget (see the module docstring)."""
    caps = grid.get("epoch_caps") or {}
    if str(workers) in caps:
        return float(caps[str(workers)])
    return epochs * min(workers, grid.get("epoch_cap_factor", 4))


def check_budget_grid(grid: dict[str, Any]) -> None:
    """Raise ConfigError for a malformed ``time_budget``, ``epoch_cap_factor`` or ``epoch_caps``."""
    budget = grid.get("time_budget", "sequential")
    if budget != "sequential" and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not (budget >= 0 and math.isfinite(budget))):
        raise ConfigError(f"compare: time_budget must be 'sequential' or a number of seconds >= 0, got {budget!r}")
    factor = grid.get("epoch_cap_factor", 4)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1:
        raise ConfigError(f"compare: epoch_cap_factor must be a number >= 1, got {factor!r}")
    caps = grid.get("epoch_caps") or {}
    if not isinstance(caps, dict):
        raise ConfigError(f"compare: epoch_caps must be a table of worker count -> epochs, got {caps!r}")
    for key, value in caps.items():
        if not str(key).isdigit() or isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"compare: epoch_caps: {key!r} = {value!r} is not worker count = epochs > 0")
