"""The plots of ``dcasgd report``: every line drawn from the runs' summaries (see :mod:`.findings`).

- ``curves.png``: test error versus epochs, a panel per group x M, mean over seeds;
- ``time_curves.png``: test error versus simulated seconds, a panel per group x M, with
  sequential SGD, its target and the time budget (the analog of Fig. 3 of Zheng et al.);
- ``speedup.png``: speedup to sequential SGD's error versus M, a line per method and the
  throughput ideal, a panel per group;
- ``staleness.png``: the staleness distribution of applied gradients, per cluster x M;
- ``stability.png``: validation error versus lr in the lr-selection runs;
- ``lambda.png``: DC-ASGD-a's final error versus lam0 (when lambda runs exist).

Every figure has one legend outside the panels and, at its foot, the command that
made the runs and the one that made the report.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from .compare import METHODS  # noqa: E402
from .findings import STABLE_FACTOR, Study  # noqa: E402

LABELS = {"sequential": "Sequential SGD", "ssgd": "SSGD (sync)", "asgd": "ASGD", "ssp": "SSP",
          "staleness": "Staleness-scaled lr", "delay-adaptive": "Delay-adaptive", "gap-aware": "Gap-aware",
          "adadelay": "AdaDelay", "dana": "DANA", "dc-asgd-c": "DC-ASGD-c", "dc-asgd-a": "DC-ASGD-a",
          "msync": "m-sync SGD", "rennala": "Rennala SGD", "ringmaster": "Ringmaster ASGD",
          "ringmaster-stop": "Ringmaster (stops)"}
COLORS = {"sequential": "black", "ssgd": "tab:blue", "asgd": "tab:orange", "ssp": "tab:purple",
          "staleness": "tab:brown", "delay-adaptive": "tab:pink", "gap-aware": "tab:gray", "adadelay": "tab:olive",
          "dana": "tab:cyan", "dc-asgd-c": "tab:green", "dc-asgd-a": "tab:red", "msync": "navy",
          "rennala": "darkgoldenrod", "ringmaster": "darkviolet", "ringmaster-stop": "magenta"}


def style(method: str) -> dict[str, Any]:
    return {"color": COLORS[method], "label": LABELS[method], "linestyle": "--" if method == "sequential" else "-",
            "linewidth": 2.0 if method.startswith("dc-asgd") or method == "sequential" else 1.2}


def _grid(rows: int, cols: int, width: float = 3.8, height: float = 2.9):
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 2.2, height * rows + 0.6), squeeze=False)
    return fig, axes


def _finish(fig, axes, path: Path, title: str, facts: dict[str, Any]) -> Path:
    """One legend right of the panels, the commands at the foot, then save."""
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    order = [LABELS[m] for m in METHODS if LABELS[m] in seen] + [k for k in seen if k not in LABELS.values()]
    height = fig.get_size_inches()[1]
    right = 1.0
    if seen:
        legend = fig.legend([seen[k] for k in order], order, loc="center right", fontsize=8, frameon=False)
        right = 1 - legend.get_window_extent(fig.canvas.get_renderer()).width / fig.bbox.width - 0.01
    fig.suptitle(title, fontsize=11)
    fig.text(0.005, 0.003, f"runs: {facts.get('runs_command')}\nreport: {facts.get('report_command')}",
             fontsize=6, ha="left", va="bottom", color="dimgray")
    fig.tight_layout(rect=(0, 0.45 / height, right, 1 - 0.15 / height))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def mean_curve(runs: list[dict[str, Any]], x: str) -> tuple[list[float], list[float]]:
    """Mean over runs of ``x`` and test error at each evaluation index both runs share (finite errors only)."""
    n = min(len(r.get("curve") or []) for r in runs)
    xs, ys = [], []
    for i in range(n):
        errors = [r["curve"][i]["test_error"] for r in runs]
        errors = [e for e in errors if isinstance(e, (int, float)) and math.isfinite(e)]
        if errors:
            xs.append(statistics.fmean(r["curve"][i][x] for r in runs))
            ys.append(statistics.fmean(errors))
    return xs, ys


def _axes_style(ax, xlabel: str, ylabel: str, logx: bool = False) -> None:
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(plain)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(which="both", labelsize=7)
    ax.grid(True, which="both", alpha=0.3)


def _panel_workers(study: Study) -> list[int]:
    workers = sorted({w for cells in study.final.values() for _, w in cells if w > 1})
    return workers or [1]


def _wrapped(panels: int, per_row: int = 1):
    """A figure of ``panels`` panels, up to 4 a row, rows broken after a multiple of ``per_row``; extra axes hidden."""
    cols = min(panels, per_row * max(1, 4 // per_row))
    fig, axes = _grid(math.ceil(panels / cols), cols)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, axes


def plot_curves(study: Study, facts: dict[str, Any], path: Path) -> Path:
    workers = _panel_workers(study)
    fig, axes = _wrapped(len(study.groups) * len(workers), len(workers))
    for row, group in enumerate(study.groups):
        cells = study.final[group.name]
        for col, w in enumerate(workers):
            ax = axes.flat[row * len(workers) + col]
            for method in METHODS:
                runs = cells.get((method, 1 if method == "sequential" else w))
                if runs:
                    ax.plot(*mean_curve(runs, "epoch"), **style(method))
            ax.set_title(f"{group.name}, M={w}", fontsize=9)
            _axes_style(ax, "epochs", "test error (%)")
    return _finish(fig, axes, path, "Test error versus epochs, mean over seeds (sequential SGD dashed, M = 1)",
                   facts)


def plot_time_curves(study: Study, facts: dict[str, Any], path: Path) -> Path:
    """Test error versus simulated time, a panel per group x M, with sequential SGD and its target in each."""
    workers = _panel_workers(study)
    groups = {g["name"]: g for g in facts["groups"]}
    fig, axes = _wrapped(len(study.groups) * len(workers), len(workers))
    for row, group in enumerate(study.groups):
        cells, g = study.final[group.name], groups.get(group.name, {})
        for col, w in enumerate(workers):
            ax = axes.flat[row * len(workers) + col]
            for method in METHODS:
                runs = cells.get((method, 1 if method == "sequential" else w))
                if runs:
                    xs, ys = mean_curve(runs, "time_s")
                    keep = [(x, y) for x, y in zip(xs, ys) if x > 0]        # log axis: the start is at t = 0
                    if keep:
                        ax.plot(*zip(*keep), **style(method))
            if g.get("target"):
                ax.axhline(g["target"]["error"], color="black", linestyle=":", linewidth=1,
                           label="target (sequential SGD's final error)")
            if g.get("time_budget_s"):
                ax.axvline(g["time_budget_s"], color="dimgray", linestyle="-.", linewidth=1, label="time budget")
            ax.set_title(f"{group.name}, M={w}", fontsize=9)
            _axes_style(ax, "simulated time (s)", "test error (%)", logx=True)
    return _finish(fig, axes, path, "Test error versus simulated time (sequential SGD: M = 1, dashed); "
                   "mean over seeds", facts)


def plot_speedup(study: Study, facts: dict[str, Any], path: Path) -> Path:
    """Speedup to sequential SGD's error versus M, a panel per group: a line per method (mean over the seeds that
    reached it; hollow markers where not every seed did) and the throughput ideal."""
    groups = [g for g in facts["groups"] if g.get("speedups")]
    fig, axes = _wrapped(max(1, len(groups)))
    for index, g in enumerate(groups):
        ax = axes.flat[index]
        ideal = [(1, 1.0)] * (1 in study.grid["workers"]) + [(i["workers"], i["mean"]) for i in g["ideal"] if i["mean"]]
        if ideal:
            ax.plot(*zip(*ideal), color="black", linestyle="--", linewidth=1.5, marker="s", markersize=3,
                    label="throughput ideal")
        for method in METHODS:
            rows = sorted((r for r in g["speedups"] if r["method"] == method and r["mean"]), key=lambda r: r["workers"])
            if rows:
                line, = ax.plot([r["workers"] for r in rows], [r["mean"] for r in rows], marker="o", markersize=4,
                                **style(method))
                for r in rows:
                    if r["reached"] < r["runs"]:
                        ax.plot(r["workers"], r["mean"], "o", markersize=7, mfc="white", color=line.get_color())
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_title(g["name"], fontsize=9)
        _axes_style(ax, "workers M", "speedup over sequential SGD", logx=True)
        ticks = sorted({r["workers"] for r in g["speedups"]} | {w for w, _ in ideal})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    return _finish(fig, axes, path, "Speedup to sequential SGD's final error versus M (times sooner; mean over the "
                   "seeds that reached it, hollow: not every seed did)", facts)


def plot_staleness(study: Study, facts: dict[str, Any], path: Path) -> Path:
    clusters = list(dict.fromkeys(g.cluster for g in study.groups))
    first = {c: next(g for g in study.groups if g.cluster == c) for c in clusters}
    workers = [w for w in _panel_workers(study) if w > 1] or [1]
    fig, axes = _wrapped(len(clusters) * len(workers), len(workers))
    for row, cluster in enumerate(clusters):
        group = first[cluster]
        for col, w in enumerate(workers):
            ax = axes.flat[row * len(workers) + col]
            for method in METHODS:
                runs = study.final[group.name].get((method, w))
                if method in ("sequential", "ssgd") or not runs:
                    continue
                counts: Counter = Counter()
                for r in runs:
                    counts.update({int(k): v for k, v in r["staleness"]["overall"]["histogram"].items()})
                total = sum(counts.values())
                if total:
                    xs = sorted(counts)
                    ax.step(xs, [counts[x] / total for x in xs], where="mid", **style(method))
            ax.set_title(f"{group.name}, M={w}", fontsize=9)
            _axes_style(ax, "staleness τ (server versions)", "fraction of updates")
    return _finish(fig, axes, path, "Staleness of applied gradients, all seeds (one group per cluster; "
                   "SSGD applies only fresh averages)", facts)


def plot_stability(study: Study, facts: dict[str, Any], path: Path) -> Path:
    names = [s["lr_group"] for s in facts["stability"]]
    workers = sorted({w for n in names for _, w in study.lr_runs[n] if w > 1}) or [1]
    fig, axes = _wrapped(max(1, len(names)) * len(workers), len(workers))
    for row, name in enumerate(names):
        by_key = study.lr_runs[name]
        for col, w in enumerate(workers):
            ax = axes.flat[row * len(workers) + col]
            for method in METHODS:
                runs = by_key.get((method, 1 if method == "sequential" else w))
                if not runs:
                    continue
                lrs = [r["config"]["lr"] for r in runs]
                errors = [r["final_test_error"] for r in runs]
                points = [(x, e) for x, e in zip(lrs, errors) if e is not None]
                if points:
                    ax.plot(*zip(*points), marker="o", markersize=3, **style(method))
                bad = [(x, e) for x, e, r in zip(lrs, errors, runs) if r.get("diverged") and e is not None]
                if bad:
                    ax.plot(*zip(*bad), "x", color=COLORS[method], markersize=9, mew=2)
            ax.set_title(f"{name}, M={w}", fontsize=9)
            _axes_style(ax, "learning rate", "final validation error (%)", logx=True)
            lrs = sorted({x for runs in by_key.values() for r in runs for x in [r["config"]["lr"]]})
            ax.set_xticks(lrs, [f"{x:g}" for x in lrs])
            ax.xaxis.set_minor_formatter(NullFormatter())
    return _finish(fig, axes, path, f"Validation error versus lr (lr-selection runs, seed 0; × diverged; "
                   f"stable: not diverged and within {STABLE_FACTOR:g} x the method's best)", facts)


def plot_lambda(study: Study, facts: dict[str, Any], path: Path) -> Path:
    names = list(study.lambda_runs)
    fig, axes = _wrapped(len(names))
    for col, name in enumerate(names):
        ax, runs = axes.flat[col], study.lambda_runs[name]
        w = runs[0]["config"]["workers"]
        points = [(r["config"]["lam0"], r["final_test_error"]) for r in runs if r["final_test_error"] is not None]
        if points:
            ax.plot(*zip(*points), "o-", color=COLORS["dc-asgd-a"], label="DC-ASGD-a over λ₀ (seed 0)")
        for method in ("asgd", "ssgd", "dc-asgd-a"):
            cell = next((c for g in facts["groups"] if g["name"] == name for c in g["cells"]
                         if c["method"] == method and c["workers"] == w), None)
            if cell and cell["mean"] is not None:
                ax.axhline(cell["mean"], color=COLORS[method], linestyle="--", linewidth=1,
                           label=f"{LABELS[method]}, mean over seeds")
        ax.set_title(f"{name}, M={w}", fontsize=9)
        _axes_style(ax, "λ₀ (DC-ASGD-a)", "final test error (%)", logx=True)
        lams = [r["config"]["lam0"] for r in runs]
        ax.set_xticks(lams, [f"{x:g}" for x in lams])
        ax.xaxis.set_minor_formatter(NullFormatter())
    return _finish(fig, axes, path, "Final test error versus DC-ASGD-a's λ₀", facts)
