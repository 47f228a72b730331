"""``compensation.png``: how close each estimate comes to the gradient the worker missed.

Reads the ``probe`` lines of ``metrics.jsonl`` (see :mod:`dcasgd.engine.probe`,
whose docstring defines every field) and draws four panels:

- top: the relative error ``||x - g(w_now)|| / ||g(w_now)||`` of the delayed
  gradient, the DC-ASGD (diagonal) estimate, the rank-1 ``lam g g^T``
  estimate, the per-sample Fisher-diagonal estimate and the exact
  first-order Taylor estimate, (left) as the mean per staleness value and
  (right) against training progress as a rolling median;
- bottom left: the distribution of the least-squares best scale ``lam*`` of
  each compensated estimate (box: 25th-75th percentile, whiskers: 10th-90th,
  line: median), with the scale the run used and the natural scale 1 marked;
- bottom right: the median relative error of each compensated estimate at
  the run's scale and at its ``lam*``, against the delayed gradient's: the
  gap between the two bars is what a better scale would gain, what is left
  at ``lam*`` is the error of the estimate's direction (its shape).

Pushes with staleness 0 are left out (there every estimate is exact and
``lam*`` is undefined), and so is a field a record lacks (a run probed
before that field existed).  Records are read with the torch-free
:mod:`dcasgd.engine.probe_records`.
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

from ..engine.probe_records import SCALED, finite as _finite, percentiles, record_lamstar  # noqa: E402

SERIES = (("delayed", "delayed g(w_bak)", "tab:red", "o"),
          ("dc", "DC-ASGD diagonal g + λ g⊙g⊙Δw", "tab:blue", "s"),
          ("rank1", "rank-1 g + λ g (g·Δw)", "tab:purple", "v"),
          ("fisher", "Fisher diagonal g + λ F⊙Δw", "tab:orange", "D"),
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
    return _finite(value) and value > 0


def _rolling_median(values: list[float], window: int) -> list[float]:
    out = []
    for i in range(len(values)):
        chunk = [v for v in values[max(0, i - window + 1):i + 1] if math.isfinite(v)]
        out.append(statistics.median(chunk) if chunk else math.nan)
    return out


def _median_of(records: list[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in records if _finite(r.get(key))]
    return statistics.median(values) if values else math.nan


def _plot_errors(records: list[dict[str, Any]], by_tau, by_epoch) -> int:
    """The two top panels; returns how many series had data."""
    log_ok, drawn = True, 0
    staleness_values = sorted({int(r["staleness"]) for r in records})
    ordered = sorted(records, key=lambda r: (r.get("epoch", 0.0), r.get("version", 0)))
    window = max(1, len(ordered) // 20)
    for name, label, color, marker in SERIES:
        key = f"relerr_{name}"
        if not any(_finite(r.get(key)) for r in records):
            continue                     # a field these records do not have
        drawn += 1
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
        if log_ok and drawn:
            ax.set_yscale("log", nonpositive="mask")
    by_tau.set_xlabel("staleness τ (server versions)")
    by_tau.set_title(f"Error vs staleness (mean of {len(records)} probed pushes)")
    by_epoch.set_xlabel("training progress (epochs)")
    by_epoch.set_title(f"Error during training (rolling median, window {window})")
    return drawn


def _plot_lamstar(records: list[dict[str, Any]], ax) -> None:
    """Bottom left: the distribution of λ* per estimate, the run's λ and the natural scale 1 marked."""
    styles = {name: (label.split(" g")[0], color) for name, label, color, _ in SERIES}
    lams = [float(r["lam"]) for r in records if _finite(r.get("lam"))]
    run_lam = statistics.median(lams) if lams else math.nan
    forms = {r.get("lam_form") for r in records}
    lam_name = "λ₀" if forms == {"dc-asgd-a"} else "λ"
    positions, names, extremes = [], [], []
    for name in SCALED:
        values = [v for v in (record_lamstar(r, name) for r in records) if math.isfinite(v)]
        if not values:
            continue
        spread = percentiles(values)
        p10, p25, p50, p75, p90 = (spread[k] for k in ("p10", "p25", "median", "p75", "p90"))
        x = len(positions)
        label, color = styles[name]
        ax.add_patch(plt.Rectangle((x - 0.3, p25), 0.6, p75 - p25, facecolor=color, alpha=0.35, edgecolor=color))
        ax.plot([x - 0.3, x + 0.3], [p50, p50], color=color, linewidth=2.5)
        ax.plot([x, x], [p10, p25], color=color)
        ax.plot([x, x], [p75, p90], color=color)
        ax.annotate(f"{p50:.3g}", (x + 0.32, p50), fontsize=8, va="center")
        positions.append(x)
        names.append(f"{label}\n(n={len(values)})")
        extremes += [p10, p50, p90]
        if name in ("dc", "rank1") or (name == "fisher" and forms == {"dc-asgd-c"}):
            if math.isfinite(run_lam):
                ax.plot([x], [run_lam], "x", color="black", markersize=9, mew=2,
                        label=f"the run's {lam_name} = {run_lam:g}" if name == "dc" else None)
        if name in ("fisher", "taylor"):
            ax.plot([x], [1.0], "D", color="black", fillstyle="none", markersize=8,
                    label="1: the measured curvature as is" if name == "taylor" else None)
    if not positions:
        ax.text(0.5, 0.5, "no λ* in these records", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    nonzero = [abs(v) for v in extremes + ([run_lam] if math.isfinite(run_lam) else []) + [1.0] if v != 0]
    ax.set_yscale("symlog", linthresh=max(1e-12, min(nonzero) / 2))
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(positions, names, fontsize=8)
    ax.set_xlim(-0.6, len(positions) - 0.4)
    ax.set_ylabel("best scale λ* (least squares; symlog axis)")
    ax.set_title("Best scale λ*: box 25–75%, whiskers 10–90%, line median")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _plot_scale_or_shape(records: list[dict[str, Any]], ax) -> None:
    """Bottom right: median error at the run's scale and at λ*, against the delayed gradient's."""
    styles = {name: (label.split(" g")[0], color) for name, label, color, _ in SERIES}
    names, used, best = [], [], []
    for name in SCALED:
        at_run, at_best = _median_of(records, f"relerr_{name}"), _median_of(records, f"relerr_{name}_at_lamstar")
        if math.isfinite(at_run) or math.isfinite(at_best):
            names.append(name)
            used.append(at_run)
            best.append(at_best)
    if not names:
        ax.text(0.5, 0.5, "no λ* in these records", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    xs = range(len(names))
    for x, name, u, b in zip(xs, names, used, best):
        color = styles[name][1]
        ax.bar(x - 0.2, u, 0.4, color=color, alpha=0.9, label="at the run's scale" if x == 0 else None)
        ax.bar(x + 0.2, b, 0.4, color=color, alpha=0.35, hatch="//", edgecolor=color,
               label="at its best scale λ*" if x == 0 else None)
    delayed = _median_of(records, "relerr_delayed")
    if math.isfinite(delayed):
        ax.axhline(delayed, color="tab:red", linestyle="--", label=f"delayed g(w_bak): {delayed:.3g}")
    if all(_positive(v) for v in used + best if math.isfinite(v)):
        ax.set_yscale("log")
    ax.set_xticks(list(xs), [styles[n][0] for n in names], fontsize=8)
    ax.set_ylabel("median relative error (ratio)")
    ax.set_title("Scale or shape? Median error at the run's scale vs at λ*")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def plot_compensation(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the four-panel figure to ``path`` (PNG); returns the path."""
    if not records:
        raise ValueError("plot_compensation: no probe records (train with --probe-every K)")
    path = Path(path)
    stale = [r for r in records if int(r["staleness"]) >= 1]
    records = stale or records          # at staleness 0 every estimate is exact: nothing to show
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5), constrained_layout=True)
    drawn = _plot_errors(records, axes[0][0], axes[0][1])
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][0].legend(handles, labels, fontsize=8, loc="best")
    _plot_lamstar(records, axes[1][0])
    _plot_scale_or_shape(records, axes[1][1])
    fig.suptitle("Delay compensation quality: estimates of the gradient at the current weights"
                 + ("" if drawn else " (no relative errors in these records)"))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_run_compensation(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """``compensation.png`` for a run directory (into ``out``, default the run dir); None without probe lines."""
    records = load_probe_records(run_dir)
    if not records:
        return None
    return plot_compensation(records, Path(out or run_dir) / "compensation.png")
