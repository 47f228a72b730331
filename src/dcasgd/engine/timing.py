"""The simulated clock's timing model, and the traces that record or replay it.

One gradient cycle of worker m (pull, compute, push) takes, in simulated seconds::

    cycle(m) = comm_time + compute(m) + comm_time
    compute(m) = base_time * speed[m] * noise

``speed[m]`` comes from :func:`dcasgd.engine.speeds.worker_speeds` (``--speeds``
or ``exp(hetero_sigma * z)``, times any ``--straggler`` factor).  The noise of
each gradient depends on ``timing``:

- ``"model"`` (the default): ``noise = exp(sigma_m * z)``, ``z ~ N(0, 1)``,
  with ``sigma_m = jitters[m]`` when given, else ``jitter`` (no draw at 0);
- ``"empirical"``: ``noise = Q_m(u)``, ``u ~ U[0, 1)``, where ``Q_m`` is worker
  m's quantile function, the piecewise-linear interpolation of the table
  ``timing_quantiles[m]`` at evenly spaced probabilities 0, 1/(n-1), ..., 1
  (inverse-CDF sampling of an empirical distribution).

Every draw comes from one numpy Generator seeded by the run's seed, so a seed
fixes every cycle.  ``--replay FILE`` takes the cycles from a recorded trace
instead (:func:`read_trace`): worker m's k-th cycle is its k-th record.

A trace (``trace.jsonl``, written by both backends) has one line per applied
gradient (the simulator also writes the cycles it drew that were never applied,
with ``version`` null: refused, dropped, cut short by a failure, or in flight at
the end, so that a replay draws exactly its cycles; Ray records applied pushes
only): ``worker``, ``seq``, ``base_version``, ``version``, ``staleness``,
``t_pull``, ``t_push``, ``duration_s`` (the compute) and the parts of its cycle
(:data:`CYCLE_PARTS`, seconds)::

    cycle_s = pull_s + compute_s + slowdown_s + push_s + other_s

``wait_s`` (ssp/sync waits, checkpoint pauses) and ``held_s`` (evaluation
pauses) are the time the coordinator held the worker before this gradient
began; they are not in ``cycle_s``, since the simulator produces its own
waits.  A trace of the older format (``duration_s`` only) replays its compute
times with ``comm_time`` around each, as before, after one warning.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import TrainConfig
from ..errors import InputError
from .speeds import worker_speeds

CYCLE_PARTS = ("pull_s", "compute_s", "slowdown_s", "push_s", "other_s", "cycle_s")
HOLD_PARTS = ("wait_s", "held_s")
TRACE_KEYS = ("worker", "seq", "base_version", "version", "staleness", "t_pull", "t_push", "duration_s")


class TraceError(InputError):
    """A replay trace that is missing, malformed or lacks a worker."""


def read_trace(path: str | Path, num_workers: int, warn: bool = True) -> tuple[list[list[dict[str, float]]], bool]:
    """Per-worker records of a JSONL trace, and whether every one holds its whole cycle.

    Each record is ``{"duration_s": ..., **parts}`` in the order of the file
    (a worker's gradients in the order it pushed them).  Lines of workers
    outside ``0..num_workers-1`` or without a positive duration are skipped.
    When any record lacks ``cycle_s`` (the older format) the trace counts as
    compute times only, and ``warn`` prints one warning line saying so.
    """
    records: list[list[dict[str, float]]] = [[] for _ in range(num_workers)]
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"replay trace {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise TraceError(f"replay trace {path}: not a text file of JSON lines") from None
    complete = True
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            worker, duration = int(raw["worker"]), float(raw["duration_s"])
            parts = {k: float(raw[k]) for k in (*CYCLE_PARTS, *HOLD_PARTS) if raw.get(k) is not None}
        except (ValueError, KeyError, TypeError):
            raise TraceError(f"replay trace {path}, line {number}: need an object with "
                             f"'worker' and 'duration_s'") from None
        if not 0 <= worker < num_workers or not (duration > 0 and math.isfinite(duration)):
            continue  # other workers of a larger run, or a marker line
        cycle = parts.get("cycle_s", math.nan)
        complete = complete and cycle > 0 and math.isfinite(cycle)
        records[worker].append({"duration_s": duration, **parts})
    missing = [m for m, r in enumerate(records) if not r]
    if missing:
        raise TraceError(f"replay trace {path} has no durations for worker(s) {missing}")
    if not complete and warn:
        print(f"dcasgd: warning: trace {path} records compute times only (duration_s), not whole cycles "
              f"(pull, compute, emulated slowness, push): it replays them with --comm-time around each; "
              f"a run of this version records the whole cycle", file=sys.stderr)
    return records, complete


def load_trace(path: str | Path, num_workers: int) -> list[list[float]]:
    """Per-worker compute durations (``duration_s``) of a JSONL trace (see :func:`read_trace`)."""
    records, _ = read_trace(path, num_workers, warn=False)
    return [[r["duration_s"] for r in rs] for rs in records]


def quantile_draw(table: tuple[float, ...], u: float) -> float:
    """The piecewise-linear quantile function through ``table`` (at probabilities 0, 1/(n-1), ..., 1) at ``u``."""
    position = u * (len(table) - 1)
    i = min(int(position), len(table) - 2)
    frac = position - i
    return table[i] + (table[i + 1] - table[i]) * frac


def quantile_mean(table: tuple[float, ...] | np.ndarray) -> float:
    """Mean of :func:`quantile_draw` over ``u ~ U[0, 1]``: the trapezoid average of the table."""
    t = np.asarray(table, dtype=float)
    return float((t[:-1] + t[1:]).sum() / (2 * (len(t) - 1)))


def mean_noise(config: dict[str, Any], worker: int) -> float:
    """E[noise] of ``worker``'s compute time under a run's recorded configuration: the trapezoid mean of its
    quantile table (``timing = "empirical"``), else ``exp(sigma^2 / 2)`` of its lognormal jitter (``jitters[m]``,
    else ``jitter``)."""
    if config.get("timing") == "empirical" and config.get("timing_quantiles"):
        return quantile_mean(config["timing_quantiles"][worker])
    sigmas = config.get("jitters") or ()
    sigma = sigmas[worker] if sigmas else config.get("jitter", 0.0)
    return math.exp(sigma ** 2 / 2)


class Timing:
    """The cycles of the simulated workers: the model above, or a replayed trace."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.rng = np.random.default_rng(cfg.seed)
        self.speed = worker_speeds(cfg, self.rng)
        self.base_time, self.jitter, self.comm_time = cfg.base_time, cfg.jitter, cfg.comm_time
        self.jitters = list(cfg.jitters) if cfg.jitters else None
        self.quantiles = [tuple(q) for q in cfg.timing_quantiles] if cfg.timing == "empirical" else None
        self.trace, self.whole_cycles = read_trace(cfg.replay, cfg.workers) if cfg.replay else (None, False)
        self.drawn = [0] * cfg.workers

    def compute_time(self, worker: int) -> float:
        """Compute seconds of worker's next gradient (a trace's ``duration_s``, or a draw of the model)."""
        k = self.drawn[worker]
        self.drawn[worker] += 1
        if self.trace is not None:
            return self.trace[worker][k % len(self.trace[worker])]["duration_s"]
        if self.quantiles is not None:
            noise = quantile_draw(self.quantiles[worker], self.rng.random())
            return self.base_time * self.speed[worker] * noise
        sigma = self.jitter if self.jitters is None else self.jitters[worker]
        noise = math.exp(sigma * self.rng.standard_normal()) if sigma > 0 else 1.0
        return self.base_time * self.speed[worker] * noise

    def cycle(self, worker: int) -> dict[str, float]:
        """The parts of worker's next cycle (:data:`CYCLE_PARTS`): a replayed whole cycle, or
        ``comm_time + compute + comm_time``."""
        if self.trace is not None and self.whole_cycles:
            k = self.drawn[worker]
            self.drawn[worker] += 1
            recorded = self.trace[worker][k % len(self.trace[worker])]
            return {part: recorded.get(part, 0.0) for part in CYCLE_PARTS}
        compute = self.compute_time(worker)
        return {"pull_s": self.comm_time, "compute_s": compute, "slowdown_s": 0.0, "push_s": self.comm_time,
                "other_s": 0.0, "cycle_s": self.comm_time + compute + self.comm_time}


class CycleClock:
    """One worker's gradient cycle in parts, on the worker's own clock (``timer``, seconds).

    The cycle of a gradient runs from the moment its worker sent the previous
    push (or asked for its first grant) to the moment it sends this one, less
    the time the coordinator held it (``wait_s``, ``held_s``: in the grant's
    reply).  In it: the exchange (the previous push's round trip and this
    gradient's pull; ``pull_s`` is the pull's share, the rest is ``push_s``),
    the compute, the emulated slowness and ``other_s`` (batch selection and
    the like).  Call :meth:`granted` with the weights in hand, then
    :meth:`computed`, :meth:`slowed`, and :meth:`sent` right before the push
    goes out.
    """

    def __init__(self, timer: Callable[[], float] = time.perf_counter) -> None:
        self.timer = timer
        self.since = timer()
        self.parts: dict[str, float] = {}

    def granted(self, wait_s: float, held_s: float, pull_s: float) -> None:
        exchange = max(0.0, self.timer() - self.since - wait_s - held_s)
        pull = min(max(pull_s, 0.0), exchange)
        self.parts = {"pull_s": pull, "push_s": exchange - pull, "compute_s": 0.0, "slowdown_s": 0.0,
                      "wait_s": wait_s, "held_s": held_s}

    def computed(self, seconds: float) -> None:
        self.parts["compute_s"] = seconds

    def slowed(self, seconds: float) -> None:
        self.parts["slowdown_s"] += seconds

    def busy_s(self) -> float:
        """Seconds of this cycle so far, holds left out."""
        return self.timer() - self.since - self.parts["wait_s"] - self.parts["held_s"]

    def sent(self) -> dict[str, float]:
        """The push goes out now: the cycle's parts (:data:`CYCLE_PARTS` and the holds); the next cycle begins."""
        now = self.timer()
        p = self.parts
        cycle = now - self.since - p["wait_s"] - p["held_s"]
        p["other_s"] = max(0.0, cycle - p["pull_s"] - p["push_s"] - p["compute_s"] - p["slowdown_s"])
        p["cycle_s"] = cycle
        self.since, self.parts = now, {}
        return p


def trace_record(record: dict[str, Any]) -> dict[str, Any]:
    """The trace line of an applied gradient: :data:`TRACE_KEYS` and the cycle's parts it has."""
    return {k: record.get(k) for k in (*TRACE_KEYS, *CYCLE_PARTS, *HOLD_PARTS)
            if k in TRACE_KEYS or record.get(k) is not None}
