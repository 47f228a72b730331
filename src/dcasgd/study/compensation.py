"""``compensation.png``: how close each estimate comes to the gradient the worker missed.

Reads the ``probe`` lines of ``metrics.jsonl`` (see :mod:`dcasgd.probe`) and
plots the relative error ``||x - g(w_now)|| / ||g(w_now)||`` of the delayed
gradient, the DC-ASGD estimate and the exact first-order Taylor estimate,
(left) as the mean per staleness value and (right) against training progress
as a rolling median.  Pushes with staleness 0 are left out (there every
estimate is exact).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

SERIES = (("delayed", "delayed g(w_bak)", "tab:red", "o"),
          ("dc", "DC-ASGD estimate", "tab:blue", "s"),
          ("taylor", "exact Taylor g + H·Δw", "tab:green", "^"))


def load_probe_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The ``probe`` records of ``run_dir/metrics.jsonl`` in file order ([] when none or no file).

    A line that is not valid JSON (e.g. cut off by a crash) is skipped.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if '"probe"' not in line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("kind") == "probe":
            records.append(record)
    return records


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _rolling_median(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        out.append(statistics.median(chunk) if chunk else math.nan)
    return out


def plot_compensation(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the two-panel figure to ``path`` (PNG); returns the path."""
    if not records:
        raise ValueError("plot_compensation: no probe records (train with --probe-every K)")
    path = Path(path)
    stale = [r for r in records if int(r["staleness"]) >= 1]
    records = stale or records          # at staleness 0 every estimate is exact: nothing to show
    fig, (by_tau, by_epoch) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    log_ok = True
    staleness_values = sorted({int(r["staleness"]) for r in records})
    ordered = sorted(records, key=lambda r: (r.get("epoch", 0.0), r.get("version", 0)))
    window = max(1, len(ordered) // 20)
    for name, label, color, marker in SERIES:
        key = f"relerr_{name}"
        means = []
        for tau in staleness_values:
            vals = [r[key] for r in records if int(r["staleness"]) == tau and _finite(r.get(key))]
            means.append(statistics.fmean(vals) if vals else math.nan)
        by_tau.plot(staleness_values, means, marker=marker, color=color, label=label)
        epochs = [r.get("epoch", 0.0) for r in ordered]
        values = [r[key] if _finite(r.get(key)) else math.nan for r in ordered]
        by_epoch.plot(epochs, _rolling_median(values, window), color=color, label=label)
        log_ok = log_ok and any(_positive(v) for v in means)
    for ax in (by_tau, by_epoch):
        ax.set_ylabel("relative error ‖x − g(w_now)‖ / ‖g(w_now)‖ (ratio)")
        ax.grid(True, alpha=0.3)
        if log_ok:
            ax.set_yscale("log", nonpositive="mask")
    handles, labels = by_tau.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(SERIES), frameon=False)
    by_tau.set_xlabel("staleness τ (server versions)")
    by_tau.set_title(f"Error vs staleness (mean of {len(records)} probed pushes)")
    by_epoch.set_xlabel("training progress (epochs)")
    by_epoch.set_title(f"Error during training (rolling median, window {window})")
    fig.suptitle("Delay compensation quality: estimates of the gradient at the current weights")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_run_compensation(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """``compensation.png`` for a run directory (into ``out``, default the run dir); None without probe lines."""
    records = load_probe_records(run_dir)
    if not records:
        return None
    return plot_compensation(records, Path(out or run_dir) / "compensation.png")
