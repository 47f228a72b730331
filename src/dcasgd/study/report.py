"""``dcasgd report DIR``: tables, findings and plots from a ``dcasgd compare`` directory.

Writes into DIR (or ``--to``), for every group (cluster x protocol x momentum) with runs:

- ``table.md`` / ``table.csv``: final test error (percent), mean ± sample std over
  seeds, per method and M in the layout of Table 1 of Zheng et al. (rows:
  methods, columns: M), with the lr each cell used (marked when the lr chosen
  on validation sits at an edge of the lr grid); the time each method took to
  reach sequential SGD's final error in simulated seconds, and its error when
  sequential SGD finished; the largest stable lr of every method in the
  lr-selection runs (also ``stability.csv``);
- ``findings.md`` / ``findings.json``: the answers in words and as numbers:
  DC-ASGD-a and -c against ASGD, the paper's ordering DC-ASGD-a < DC-ASGD-c <
  ASGD, SSGD, who reaches sequential SGD's error soonest, how close each method
  gets at the largest M, who is stable at the largest lr;
- ``curves.png``, ``time_curves.png``, ``speedup.png``, ``staleness.png``, ``stability.png``,
  ``lambda.png`` (see :mod:`.plots`) and, from a probe run (``--probe``, or a
  ``probe*`` run directory inside DIR or next to it), ``compensation.png`` and
  ``compensation.md``.

Every number comes from the runs' summaries through :mod:`.findings`; every
file names the command that made the runs and the one that made the report.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from . import plots
from .findings import (SPREAD_RULE, STABLE_RULE, TARGET_RULE, ReportError, facts, load_study)  # noqa: F401
from .plots import LABELS

__all__ = ["ReportError", "write_report", "write_tables", "write_findings", "write_compensation"]


def report_command(run_dir: Path, to: Path | None, probe_run: Path | None) -> str:
    return (f"dcasgd report {run_dir}" + (f" --to {to}" if to is not None else "")
            + (f" --probe {probe_run}" if probe_run is not None else ""))


def probe_candidates(run_dir: Path, probe_run: Path | None) -> list[Path]:
    """Where a compensation probe run may be: the one given, else DIR itself, ``DIR/probe*``, ``DIR/../probe*``."""
    if probe_run is not None:
        return [probe_run]
    return [run_dir] + sorted(p for p in run_dir.glob("probe*") if p.is_dir()) + sorted(
        p for p in run_dir.parent.glob("probe*") if p.is_dir() and p != run_dir)


def write_report(run_dir: Path, to: Path | None = None, probe_run: Path | None = None) -> list[Path]:
    run_dir = Path(run_dir)
    out = to or run_dir
    study = load_study(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    compensation, used = [], None
    for candidate in probe_candidates(run_dir, probe_run):
        compensation = write_compensation(candidate, out)
        if compensation:
            used = candidate
            break
    if probe_run is not None and not compensation:
        raise ReportError(f"report: {probe_run} holds no probe records (a run made with --probe-every)")
    numbers = facts(study, report_command(run_dir, to, probe_run), used)
    speedups = any(g.get("speedups") for g in numbers["groups"])
    numbers["files"] = (["table.md", "table.csv", "stability.csv", "findings.md", "findings.json", "curves.png",
                         "time_curves.png", "staleness.png"] + (["speedup.png"] if speedups else [])
                        + (["stability.png"] if numbers["stability"] else [])
                        + (["lambda.png"] if study.lambda_runs else []) + [p.name for p in compensation])
    written = write_tables(numbers, out) + write_findings(numbers, out)
    written.append(plots.plot_curves(study, numbers, out / "curves.png"))
    written.append(plots.plot_time_curves(study, numbers, out / "time_curves.png"))
    written.append(plots.plot_staleness(study, numbers, out / "staleness.png"))
    if speedups:
        written.append(plots.plot_speedup(study, numbers, out / "speedup.png"))
    if numbers["stability"]:
        written.append(plots.plot_stability(study, numbers, out / "stability.png"))
    if study.lambda_runs:
        written.append(plots.plot_lambda(study, numbers, out / "lambda.png"))
    return written + compensation


# ---------------------------------------------------------------- formatting


def pm(mean: float | None, std: float | None, spec: str = ".2f") -> str:
    return "n/a" if mean is None else f"{mean:{spec}} ± {std:{spec}}"


def secs(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def secs_pm(mean: float | None, std: float | None, n: int = 2) -> str:
    """Simulated seconds, the std with as many decimals as the mean (none for a single value)."""
    if mean is None:
        return "n/a"
    decimals = 0 if abs(mean) >= 100 else 1 if abs(mean) >= 10 else 2
    return f"{mean:.{decimals}f} s" if n < 2 else f"{mean:.{decimals}f} ± {std:.{decimals}f} s"


def header(numbers: dict[str, Any]) -> list[str]:
    cov = numbers["coverage"]
    if cov["final_runs_missing"]:
        state = (f"; **the study is not finished: {cov['final_runs_reported']} of {cov['final_runs_expected']} "
                 f"final runs are done**")
    elif not numbers["finished"]:
        state = (f"; **compare has not recorded the study as finished: all {cov['final_runs_expected']} final runs "
                 f"are done, but other runs (such as the λ₀ sweep) may be missing; run the compare command again "
                 f"to finish them**")
    else:
        state = ""
    lines = [f"_Runs: `{numbers['runs_command']}` (git commit `{numbers['git_commit']}`){state}. "
             f"Report: `{numbers['report_command']}`._"]
    if cov["left_out"]:
        lines += ["", f"_Left out: {len(cov['left_out'])} run(s) found in the study directory that its grid "
                      f"does not ask for as they are: " + "; ".join(cov["left_out"][:5])
                  + ("; ..." if len(cov["left_out"]) > 5 else "") + "._"]
    return lines


def describe(group: dict[str, Any]) -> str:
    settings = ", ".join(f"{k} {_setting(v)}" for k, v in group["cluster_settings"].items())
    cluster = f"cluster {group['cluster']} ({settings or 'no extra settings'})"
    if group["protocol"] == "paper":
        lrs = group.get("paper_lr") or {}
        edges = group.get("paper_lr_at_grid_edge") or {}
        asgd = ", ".join(f"M={w}: {lr:g}" + (f" ({edges[w]} of the lr grid)" if edges.get(w) else "")
                         for w, lr in lrs.items()) or "n/a"
        protocol = (f"protocol paper (every asynchronous method at ASGD's lr for its M, chosen on validation: "
                    f"{asgd}; sequential SGD, SSGD, m-sync and Rennala at their own, in their cells)")
    else:
        protocol = "protocol tuned (each method and M at its own lr, and S/m/R, chosen on validation)"
    return f"{cluster}; {protocol}; momentum {group['momentum']:g}" + budget_text(group)


def budget_text(group: dict[str, Any]) -> str:
    """The group's time budget and epoch caps, in words ('' without a budget)."""
    if not group.get("time_budget_s"):
        return ""
    caps = ", ".join(f"M={w}: {e:g}" for w, e in (group.get("epoch_caps") or {}).items())
    return (f"; every run a budget of {secs(group['time_budget_s'])} simulated seconds (sequential SGD's time for "
            f"its epochs, the slowest seed) and an epoch cap ({caps})")


def _setting(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"worker {k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def lr_text(lr: float | list[float]) -> str:
    return "/".join(f"{x:g}" for x in lr) if isinstance(lr, list) else f"{lr:g}"


def error_cell(c: dict[str, Any], protocol: str) -> str:
    edge = c["lr_at_grid_edge"] if protocol == "tuned" else None        # paper: said once, in the heading
    lr = f"lr {lr_text(c['lr'])}" + (f" ({edge} of grid)" if edge else "") + param_text(c)
    if c["diverged"] == c["runs"]:
        error = f", error {pm(c['mean'], c['std'])}" if c["mean"] is not None else ""
        return f"diverged ({c['diverged']}/{c['runs']} seeds{error}, {lr})"
    diverged = f", {c['diverged']} diverged" if c["diverged"] else ""
    return f"{pm(c['mean'], c['std'])} (n={c['n']}{diverged}, {lr})"


ENDED = {"epochs": "epoch cap", "time_budget": "budget", "target": "target"}


def ended_text(c: dict[str, Any]) -> str:
    """'; ended at: epoch cap 3' (how a cell's runs ended: epoch cap, budget, target, or an outcome)."""
    ended = c.get("ended_by") or {}
    return "; ended at: " + ", ".join(f"{ENDED.get(k, k)} {n}" for k, n in ended.items()) if ended else ""


def param_text(c: dict[str, Any]) -> str:
    """A cell's own method setting: ', S 4' (Rennala), ', m 8' (m-sync), ', R 6' (Ringmaster); '' without one."""
    if c.get("param") is None:
        return ""
    name = {"rennala": "S", "msync": "m"}.get(c["method"], "R")
    return f", {name} {lr_text(c['param'])}"


def times(mean: float | None, std: float | None, n: int = 2) -> str:
    """A speedup: '6.1 ± 0.4x' (no spread for one value)."""
    if mean is None:
        return "n/a"
    return f"{mean:.2f}x" if n < 2 else f"{mean:.2f} ± {std:.2f}x"


def speedup_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    if not row["reached"]:
        return f"not reached (0/{row['runs']})"
    return f"{times(row['mean'], row['std'], row['n'])} ({row['reached']}/{row['runs']})"


def share_cell(row: dict[str, Any] | None) -> str:
    if row is None or row["share"]["mean"] is None:
        return ""
    share = row["share"]
    return (f"{100 * share['mean']:.0f}%" + (f" ± {100 * share['std']:.0f}%" if share["n"] > 1 else "")
            + f" ({share['n']}/{row['runs']})")


def speedup_tables(g: dict[str, Any], methods: list[str], workers: list[int]) -> list[str]:
    """Speedup over sequential SGD and share of the throughput ideal per (method, M), the ideal and m* rows."""
    rows = {(r["method"], r["workers"]): r for r in g.get("speedups", [])}
    if not rows:
        return []
    ideal = {i["workers"]: i for i in g.get("ideal", [])}
    stars = {m["workers"]: m for m in g.get("m_star", [])}
    asynchronous = [m for m in methods if m != "sequential"]
    workers = [w for w in workers if w > 1]
    lines = ["", "Speedup to sequential SGD's final error: sequential SGD's simulated time for its epochs over the "
             "time a run first reached that error, per seed (same seed), mean ± std over the seeds that reached "
             "it (reached/seeds); the throughput ideal is the workers' summed gradient rate over sequential SGD's:",
             ""]
    lines += _table(asynchronous, workers, lambda m, w: speedup_cell(rows.get((m, w))))
    lines.append("| *throughput ideal* | " + " | ".join(
        times(ideal[w]["mean"], ideal[w]["std"], ideal[w]["n"]) if w in ideal else "" for w in workers) + " |")
    if any(stars[w]["c"] for w in stars):
        lines.append("| *m\\* (model, c = Rennala's S)* | " + " | ".join(
            _star_text(stars.get(w)) for w in workers) + " |")
    lines += ["", "Share of the throughput ideal (measured speedup / ideal, per seed; mean ± std over the seeds "
              "that reached the target):", ""]
    lines += _table(asynchronous, workers, lambda m, w: share_cell(rows.get((m, w))))
    return lines


def _star_text(star: dict[str, Any] | None) -> str:
    if not star or not star["c"] or star["m"]["mean"] is None:
        return ""
    m, model = star["m"], star["model_speedup"]
    return (f"{m['mean']:.3g}" + (f" ± {m['std']:.2g}" if m["n"] > 1 else "") + f" of {star['workers']} "
            f"(c = {star['c']}; model speedup {times(model['mean'], model['std'], model['n'])})")


def _table(rows: list[str], workers: list[int], cell) -> list[str]:
    lines = ["| method | " + " | ".join(f"M={w}" for w in workers) + " |", "|---|" + "---|" * len(workers)]
    for method in rows:
        lines.append(f"| {LABELS[method]} | " + " | ".join(cell(method, w) for w in workers) + " |")
    return lines


# ---------------------------------------------------------------- tables


def write_tables(numbers: dict[str, Any], out: Path) -> list[Path]:
    """table.md, table.csv and stability.csv: every number from ``numbers`` (:func:`.findings.facts`)."""
    lines = ["# Final test error (%), mean ± std over seeds; time to sequential SGD's error", ""] + header(numbers)
    lines += ["", f"Rules: {SPREAD_RULE}. {_capital(TARGET_RULE)}.", ""]
    rows_csv = [["group", "cluster", "protocol", "momentum", "method", "workers", "runs", "n_errors", "diverged",
                 "mean_error_pct", "std_error_pct", "errors_pct", "lr", "lr_at_grid_edge", "target_error_pct",
                 "reached_target", "time_to_target_mean_s", "time_to_target_std_s", "times_to_target_s",
                 "error_at_sequential_finish_mean_pct", "error_at_sequential_finish_std_pct", "param",
                 "ended_by", "speedup_mean", "speedup_std", "speedups_per_seed", "share_of_ideal_mean",
                 "share_of_ideal_std", "ideal_speedup_mean", "time_budget_s", "epochs_done_mean"]]
    any_edge = False
    for g in numbers["groups"]:
        cells = {(c["method"], c["workers"]): c for c in g["cells"]}
        ttt = {(t["method"], t["workers"]): t for t in g["time_to_target"]}
        workers = sorted({w for _, w in cells})
        methods = list(dict.fromkeys(m for m, _ in cells))
        lines += [f"## `{g['name']}`", "", describe(g) + ".", ""]
        lines += _table(methods, workers,
                        lambda m, w: error_cell(cells[(m, w)], g["protocol"]) if (m, w) in cells else "")
        any_edge = any_edge or (g["protocol"] == "tuned" and any(c["lr_at_grid_edge"] for c in g["cells"]))
        target = g["target"]
        if target:
            lines += ["", f"Time to sequential SGD's final error, target {pm(target['error'], target['std'])}% "
                      f"(n={target['n']}); simulated seconds, mean ± std over the seeds that reached it (reached/"
                      f"seeds). Sequential SGD finished at "
                      f"{secs_pm(target['sequential_finish_s'], target['sequential_finish_std_s'], target['n'])}.", ""]

            def reach(m: str, w: int) -> str:
                t = ttt.get((m, w))
                if t is None:
                    return ""
                return (f"{secs_pm(t['mean_s'], t['std_s'], t['reached'])} ({t['reached']}/{t['runs']})" if t["reached"]
                        else f"not reached (0/{t['runs']}"
                        + (ended_text(cells[(m, w)]) if g.get("time_budget_s") else "") + ")")

            def at_finish(m: str, w: int) -> str:
                t = ttt.get((m, w))
                return "" if t is None else pm(t["error_at_sequential_finish"]["mean"],
                                                t["error_at_sequential_finish"]["std"])

            lines += _table(methods, workers, reach)
            lines += ["", f"Test error (%) at the simulated time sequential SGD finished "
                      f"({secs(target['sequential_finish_s'])} s; the last evaluation at or before it):", ""]
            lines += _table(methods, workers, at_finish)
            lines += speedup_tables(g, methods, workers)
        lines.append("")
        speedups = {(r["method"], r["workers"]): r for r in g.get("speedups", [])}
        ideal = {i["workers"]: i for i in g.get("ideal", [])}
        for c in g["cells"]:
            t = ttt.get((c["method"], c["workers"]), {})
            at = t.get("error_at_sequential_finish", {})
            sp = speedups.get((c["method"], c["workers"]), {})
            rows_csv.append([g["name"], g["cluster"], g["protocol"], g["momentum"], c["method"], c["workers"],
                             c["runs"], c["n"], c["diverged"], _num(c["mean"]), _num(c["std"]),
                             ";".join(_num(e) for e in c["errors"]),
                             c["lr"] if not isinstance(c["lr"], list) else ";".join(map(str, c["lr"])),
                             c["lr_at_grid_edge"] or "", _num(target["error"]) if target else "",
                             t.get("reached", ""), _num(t.get("mean_s")), _num(t.get("std_s")),
                             ";".join(_num(x) for x in t.get("times_s", [])), _num(at.get("mean")),
                             _num(at.get("std")), "" if c.get("param") is None else c["param"],
                             ";".join(f"{k}:{v}" for k, v in (c.get("ended_by") or {}).items()),
                             _num(sp.get("mean")), _num(sp.get("std")),
                             ";".join(_num(x) for x in (sp.get("per_seed") or {}).values()),
                             _num((sp.get("share") or {}).get("mean")), _num((sp.get("share") or {}).get("std")),
                             _num(ideal.get(c["workers"], {}).get("mean")), _num(g.get("time_budget_s")),
                             _num(c.get("epochs_done"))])
    if any_edge:
        cov = numbers["coverage"]
        own = "; per method and M: " + "; ".join(f"{k} {', '.join(f'{v:g}' for v in values)}" for k, values in
                                                 cov["lr_grids"].items()) if cov.get("lr_grids") else ""
        lines += [f"_(smallest/largest of grid)_: the lr this cell used was chosen on validation at an edge of "
                  f"its lr grid ({', '.join(f'{v:g}' for v in cov['lr_grid'])}{own}; times 1 - momentum), so a "
                  f"wider grid might do better there.", ""]
    stab_csv = [["lr_group", "cluster", "momentum", "method", "workers", "lr", "validation_error_pct", "diverged",
                 "stable", "max_stable_lr"]]
    if numbers["stability"]:
        lines += ["# Stability: largest stable learning rate", "", f"Rule: {STABLE_RULE}.", ""]
    for s in numbers["stability"]:
        rows = {(r["method"], r["workers"]): r for r in s["rows"]}
        workers = sorted({w for _, w in rows})
        lines += [f"## lr runs `{s['lr_group']}` (lr grid {', '.join(f'{v:g}' for v in s['lr_grid'])})", ""]

        def stable_cell(m: str, w: int) -> str:
            r = rows.get((m, w))
            if r is None:
                return ""
            if r["max_stable_lr"] is None:
                return "none"
            bad = [f"{x:g}" for x, d in zip(r["lrs"], r["diverged"]) if d]
            return (f"{r['max_stable_lr']:g}{' (top)' if r['at_grid_top'] else ''}; best {r['best_error']:.2f} "
                    f"at {r['best_lr']:g}" + (f"; diverged at {', '.join(bad)}" if bad else "")
                    + ("" if r["complete"] else "; lr runs incomplete"))

        lines += _table(list(dict.fromkeys(m for m, _ in rows)), workers, stable_cell) + [""]
        for r in s["rows"]:
            for x, e, d, ok in zip(r["lrs"], r["errors"], r["diverged"], r["stable"]):
                stab_csv.append([s["lr_group"], s["cluster"], s["momentum"], r["method"], r["workers"], x, _num(e),
                                 int(d), int(ok), r["max_stable_lr"] if r["max_stable_lr"] is not None else ""])
    md, table_csv, stability_csv = out / "table.md", out / "table.csv", out / "stability.csv"
    md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    for path, rows in ((table_csv, rows_csv), (stability_csv, stab_csv)):
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows(rows)
    return [md, table_csv, stability_csv]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _num(value: Any) -> str:
    return "" if value is None else f"{value:.6g}"


# ---------------------------------------------------------------- findings


def _vs(verdict: str, a: float, b: float) -> str:
    """How ``a`` compares with ``b`` in words, from the verdict of :func:`.findings.verdict`."""
    if verdict in ("within the spread", "no spread"):
        side = "lower" if a < b else "higher" if a > b else "equal"
        return f"{side}, within the spread" if verdict == "within the spread" else f"{side}, one seed (no spread)"
    return f"{verdict}, clearly" if verdict in ("lower", "higher") else verdict


def write_findings(numbers: dict[str, Any], out: Path) -> list[Path]:
    """findings.md (plain statements with spreads) and findings.json (the same numbers)."""
    lines = ["# Findings", ""] + header(numbers) + [
        "", f"How to read: test errors in percent, {SPREAD_RULE}. {_capital(TARGET_RULE)}. "
        "The paper (Zheng et al. 2017, Table 1, CIFAR-10) found DC-ASGD-a < DC-ASGD-c < ASGD.", ""]
    lines += goal_lines(numbers) + dropped_lines(numbers)
    for g in numbers["groups"]:
        lines += [f"## `{g['name']}`", "", describe(g) + ".", ""]
        by_w: dict[int, list[dict[str, Any]]] = {}
        for v in g["vs_asgd"]:
            by_w.setdefault(v["workers"], []).append(v)
        dc = []
        for w, rows in by_w.items():
            parts = [f"{LABELS[v['method']]} {pm(v['mean'], v['std'])} vs ASGD {pm(v['asgd_mean'], v['asgd_std'])}: "
                     f"{_vs(v['verdict'], v['mean'], v['asgd_mean'])}" for v in rows if v["method"].startswith("dc-")]
            if parts:
                dc.append(f"M={w}: " + "; ".join(parts))
        if dc:
            lines.append("- **Does DC-ASGD beat ASGD?** " + ". ".join(dc) + ".")
        for w, rows in by_w.items():
            others = [f"{LABELS[v['method']]} {_vs(v['verdict'], v['mean'], v['asgd_mean'])} "
                      f"({pm(v['mean'], v['std'])})" for v in rows if not v["method"].startswith("dc-")
                      and v["method"] != "ssgd"]
            if others:
                lines.append(f"- Other asynchronous methods against ASGD at M={w}: " + "; ".join(others) + ".")
        for o in g["ordering"]:
            pairs = "; ".join(f"{LABELS[p['lower']]} {pm(p['lower_mean'], p['lower_std'])} vs {LABELS[p['higher']]} "
                              f"{pm(p['higher_mean'], p['higher_std'])}: "
                              f"{_vs(p['verdict'], p['lower_mean'], p['higher_mean'])}" for p in o["pairs"])
            state = ("held, clearly" if o["clearly"] else "held, within the spread" if o["held"] else "did not hold")
            lines.append(f"- **Paper's ordering DC-ASGD-a < DC-ASGD-c < ASGD at M={o['workers']}: {state}.** {pairs}.")
        for s in g["ssgd"]:
            versus = "; ".join(f"against {LABELS[m]} {pm(o['mean'], o['std'])}: "
                               f"{_vs(o['verdict'], s['mean'], o['mean'])}"
                               for m, o in s["vs"].items())
            lines.append(f"- **SSGD at M={s['workers']}:** {pm(s['mean'], s['std'])} (n={s['n']}, lr {lr_text(s['lr'])}"
                         + (f", {s['diverged']} diverged" if s["diverged"] else "") + ")"
                         + (f"; {versus}" if versus else "") + ".")
        target = g["target"]
        if target is None:
            lines += ["- No sequential SGD runs in this group: no target for time to target.", ""]
            continue
        soon = []
        for s in g["soonest"]:
            soon.append(f"M={s['workers']}: " + _soonest_text(s))
        overall = g["soonest_overall"]
        lines.append(f"- **Who reaches sequential SGD's error ({pm(target['error'], target['std'])}%) soonest in "
                     f"simulated time?** Sequential SGD itself finished at "
                     f"{secs_pm(target['sequential_finish_s'], target['sequential_finish_std_s'], target['n'])}. "
                     + ". ".join(soon)
                     + (f". Over all M: {_soonest_text(overall, with_m=True)}." if len(soon) > 1 else "."))
        lines += speedup_findings(g)
        for rung in g.get("ladder", []):
            took = (secs_pm(rung["sequential_s"], rung["sequential_std_s"], rung["sequential_n"])
                    if rung["sequential_n"] else "never")
            lines.append(f"- **Within {rung['offset']:g} points of it ({rung['target']:.2f}%):** sequential SGD at "
                         f"{took}; " + "; ".join(f"M={s['workers']}: " + _soonest_text(s) for s in rung["soonest"])
                         + ".")
        gap = g["gap_to_sequential"]
        if gap and gap["rows"]:
            rows = {r["method"]: r for r in gap["rows"]}
            best = min(r["gap"] for r in gap["rows"])
            closest = [r for r in gap["rows"] if r["gap"] == best]
            shown = sorted(closest + [rows[m] for m in ("dc-asgd-a", "dc-asgd-c", "asgd", "ssgd")
                                      if m in rows and rows[m] not in closest], key=lambda r: r["gap"])

            def gap_text(r: dict[str, Any]) -> str:
                return (f"{LABELS[r['method']]} {r['gap']:+.2f} ({pm(r['mean'], r['std'])}, "
                        f"{_vs(r['verdict'], r['mean'], gap['sequential_mean'])})")

            lines.append(f"- **How close at M={gap['workers']}?** Final error minus sequential SGD's "
                         f"({pm(gap['sequential_mean'], gap['sequential_std'])}), closest first: "
                         + "; ".join(gap_text(r) for r in shown)
                         + (f" (the other {len(rows) - len(shown)} methods: table.md)." if len(rows) > len(shown)
                            else "."))
        lines.append("")
    if numbers["stability"]:
        lines += ["## Stable at the largest learning rate?", "", f"Rule: {STABLE_RULE}.", ""]
    for s in numbers["stability"]:
        parts = []
        for most in s["most_stable"]:
            if not most["others"]:
                names = LABELS[most["methods"][0]] if most["of"] == 1 else f"every method ({most['of']})"
            elif len(most["methods"]) > most["of"] / 2:
                names = (f"all but {', '.join(LABELS[m] for m in most['others'])} "
                         f"({len(most['methods'])} of {most['of']})")
            else:
                names = f"{', '.join(LABELS[m] for m in most['methods'])} ({len(most['methods'])} of {most['of']})"
            top = most["at_grid_top"]
            parts.append(f"M={most['workers']}: {names} up to lr {most['lr']:g}"
                         + (" (the top of the grid: it does not separate them)" if top and len(most["methods"]) > 1
                            else " (the top of the grid)" if top else "")
                         + (f"; diverged at the top lr: {', '.join(LABELS[m] for m in most['diverged_at_top'])}"
                            if most["diverged_at_top"] else ""))
        lines.append(f"- **lr runs `{s['lr_group']}`** (lr grid {', '.join(f'{v:g}' for v in s['lr_grid'])}): "
                     + "; ".join(parts) + ".")
    if numbers["compensation"]:
        lines += ["", f"Compensation probe: `{numbers['compensation']}` (see compensation.md)."]
    md, js = out / "findings.md", out / "findings.json"
    md.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    js.write_text(json.dumps(numbers, indent=1) + "\n", encoding="utf-8")
    return [md, js]


def vs_ssgd_text(vs: dict[str, Any] | None) -> str:
    """How many times sooner than SSGD, with the seeds where SSGD never got there as a lower bound."""
    if not vs:
        return "no SSGD runs at this M"
    parts = []
    if vs["n"]:
        parts.append(f"{times(vs['mean'], vs['std'], vs['n'])} sooner than SSGD ({vs['n']} seeds both reached it)")
    if vs["ssgd_not_reached"]:
        bound, seeds = min(vs["at_least_per_seed"].values()), len(vs["ssgd_not_reached"])
        parts.append(f"SSGD did not reach it in {seeds} seed(s), its runs ending (at {bound:.2f}x this method's "
                     f"time) before this method reached it: no comparison" if vs.get("ssgd_ended_first")
                     else f"SSGD did not reach it in {seeds} seed(s): at least {bound:.2f}x sooner there")
    return "; ".join(parts) or "SSGD comparison n/a"


def speedup_findings(g: dict[str, Any]) -> list[str]:
    """The speedup of the soonest method per M, against sequential SGD, SSGD and the ideal; and m* (a model)."""
    ideal = {i["workers"]: i for i in g.get("ideal", [])}
    parts = []
    for s in g["soonest"]:
        w, i = s["workers"], ideal.get(s["workers"])
        ideal_text = f"; throughput ideal {times(i['mean'], i['std'], i['n'])}" if i and i["mean"] else ""
        if not s.get("method"):
            parts.append(f"M={w}: no method reached it{ideal_text}")
            continue
        sp = s["speedup"]
        share = sp["share"]
        share_text = (f", {100 * share['mean']:.0f}%" + (f" ± {100 * share['std']:.0f}%" if share["n"] > 1 else "")
                      + " of it") if share["mean"] is not None else ""
        parts.append(f"M={w}: {LABELS[s['method']]} {times(sp['mean'], sp['std'], sp['n'])} sooner than sequential "
                     f"SGD ({sp['reached']}/{sp['runs']} seeds); {vs_ssgd_text(s.get('vs_ssgd'))}{ideal_text}"
                     f"{share_text}")
    lines = (["- **Speedup to sequential SGD's error (the soonest method per M):** " + ". ".join(parts) + "."]
             if parts else [])
    stars = [m for m in g.get("m_star", []) if m["c"] and m["m"]["mean"] is not None]
    if stars:
        lines.append("- **m\\* (a model, not a measurement; Tyurin and Richtárik 2023, c = Rennala's S chosen on "
                     "validation):** " + "; ".join(f"M={m['workers']}: {_star_text(m)}" for m in stars)
                     + ": the number of fastest workers worth their staleness.")
    return lines


def g1_vs_ssgd_text(seed: dict[str, Any]) -> str:
    """A G1 seed's ratio to SSGD; where SSGD never reached the target, its run's end over the method's time."""
    if seed["vs_ssgd"] is None:
        return "SSGD n/a"
    if seed.get("ssgd_reached", True):
        return f"{seed['vs_ssgd']:.2f}x SSGD"
    return f"SSGD never reached it (its run ended at {seed['vs_ssgd']:.2f}x this time)"


def goal_lines(numbers: dict[str, Any]) -> list[str]:
    goals = numbers.get("goals") or {}
    if not goals.get("verdicts"):
        return []
    lines = ["## Goals", ""] + [f"- {text}" for text in goals["statements"]] + [""]
    for v in goals["verdicts"]:
        if v["goal"] == "G1":
            seeds = "; ".join(f"seed {k}: {x['speedup']:.2f}x sequential, {g1_vs_ssgd_text(x)}"
                              for k, x in v["per_seed"].items() if x["speedup"] is not None)
            lines.append(f"- G1 `{v['group']}`: **{v['verdict']}**" + (
                f" ({LABELS[v['method']]}: {seeds})" if v["method"] else " (no method reached sequential SGD's error)"
                if v["verdict"] == "missed" else ""))
        else:
            at = "; ".join(f"M={w}: " + (f"{LABELS[x['method']]} {secs_pm(x['mean_s'], x['std_s'], x['reached'])}"
                                         if x else "none reached it") for w, x in v["at"].items())
            lines.append(f"- G2 `{v['group']}`: **{v['verdict']}** ({at})")
    return lines + [""]


def dropped_lines(numbers: dict[str, Any]) -> list[str]:
    dropped = numbers.get("dropped") or []
    if not dropped:
        return []
    return ["_Not run (recorded by compare): " + "; ".join(f"{d['what']}: {d['why']}" for d in dropped) + "._", ""]


def _soonest_text(s: dict[str, Any] | None, with_m: bool = False) -> str:
    if not s or s.get("method") is None:
        return "no method reached it"
    names = [LABELS[m] + (f" at M={w}" if with_m else "") for m, w in s["tied"]]
    who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}, tied,"
    text = f"{who} at {secs_pm(s['mean_s'], s['std_s'], s['reached'])} ({s['reached']} of {s['runs']} seeds)"
    nxt = s.get("runner_up")
    if nxt:
        nwhere = f" at M={nxt['workers']}" if with_m else ""
        spread = {"lower": "clearly later", "no spread": "later, one seed"}.get(nxt["verdict"], nxt["verdict"])
        text += (f", next {LABELS[nxt['method']]}{nwhere} at {secs_pm(nxt['mean_s'], nxt['std_s'], nxt['reached'])} "
                 f"({nxt['reached']} of {nxt['runs']}; {spread})")
    return text


def write_compensation(run_dir: Path, out: Path) -> list[Path]:
    """compensation.png and compensation.md from the probe records of ``run_dir`` (a run directory).

    Every number comes from the run: the plot from the ``probe`` lines of
    ``metrics.jsonl``, the tables from the ``probe`` block of ``summary.json``
    (:meth:`dcasgd.engine.probe.CompensationProbe.summary` of those records).
    A statistic the run did not record (a run probed before it existed) reads n/a.
    """
    from .compensation import load_probe_records, plot_compensation
    records = load_probe_records(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    summary_path = run_dir / "summary.json"
    if not records or not summary_path.exists():
        return []
    summary = json.loads(summary_path.read_text())
    probe, cfg = summary["probe"], summary["config"]
    png = plot_compensation(records, out / "compensation.png")

    def num(key: str, spec: str = ".4f", scale: float = 1.0) -> str:
        value = probe.get(key)
        return "n/a" if value is None else format(scale * value, spec)

    def removed(key: str) -> str:                 # share of the delayed gradient's median error removed
        value = probe.get(key)
        return "n/a" if value is None else f"{100 * (1 - value):.1f}%"

    a_form = probe.get("lam_form") == "dc-asgd-a"
    lam_name = "λ₀" if a_form else "λ"
    lam_text = f"{lam_name} = {probe['lam']:g}" if probe.get("lam") is not None else f"{lam_name} (not recorded)"
    rows = [("delayed", "delayed gradient g(w_bak)"),
            ("dc", "DC-compensated (diagonal) g + λ g⊙g⊙Δw"),
            ("rank1", "rank-1 g + λ g (g·Δw), the undiagonalised λ g gᵀ"),
            ("fisher", "per-sample Fisher diagonal g + λ F⊙Δw"),
            ("taylor", "exact first-order Taylor g + H(w_now − w_bak)")]
    threads = f"{summary['torch_threads']} torch thread(s), " if "torch_threads" in summary else ""
    lines = [
        "# How well does delay compensation approximate the fresh gradient?",
        "",
        f"_Run: `{summary.get('command', '?')}` ({threads}{cfg['rule']}, M={cfg['workers']}, {cfg['model']} on "
        f"{cfg['dataset']}, batch size {cfg['batch_size']}); one push in {probe['every']} probed, "
        f"{probe['count_stale']} probes with staleness >= 1._",
        "",
        "Median relative error ||x - g(w_now)|| / ||g(w_now)|| of each estimate x of the fresh gradient "
        f"(Δw = w_now − w_bak; λ is the run's scale, {lam_text}"
        + (", as λ₀/sqrt(ms + eps) elementwise" if a_form else "") + "):",
        "",
        "| estimate | median relative error | ratio of medians to the delayed gradient | mean relative error |",
        "|---|---|---|---|",
    ]
    for name, label in rows:
        ratio = "1" if name == "delayed" else num(f"median_ratio_{name}_to_delayed", ".3f")
        lines.append(f"| {label} | {num(f'median_relerr_{name}')} | {ratio} | {num(f'mean_relerr_{name}')} |")
    ratios = [probe.get(f"median_ratio_{name}_to_delayed") for name in ("dc", "taylor")]
    means = [probe.get(f"mean_relerr_{name}") for name in ("taylor", "delayed")]
    if None not in ratios and None not in means:
        lines += [
            "",
            f"In the median, the cheap diagonal term removes {removed('median_ratio_dc_to_delayed')} "
            f"of the delayed gradient's error and the exact first-order Taylor term "
            f"{removed('median_ratio_taylor_to_delayed')}"
            + (" (a negative share: worse than the delayed gradient); " if max(ratios) > 1 else "; ")
            + ("the exact term's mean error is above the delayed gradient's: on some pushes the linear "
               "extrapolation overshoots badly." if means[0] > means[1] else "the means tell the same story."),
        ]
    if probe.get("median_fisher_to_gg") is not None:
        lines += [
            "",
            f"The per-sample Fisher diagonal F = (1/b) Σᵢ gᵢ⊙gᵢ (per-sample gradients in "
            f"{probe.get('fisher_mode')} mode) against the mini-batch g⊙g the paper uses: median "
            f"||F|| / ||g⊙g|| = {num('median_fisher_to_gg', '.3g')} at batch size b = {cfg['batch_size']} "
            f"(per-sample gradients dominated by noise give about b, ones that all agree give 1).",
        ]

    # ---- scale or shape: the best scalar lam* per estimate
    lamstar_rows = [(name, label) for name, label in rows[1:] if probe.get(f"lamstar_{name}")]
    if lamstar_rows:
        lines += [
            "",
            "## Scale or shape? The best scale λ* of each estimate",
            "",
            "Each compensated estimate is g + λ h. On every probed push, λ* = h·(g(w_now) − g) / h·h is "
            "the least-squares best scalar λ; the error left at λ* is the error of the estimate's direction "
            "(its shape), the gap between the errors at the run's scale and at λ* the error of its scale. "
            f"For the diagonal and rank-1 estimates λ* replaces the run's {lam_text}"
            + (" in λ₀/sqrt(ms + eps)" if a_form else "")
            + "; for the Fisher estimate the natural value is 1 (the Fisher information of a log-likelihood "
            "loss is its expected Hessian; the empirical Fisher only approximates it), for the exact Taylor "
            "term exactly 1, its scale in the run's column.",
            "",
            "| estimate | λ* p10 | p25 | median | p75 | p90 | median error at the run's scale | "
            "median error at λ* | share of the delayed error removed at the run's scale | ... at λ* |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, label in lamstar_rows:
            dist = probe[f"lamstar_{name}"]
            lines.append(
                f"| {label} (n={dist['count']}) | "
                + " | ".join(f"{dist[q]:.4g}" for q in ("p10", "p25", "median", "p75", "p90"))
                + f" | {num(f'median_relerr_{name}')} | {num(f'median_relerr_{name}_at_lamstar')} | "
                f"{removed(f'median_ratio_{name}_to_delayed')} | "
                f"{removed(f'median_ratio_{name}_at_lamstar_to_delayed')} |")
        lines.append("")
        for name, label in lamstar_rows:
            at_run, at_best = probe.get(f"median_ratio_{name}_to_delayed"), probe.get(
                f"median_ratio_{name}_at_lamstar_to_delayed")
            if at_run is None or at_best is None:
                continue
            scale = probe.get(f"median_lamscale_{name}")
            gain = (f"a better scale would gain {100 * (at_run - at_best):.1f} points" if at_run >= at_best else
                    f"the run's elementwise scale beats every single scalar by {100 * (at_best - at_run):.1f} points")
            lines.append(
                f"- {label.split(' g')[0]}: at the run's scale {100 * (1 - at_run):.1f}% of the delayed error is "
                f"removed, at λ* {100 * (1 - at_best):.1f}%; {gain}; its direction leaves {100 * at_best:.1f}% "
                f"of the error at λ*"
                + (f"; the median best multiple of the run's {lam_name} is {scale:.3g}" if scale is not None else "")
                + ".")
    md = out / "compensation.md"
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [png, md]
