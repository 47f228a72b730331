"""``dcasgd report DIR``: tables, findings and plots from a ``dcasgd compare`` directory.

Writes into DIR (or ``--to``):

- ``table.md`` / ``table.csv``: final test error (percent) mean +- sample std
  over seeds per method and M, in the layout of Table 1 of Zheng et al.
  (rows: methods, columns: M), with the sequential baseline, the number of
  seeds, the chosen learning rates, the command and the git commit;
- ``findings.md``: at each M, whether the paper's ordering
  DC-ASGD-a < DC-ASGD-c < min(ASGD, SSGD) held, with the spread;
- ``curves.png``, ``staleness.png``, ``lambda.png``, ``stability.png`` and,
  when probe records exist, ``compensation.png``.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..errors import InputError  # noqa: E402
from .compare import METHODS, method_of  # noqa: E402


class ReportError(InputError):
    """A directory that holds no study, or a run file that cannot be read."""

LABELS = {"sequential": "Sequential SGD", "ssgd": "SSGD (sync)", "asgd": "ASGD", "ssp": "SSP",
          "staleness": "Staleness-scaled lr", "dc-asgd-c": "DC-ASGD-c", "dc-asgd-a": "DC-ASGD-a"}
COLORS = {"sequential": "black", "ssgd": "tab:blue", "asgd": "tab:orange", "ssp": "tab:purple",
          "staleness": "tab:brown", "dc-asgd-c": "tab:green", "dc-asgd-a": "tab:red"}


def load_runs(directory: Path) -> list[dict[str, Any]]:
    """Every summary.json directly under ``directory`` (one per run directory)."""
    runs = []
    for path in sorted(Path(directory).glob("*/summary.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ReportError(f"report: cannot read {path} ({exc})") from None
        summary["_dir"] = str(path.parent)
        summary["_method"] = method_of(summary["config"])
        runs.append(summary)
    return runs


def group(runs: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[(run["_method"], run["config"]["workers"])].append(run)
    for key in groups:
        groups[key].sort(key=lambda r: r["config"]["seed"])
    return groups


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


# ---------------------------------------------------------------- tables


def write_tables(groups, meta: dict[str, Any], out: Path) -> list[Path]:
    workers = sorted({m for _, m in groups})
    methods = [m for m in METHODS if any(k[0] == m for k in groups)]
    chosen = meta.get("chosen_lr", {})
    lr_grid = meta.get("grid", {}).get("lr_grid", [])
    edges = {min(lr_grid), max(lr_grid)} if len(lr_grid) > 1 else set()
    seeds = sorted({r["config"]["seed"] for runs in groups.values() for r in runs})
    rows_csv = [["method", "workers", "mean_error_pct", "std_error_pct", "seeds", "lr", "lr_at_grid_edge", "errors"]]
    any_edge = False
    header = "| method | " + " | ".join(f"M={m}" for m in workers) + " |"
    lines = [
        "# Final test error (%), mean ± std over seeds",
        "",
        f"_Command: `{meta.get('command', '?')}`; git commit: `{meta.get('git_commit', '?')}`; "
        f"seeds: {len(seeds)} ({', '.join(map(str, seeds))}); regenerate the table with "
        f"`dcasgd report {meta.get('run_dir', 'DIR')}`._",
        "",
        header,
        "|---|" + "---|" * len(workers),
    ]
    for method in methods:
        cells = []
        for m in workers:
            runs = groups.get((method, m))
            if not runs:
                cells.append("")
                continue
            errors = [r["final_test_error"] for r in runs]
            mean, std = mean_std(errors)
            lr = chosen.get(f"{method}@M{m}", runs[0]["config"]["lr"])
            diverged = sum(bool(r.get("diverged")) for r in runs)
            edge = lr in edges
            any_edge = any_edge or edge
            cells.append(f"{mean:.2f} ± {std:.2f} (n={len(runs)}, lr {lr:g}{' (edge)' if edge else ''}"
                         f"{', %d diverged' % diverged if diverged else ''})")
            rows_csv.append([method, m, f"{mean:.4f}", f"{std:.4f}", len(runs), lr, int(edge),
                             ";".join(f"{e:.4f}" for e in errors)])
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    lines += ["", "Learning rates were chosen per method and M on a validation split held out from the "
              "training set (never on the test set); `lr` is the chosen value."]
    if any_edge:
        lines += ["", f"_(edge)_: the chosen lr is the smallest or largest of the grid "
                  f"({', '.join(f'{v:g}' for v in lr_grid)}), so a wider grid might do better there."]
    md, csv_path = out / "table.md", out / "table.csv"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows_csv)
    return [md, csv_path]


def write_findings(groups, out: Path) -> Path:
    """Per M: did DC-ASGD-a < DC-ASGD-c < min(ASGD, SSGD) hold, and by more than the spread?"""
    lines = ["# Does the paper's ordering hold?", "",
             "Paper (Table 1, CIFAR-10): DC-ASGD-a < DC-ASGD-c < ASGD, SSGD at M = 4 and 8. "
             "Here, mean ± std of final test error (%) over seeds; a gap counts as clear when it is "
             "larger than the sum of the two standard deviations.", ""]
    workers = sorted({m for _, m in groups if m > 1})
    for m in workers:
        stats = {k: mean_std([r["final_test_error"] for r in groups[(k, m)]])
                 for k in ("dc-asgd-a", "dc-asgd-c", "asgd", "ssgd") if (k, m) in groups}
        if not {"dc-asgd-a", "dc-asgd-c", "asgd", "ssgd"} <= set(stats):
            continue
        base_name = min(("asgd", "ssgd"), key=lambda k: stats[k][0])
        pairs = [("dc-asgd-a", "dc-asgd-c"), ("dc-asgd-c", base_name)]
        verdicts = []
        for lo, hi in pairs:
            (a, sa), (b, sb) = stats[lo], stats[hi]
            if a < b:
                verdicts.append(f"{LABELS[lo]} < {LABELS[hi]} ({a:.2f} ± {sa:.2f} vs {b:.2f} ± {sb:.2f}; "
                                f"{'clear' if b - a > sa + sb else 'within the spread'})")
            else:
                verdicts.append(f"{LABELS[lo]} ≥ {LABELS[hi]} ({a:.2f} ± {sa:.2f} vs {b:.2f} ± {sb:.2f}): "
                                f"does not hold")
        held = all(stats[lo][0] < stats[hi][0] for lo, hi in pairs)
        lines.append(f"- **M={m}: ordering {'held' if held else 'did not hold'}.** " + "; ".join(verdicts) + ".")
    path = out / "findings.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- plots


def _panels(n: int, rows: int = 1, width: float = 4.2, height: float = 3.4):
    fig, axes = plt.subplots(rows, n, figsize=(width * n, height * rows), squeeze=False)
    return fig, axes


def _figure_legend(fig, axes) -> None:
    """One legend under the panels with every method that appears in any of them."""
    seen: dict[str, Any] = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="lower center", ncol=min(7, len(seen)), fontsize=9)


def plot_curves(groups, path: Path) -> Path:
    workers = sorted({m for _, m in groups})
    fig, axes = _panels(len(workers), rows=2)
    for col, m in enumerate(workers):
        for method in METHODS:
            runs = groups.get((method, m)) or (groups.get((method, 1)) if method == "sequential" else None)
            if not runs:
                continue
            n_points = min(len(r["curve"]) for r in runs)
            epoch = [statistics.fmean(r["curve"][i]["epoch"] for r in runs) for i in range(n_points)]
            time_s = [statistics.fmean(r["curve"][i]["time_s"] for r in runs) for i in range(n_points)]
            error = [statistics.fmean(r["curve"][i]["test_error"] for r in runs) for i in range(n_points)]
            style = dict(color=COLORS[method], label=LABELS[method], linestyle="--" if method == "sequential" else "-")
            axes[0][col].plot(epoch, error, **style)
            if method != "sequential" or m == 1:
                axes[1][col].plot(time_s, error, **style)
        axes[0][col].set_title(f"M = {m} workers")
        axes[0][col].set_xlabel("epochs")
        axes[1][col].set_xlabel("simulated time (s)")
        for row in (0, 1):
            axes[row][col].set_ylabel("test error (%)")
            axes[row][col].set_yscale("log")
            axes[row][col].grid(True, which="both", alpha=0.3)
    _figure_legend(fig, axes)
    fig.suptitle("Test error versus epochs (top) and simulated time (bottom); mean over seeds")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_staleness(groups, path: Path) -> Path:
    workers = sorted({m for _, m in groups if m > 1})
    fig, axes = _panels(max(1, len(workers)))
    for col, m in enumerate(workers):
        ax = axes[0][col]
        for method in ("asgd", "ssp", "staleness", "dc-asgd-c", "dc-asgd-a"):
            runs = groups.get((method, m))
            if not runs:
                continue
            counts: Counter = Counter()
            for r in runs:
                counts.update({int(k): v for k, v in r["staleness"]["overall"]["histogram"].items()})
            total = sum(counts.values())
            xs = sorted(counts)
            ax.step(xs, [counts[x] / total for x in xs], where="mid", color=COLORS[method], label=LABELS[method])
        ax.set_title(f"M = {m} workers")
        ax.set_xlabel("staleness τ (server versions)")
        ax.set_ylabel("fraction of updates")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    _figure_legend(fig, axes)
    fig.suptitle("Staleness distribution of applied gradients (all seeds)")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lambda(lambda_runs, groups, path: Path) -> Path:
    fig, axes = _panels(1, width=5.5, height=4)
    ax = axes[0][0]
    points = sorted((r["config"]["lam0"], r["final_test_error"]) for r in lambda_runs)
    if points:
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=COLORS["dc-asgd-a"],
                label="DC-ASGD-a (seed 0)")
    for method in ("asgd", "ssgd"):
        if (method, 8) in groups:
            mean, _ = mean_std([r["final_test_error"] for r in groups[(method, 8)]])
            ax.axhline(mean, color=COLORS[method], linestyle="--", label=f"{LABELS[method]} (mean)")
    ax.set_xscale("log")
    ax.set_xlabel("λ₀ (DC-ASGD-a variance-control parameter)")
    ax.set_ylabel("final test error (%)")
    ax.set_title("Final error versus λ₀ at M = 8")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stability(lr_runs, path: Path) -> Path:
    by_key = group(lr_runs)
    workers = [m for m in (16, 32) if any(k[1] == m for k in by_key)] or sorted({k[1] for k in by_key})[-2:]
    fig, axes = _panels(max(1, len(workers)), width=4.8, height=3.8)
    for col, m in enumerate(workers):
        ax = axes[0][col]
        for method in ("asgd", "dc-asgd-a"):
            runs = sorted(by_key.get((method, m), []), key=lambda r: r["config"]["lr"])
            if not runs:
                continue
            lrs = [r["config"]["lr"] for r in runs]
            errs = [r["final_test_error"] for r in runs]
            ax.plot(lrs, errs, "o-", color=COLORS[method], label=LABELS[method])
            bad = [(lr, e) for lr, e, r in zip(lrs, errs, runs) if r.get("diverged")]
            if bad:
                ax.plot(*zip(*bad), "x", color=COLORS[method], markersize=12, mew=2,
                        label=f"{LABELS[method]} diverged")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation error (%)")
        ax.set_title(f"M = {m} workers")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Which learning rates survive? (× = diverged)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: Path, to: Path | None = None, probe_run: Path | None = None) -> list[Path]:
    out = to or run_dir
    if not run_dir.is_dir():
        raise ReportError(f"report: {run_dir} is not a directory")
    final = load_runs(run_dir / "final")
    if not final:
        raise ReportError(f"report: {run_dir} holds no study (no finished runs under {run_dir / 'final'}); "
                          f"run 'dcasgd compare {run_dir}' first")
    meta_path = run_dir / "compare.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    except ValueError:
        raise ReportError(f"report: {meta_path} is not valid JSON") from None
    meta["run_dir"] = str(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = group(final)
    written = write_tables(groups, meta, out)
    written.append(write_findings(groups, out))
    written.append(plot_curves(groups, out / "curves.png"))
    written.append(plot_staleness(groups, out / "staleness.png"))
    lambda_runs = load_runs(run_dir / "lambda")
    if lambda_runs:
        written.append(plot_lambda(lambda_runs, groups, out / "lambda.png"))
    lr_runs = load_runs(run_dir / "lr")
    if lr_runs:
        written.append(plot_stability(lr_runs, out / "stability.png"))
    for candidate in ([probe_run] if probe_run else []) + [run_dir]:
        compensation = write_compensation(candidate, out)
        if compensation:
            written += compensation
            break
    return written


def write_compensation(run_dir: Path, out: Path) -> list[Path]:
    """compensation.png and compensation.md from the probe records of ``run_dir`` (a run directory)."""
    from .compensation import load_probe_records, plot_compensation
    records = load_probe_records(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    summary_path = run_dir / "summary.json"
    if not records or not summary_path.exists():
        return []
    summary = json.loads(summary_path.read_text())
    probe, cfg = summary["probe"], summary["config"]
    png = plot_compensation(records, out / "compensation.png")
    text = "\n".join([
        "# How well does delay compensation approximate the fresh gradient?",
        "",
        f"_Run: `{summary.get('command', '?')}` ({cfg['rule']}, M={cfg['workers']}, {cfg['model']} on "
        f"{cfg['dataset']}); every {probe['every']}th push probed, {probe['count_stale']} probes with "
        f"staleness >= 1._",
        "",
        "Median relative error ||x - g(w_now)|| / ||g(w_now)|| of each estimate x of the fresh gradient:",
        "",
        "| estimate | median relative error | ratio of medians to the delayed gradient | mean relative error |",
        "|---|---|---|---|",
        f"| delayed gradient g(w_bak) | {probe['median_relerr_delayed']:.4f} | 1 | "
        f"{probe['mean_relerr_delayed']:.4f} |",
        f"| DC-compensated g + λ g⊙g⊙(w_now − w_bak) | {probe['median_relerr_dc']:.4f} | "
        f"{probe['median_ratio_dc_to_delayed']:.3f} | {probe['mean_relerr_dc']:.4f} |",
        f"| exact first-order Taylor g + H(w_now − w_bak) | {probe['median_relerr_taylor']:.4f} | "
        f"{probe['median_ratio_taylor_to_delayed']:.3f} | {probe['mean_relerr_taylor']:.4f} |",
        "",
        f"In the median, the cheap diagonal term removes {100 * (1 - probe['median_ratio_dc_to_delayed']):.1f}% "
        f"of the delayed gradient's error and the exact first-order Taylor term "
        f"{100 * (1 - probe['median_ratio_taylor_to_delayed']):.1f}%"
        + (" (a negative share: worse than the delayed gradient); " if
           max(probe['median_ratio_dc_to_delayed'], probe['median_ratio_taylor_to_delayed']) > 1 else "; ")
        + ("the exact term's mean error is above the delayed gradient's: on some pushes the linear "
           "extrapolation overshoots badly." if probe['mean_relerr_taylor'] > probe['mean_relerr_delayed']
           else "the means tell the same story."),
    ])
    md = out / "compensation.md"
    md.write_text(text + "\n", encoding="utf-8")
    return [png, md]
