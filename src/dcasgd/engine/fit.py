"""``dcasgd fit``: the simulator's timing model, fitted to a real run's ``trace.jsonl``.

The trace gives each applied gradient's whole cycle on its worker's clock,
holds left out (:mod:`dcasgd.engine.timing`).  The model to fit is::

    cycle(m) = comm_time + base_time * speed[m] * noise + comm_time

- ``comm_time``: the median over every gradient of ``(pull_s + push_s) / 2``
  (the simulator charges the same time to each pull and each push);
- ``x = cycle_s - 2 * comm_time``: the rest of each cycle (compute, emulated
  slowness, batch selection), at least ``FLOOR`` times its worker's median cycle;
- shape ``"empirical"`` (the default): worker m's quantiles ``q_m`` of x at
  ``QUANTILES`` evenly spaced probabilities 0..1 (:func:`quantile_table`).
  With ``scale_m`` their trapezoid mean (the mean of an inverse-CDF draw),
  ``base_time = min scale_m``, ``speeds[m] = scale_m / base_time`` and
  ``timing_quantiles[m] = q_m / scale_m``, so a simulated worker draws its
  measured quantile function, resampled with the run's seed;
- shape ``"lognormal"``: ``mu_m`` and ``sigma_m`` are the mean and standard
  deviation of ``log x`` (ddof 1); ``base_time = min exp(mu_m)``,
  ``speeds[m] = exp(mu_m) / base_time``, ``jitters[m] = sigma_m``.

Each worker's first cycle (start-up: the first grant, lazy initialisation)
is left out.  A trace of the older format has compute times only: x is
``duration_s`` and ``comm_time`` 0, after a warning.

The written TOML holds the run's own settings (what it trained, its seed),
``backend = "sim"`` and the fitted timing, and a ``[compare]`` table with its
worker count, so ``dcasgd train --config FILE`` simulates the run and
``dcasgd compare OUT --config FILE`` studies methods on that cluster.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RUN_INVARIANT, STOP_CONDITIONS, TrainConfig
from ..errors import InputError
from ..names import FIT_SHAPES as SHAPES
from .timing import Timing, quantile_mean, read_trace

QUANTILES = 41                  # every 2.5%
FLOOR = 0.01                    # the least compute part, as a fraction of its worker's median
FIT_DRAWS = 20000               # cycles drawn per worker to check the fit
# Settings of the recorded run that the fitted file does not carry: where it ran and wrote (its data stays where
# it was), when it stopped, and the timing the fit replaces (the measured cycles already hold the emulated slowness).
NOT_CARRIED = (RUN_INVARIANT - {"data_root"}) | STOP_CONDITIONS | {
    "backend", "servers", "replay", "speeds", "hetero_sigma", "stragglers", "jitter", "jitters", "base_time",
    "comm_time", "timing", "timing_quantiles", "failures", "corrupt"}


class FitError(InputError):
    """A run directory whose trace cannot be fitted."""


@dataclass
class WorkerCheck:
    """How well the fit holds for one worker: its cycle's mean and p90, measured and fitted (seconds)."""

    worker: int
    gradients: int
    measured_mean: float
    fitted_mean: float
    measured_p90: float
    fitted_p90: float


@dataclass
class Fit:
    settings: dict[str, Any]          # TrainConfig fields: the run's own and the fitted timing
    workers: int
    checks: list[WorkerCheck]
    whole_cycles: bool                # False: an older trace of compute times only


def fit_cycles(cycles: list[np.ndarray], exchanges: list[np.ndarray] | None, shape: str = "empirical",
               quantiles: int = QUANTILES) -> dict[str, Any]:
    """The timing fields fitted to per-worker ``cycles`` (seconds) and their exchanges (``pull_s + push_s``;
    None: compute times only, ``comm_time`` 0)."""
    if shape not in SHAPES:
        raise FitError(f"fit: unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    if quantiles < 3:
        raise FitError(f"fit: quantiles must be at least 3, got {quantiles}")
    comm = float(np.median(np.concatenate(exchanges))) / 2 if exchanges else 0.0
    parts = [np.maximum(np.asarray(c, dtype=float) - 2 * comm, FLOOR * np.median(c)) for c in cycles]
    if shape == "lognormal":
        logs = [np.log(x) for x in parts]
        centre = np.array([lx.mean() for lx in logs])
        base = float(np.exp(centre.min()))
        return {"base_time": base, "comm_time": comm, "timing": "model",
                "speeds": [float(np.exp(mu)) / base for mu in centre],
                "jitters": [float(lx.std(ddof=1)) for lx in logs]}
    tables = [quantile_table(x, quantiles) for x in parts]
    scales = [quantile_mean(t) for t in tables]
    base = min(scales)
    return {"base_time": base, "comm_time": comm, "timing": "empirical", "speeds": [s / base for s in scales],
            "timing_quantiles": [[float(v) / s for v in t] for t, s in zip(tables, scales)]}


def quantile_table(x: np.ndarray, n: int) -> np.ndarray:
    """The sample quantiles of ``x`` at ``n >= 3`` evenly spaced probabilities 0..1, for inverse-CDF draws.

    The inner values are the sample quantiles.  The two end values are set so
    that the first and last segments of the piecewise-linear quantile function
    have the mean of the samples they stand for (``end = 2 * mean - inner
    neighbour``), not the sample minimum and maximum, which would lend one
    extreme gradient the weight of a whole segment; so the draws keep the
    sample's mean and its tail.
    """
    table = np.quantile(x, np.linspace(0.0, 1.0, n))
    head, tail = x[x <= table[1]].mean(), x[x >= table[-2]].mean()
    table[-1] = max(table[-2], 2 * tail - table[-2])
    table[0] = min(table[1], max(2 * head - table[1], FLOOR * table[1]))
    return table


def fit_run(run_dir: str | Path, shape: str = "empirical", quantiles: int = QUANTILES) -> Fit:
    """Fit the timing model to ``run_dir/trace.jsonl`` (and carry the settings of ``run_dir/summary.json``)."""
    run_dir = Path(run_dir)
    trace = run_dir / "trace.jsonl"
    if not trace.is_file():
        raise FitError(f"fit: {run_dir} has no trace.jsonl (a run directory of dcasgd train holds one)")
    recorded = _recorded_config(run_dir)
    workers = int(recorded.get("workers") or _trace_workers(trace))
    records, whole = read_trace(trace, workers)
    measured = [_cycles(rs, whole)[1:] if len(rs) > 1 else _cycles(rs, whole) for rs in records]
    short = [m for m, c in enumerate(measured) if len(c) < 3]
    if short:
        raise FitError(f"fit: worker(s) {short} applied fewer than 4 gradients in {trace}: too few cycles to fit")
    exchanges = ([np.array([r.get("pull_s", 0.0) + r.get("push_s", 0.0) for r in rs[1:] or rs]) for rs in records]
                 if whole else None)
    timing = fit_cycles(measured, exchanges, shape, quantiles)
    settings = {**{k: v for k, v in recorded.items() if k not in NOT_CARRIED and v is not None},
                "backend": "sim", "workers": workers, **timing}
    checks = check_fit(settings, measured)
    return Fit(settings, workers, checks, whole)


def check_fit(settings: dict[str, Any], measured: list[np.ndarray], draws: int = FIT_DRAWS) -> list[WorkerCheck]:
    """Each worker's cycle mean and p90, measured against ``draws`` cycles drawn from the fitted model
    exactly as the simulator draws them (:class:`~dcasgd.engine.timing.Timing`, the run's seed)."""
    timing = Timing(TrainConfig(**settings).validate())
    checks = []
    for m, cycles in enumerate(measured):
        drawn = np.array([timing.cycle(m)["cycle_s"] for _ in range(draws)])
        checks.append(WorkerCheck(m, len(cycles), float(np.mean(cycles)), float(drawn.mean()),
                                  float(np.quantile(cycles, 0.9)), float(np.quantile(drawn, 0.9))))
    return checks


def check_table(fit: Fit) -> list[str]:
    """The fit's check as text lines: per worker, the cycle's mean and p90 in ms, measured and fitted."""
    lines = ["worker  gradients   mean ms measured / fitted    p90 ms measured / fitted"]
    lines += [f"{c.worker:>6}  {c.gradients:>9}   {1e3 * c.measured_mean:8.3f} / {1e3 * c.fitted_mean:<8.3f}"
              f"        {1e3 * c.measured_p90:8.3f} / {1e3 * c.fitted_p90:.3f}" for c in fit.checks]
    return lines


def _cycles(records: list[dict[str, float]], whole: bool) -> np.ndarray:
    return np.array([r["cycle_s"] if whole else r["duration_s"] for r in records])


def _recorded_config(run_dir: Path) -> dict[str, Any]:
    """The recorded run's settings (summary.json's ``config``; empty without one)."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8")).get("config") or {}
    except (OSError, ValueError, AttributeError):
        raise FitError(f"fit: {path} is not a summary.json of dcasgd train") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in config.items() if k in known}


def _trace_workers(trace: Path) -> int:
    workers = 0
    for line in trace.read_text(encoding="utf-8").splitlines():
        try:
            workers = max(workers, int(json.loads(line)["worker"]) + 1)
        except (ValueError, KeyError, TypeError):
            continue
    return workers


# ------------------------------------------------------------ the TOML file


def toml_text(fit: Fit, source: Path, shape: str) -> str:
    """The fitted configuration as TOML: the run's settings, the fitted timing, a ``[compare]`` table."""
    timing_keys = ("base_time", "comm_time", "timing", "speeds", "jitters", "timing_quantiles")
    run_keys = [k for k in fit.settings if k not in timing_keys]
    lines = [f"# dcasgd fit {source} ({shape}): the simulator's timing model fitted to that run's trace.jsonl",
             "# use: dcasgd train --config THIS_FILE [--out DIR] [other flags]"]
    lines += ["#   " + line for line in check_table(fit)]
    lines += ["", "# the recorded run's settings"]
    lines += [f"{k} = {_toml_value(fit.settings[k])}" for k in run_keys]
    lines += ["", "# the fitted timing model (seconds)"]
    lines += [f"{k} = {_toml_value(fit.settings[k])}" for k in timing_keys if k in fit.settings]
    lines += ["", "# dcasgd compare --config THIS_FILE: the fitted cluster has this many workers", "[compare]",
              f"workers = [{fit.workers}]", "", "[compare.clusters.fitted]", ""]
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return json.dumps(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FitError(f"fit: a fitted value is not finite ({value})")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise FitError(f"fit: cannot write {value!r} to TOML")
