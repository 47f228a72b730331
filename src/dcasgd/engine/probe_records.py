"""Reading compensation-probe records: torch-free, so the study's plots can use it too.

A record (one probed push) holds ``lamstar_<estimate>``, the least-squares
best scale of each estimate's correction, or, where the run's lam was a
vector (dc-asgd-a on Ray), ``lamscale_<estimate>``: lam* as a multiple of the
run's ``lam``.
"""

from __future__ import annotations

import math
from typing import Any

SCALED = ("dc", "rank1", "fisher", "taylor")           # the estimates g + lam * h whose best lam* is fitted
PERCENTILES = (("p10", 0.10), ("p25", 0.25), ("median", 0.50), ("p75", 0.75), ("p90", 0.90))


def finite(value: Any) -> bool:
    """A real number (not a bool), finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def record_lamstar(record: dict[str, Any], name: str) -> float:
    """``lam*`` of ``name`` in a record: ``lamstar_<name>``, else ``lamscale_<name> * lam``; NaN if neither."""
    value = record.get(f"lamstar_{name}")
    if finite(value):
        return float(value)
    scale, lam = record.get(f"lamscale_{name}"), record.get("lam")
    return float(scale) * float(lam) if finite(scale) and finite(lam) else math.nan


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by linear interpolation (numpy's default); NaN if empty."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def percentiles(values: list[float]) -> dict[str, float] | None:
    """``count`` and the 10/25/50/75/90th percentiles (linear interpolation); None if empty."""
    if not values:
        return None
    return {"count": len(values), **{label: quantile(values, q) for label, q in PERCENTILES}}
