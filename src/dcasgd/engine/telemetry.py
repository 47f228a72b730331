"""Run telemetry: staleness statistics and the live progress line.

:class:`StalenessStats` counts staleness overall and per worker (histograms,
nearest-rank percentiles), pushes and waiting time per worker;
:class:`Progress` prints one status line.  What goes into ``metrics.jsonl``
is described in :mod:`dcasgd.io.metrics`.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from typing import IO, Any


def percentile_from_counts(counts: Counter, q: float) -> int:
    """Smallest value v with at least q% of the samples <= v (nearest-rank percentile)."""
    total = sum(counts.values())
    if total == 0:
        return 0
    rank = max(1, math.ceil(q / 100.0 * total))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)


def distribution(counts: Counter) -> dict[str, Any]:
    """Histogram {staleness: count} with mean, p50, p90, p99 and max."""
    total = sum(counts.values())
    return {
        "count": total,
        "mean": (sum(v * c for v, c in counts.items()) / total) if total else 0.0,
        "p50": percentile_from_counts(counts, 50),
        "p90": percentile_from_counts(counts, 90),
        "p99": percentile_from_counts(counts, 99),
        "max": max(counts) if counts else 0,
        "histogram": {str(v): counts[v] for v in sorted(counts)},
    }


class StalenessStats:
    """Staleness counts overall and per worker, pushes and waiting time per worker."""

    def __init__(self, num_workers: int) -> None:
        self.overall: Counter = Counter()
        self.per_worker = [Counter() for _ in range(num_workers)]
        self.wait_s = [0.0] * num_workers

    def record(self, worker: int, staleness: int) -> None:
        self.overall[staleness] += 1
        self.per_worker[worker][staleness] += 1

    def add_wait(self, worker: int, seconds: float) -> None:
        self.wait_s[worker] += seconds

    @property
    def pushes(self) -> list[int]:
        return [sum(c.values()) for c in self.per_worker]

    def slowest_worker(self) -> int:
        return min(range(len(self.per_worker)), key=lambda m: (self.pushes[m], m))

    def summary(self) -> dict[str, Any]:
        return {
            "overall": distribution(self.overall),
            "per_worker": [distribution(c) for c in self.per_worker],
            "pushes_per_worker": self.pushes,
            "wait_s_per_worker": [round(w, 9) for w in self.wait_s],
        }

    def state_dict(self) -> dict[str, Any]:
        return {"overall": dict(self.overall), "per_worker": [dict(c) for c in self.per_worker],
                "wait_s": list(self.wait_s)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.overall = Counter({int(k): v for k, v in sd["overall"].items()})
        self.per_worker = [Counter({int(k): v for k, v in c.items()}) for c in sd["per_worker"]]
        self.wait_s = list(sd["wait_s"])


class Progress:
    """One live status line on stderr (rewritten in place on a terminal, else every ``every_s``)."""

    def __init__(self, total_epochs: float, enabled: bool = True, every_s: float = 5.0,
                 stream: IO[str] | None = None) -> None:
        stream = sys.stderr if stream is None else stream     # (looked up now: sys.stderr may be replaced)
        self.total_epochs, self.enabled, self.every_s, self.stream = total_epochs, enabled, every_s, stream
        self.tty = enabled and stream.isatty()
        self.start = time.perf_counter()
        self._last = -math.inf

    def update(self, epoch: float, loss: float, test_error: float | None, updates: int,
               stats: StalenessStats | None = None, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < (0.5 if self.tty else self.every_s):
            return
        self._last = now
        elapsed = max(now - self.start, 1e-9)
        parts = [f"epoch {epoch:6.2f}/{self.total_epochs:g}", "loss -" if math.isnan(loss) else f"loss {loss:.4f}"]
        if test_error is not None:
            parts.append(f"test err {test_error:5.2f}%")
        parts.append(f"{updates / elapsed:7.1f} upd/s")
        if stats is not None and stats.overall:
            parts.append(f"stale p50/p99 {percentile_from_counts(stats.overall, 50)}/"
                         f"{percentile_from_counts(stats.overall, 99)}")
            parts.append(f"slowest w{stats.slowest_worker()}")
        line = " | ".join(parts)
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
