"""Timing helpers shared by server_update.py, stragglers.py and scaling.py.

The machine these run on is often shared (tests running beside them), so
every comparison is measured in the same run, interleaved round by round
(each candidate once per round, in the same order), and reported as a median.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable

import torch


def set_threads(threads: int) -> str:
    """Use ``threads`` intra-op threads (0: torch's default); returns a line for the report."""
    if threads > 0:
        torch.set_num_threads(threads)
    return f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s) of {os.cpu_count()} cores"


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate: ``repeats`` rounds, each calling every candidate once."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool, measured: str, target: str, why: str = "") -> str:
    """'meets' or 'MISSES' with the shortfall explained."""
    if ok:
        return f"{measured} (target {target}: **meets**)"
    return f"{measured} (target {target}: **MISSES**{'; ' + why if why else ''})"
