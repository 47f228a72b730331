"""The numbers of ``dcasgd report``: a ``compare`` directory loaded, and every fact computed from its runs.

:func:`load_study` reads ``OUT/compare.json`` and, with :mod:`.compare`'s own
functions (``choose``, ``plan``, ``lr_jobs``, ``finished_run``), the summaries of the runs the study's grid asks for:
a run whose recorded settings differ from its job's (one ``compare`` would
move to ``OUT/stale/`` and run again) and a directory the grid does not name
are left out, and the report says how many and why.  :func:`facts` turns the
summaries into what ``findings.json`` holds; the tables, ``findings.md`` and
``results/README.md`` print these numbers and compute none of their own.

Rules (stated again in every file that uses them):

- a cell is mean ± sample standard deviation over the seeds with a recorded
  error (a diverged classification run records chance-level error and counts);
- two cells are *within the spread* of each other when the intervals
  mean ± std overlap; otherwise one is clearly lower;
- time to target: the target is sequential SGD's mean final test error in
  the same group; a run reaches it at the simulated time (``curve[].time_s``)
  of its first evaluation at or below the target;
- speedup, share of the throughput ideal, m*: see :mod:`.speedup`;
- stable: an lr-selection run that did not diverge and whose validation error
  is at most :data:`STABLE_FACTOR` times the best validation error of the same
  method and M over the lr grid; a method's largest stable lr is the largest
  lr of the grid where its run is stable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, TrainConfig
from ..errors import InputError
from ..presets import settings_from_toml
from .budget import epoch_cap
from .compare import (DEFAULT_GRID, METHODS, PROTOCOLS, SYNCHRONOUS, Choice, Group, SettingKey, all_lr_values, choose,
                      cluster_grid, current_summary, finished_run, groups, lr_grid, lr_jobs, method_of, param_of,
                      plan)
from .speedup import (GOALS, against_ssgd, finish_time, finite_number, first_time_at, goal_facts, recommendations,
                      speedup_facts, stat)

STABLE_FACTOR = 1.1
LADDER = (1.0, 2.0, 5.0, 10.0)      # relaxed targets: sequential SGD's error plus this many percentage points
STABLE_RULE = (f"stable: the lr-selection run (seed 0, validation split) did not diverge and its validation "
               f"error is at most {STABLE_FACTOR:g} x the best validation error of the same method and M over "
               f"the lr grid; the largest stable lr is the largest lr of the grid where that holds")
SPREAD_RULE = ("mean ± sample standard deviation over seeds; two results are within the spread when the "
               "intervals mean ± std overlap, otherwise the lower one is clearly lower (with a single seed on "
               "either side there is no spread to judge by)")
TARGET_RULE = ("target: sequential SGD's mean final test error in the same group; time to target: the "
               "simulated time of a run's first evaluation at or below the target, mean ± std over the "
               "seeds that reached it; relaxed targets: that error plus " +
               ", ".join(f"{k:g}" for k in LADDER) + " percentage points, with sequential SGD's own time to "
               "reach them for scale")


class ReportError(InputError):
    """A directory that holds no study, or a run file that cannot be read."""


@dataclass
class Study:
    """The current runs of one ``compare`` directory, by group and by (method, M)."""

    run_dir: Path
    meta: dict[str, Any]
    grid: dict[str, Any]
    chosen: dict[SettingKey, Choice]                              # (protocol, lr group, method, M) -> lr, S/m/R
    groups: list[Group]                                            # groups with runs, in grid order
    final: dict[str, dict[tuple[str, int], list[dict[str, Any]]]]  # group name -> (method, M) -> runs by seed
    lr_runs: dict[str, dict[tuple[str, int], list[dict[str, Any]]]]  # lr group -> (method, M) -> runs by lr
    lambda_runs: dict[str, list[dict[str, Any]]]                   # group name -> runs by lam0
    expected: int = 0                                              # final runs the grid asks for
    missing: list[str] = field(default_factory=list)               # of those, not (yet) run
    left_out: list[str] = field(default_factory=list)              # present but not used, and why


def base_config(recorded: dict[str, Any]) -> TrainConfig:
    """A recorded configuration (compare.json's ``base_config``, a summary's ``config``) back as a
    TrainConfig (JSON turned tuples into lists, int keys into str); keys TrainConfig lacks are skipped."""
    known = TrainConfig.__dataclass_fields__
    return TrainConfig(**settings_from_toml({k: v for k, v in recorded.items() if k in known}, "recorded config"))


def load_study(run_dir: Path) -> Study:
    """The study in ``run_dir``: only runs that ``dcasgd compare`` would keep as they are."""
    meta_path = run_dir / "compare.json"
    if not run_dir.is_dir():
        raise ReportError(f"report: {run_dir} is not a directory")
    if not meta_path.exists():
        raise ReportError(f"report: {run_dir} holds no study (no compare.json); run 'dcasgd compare {run_dir}' first")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        grid = {**DEFAULT_GRID, **meta["grid"]}
        base = base_config(meta["base_config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"report: {meta_path} is not a compare record ({exc!r})") from None
    try:
        chosen = choose(base, grid, run_dir)
        jobs = plan(base, grid, run_dir, chosen)
        configs = {job: job.config(base, grid) for job in jobs}
    except ConfigError as exc:
        raise ReportError(f"report: the study's settings no longer validate ({exc})") from None
    except (OSError, ValueError) as exc:                # a summary.json that is not JSON
        raise ReportError(f"report: cannot read an lr run's summary.json under {run_dir / 'lr'} ({exc})") from None
    if jobs and jobs[0].phase == "lr":
        needed = lr_jobs(grid, run_dir)
        done = sum(current_summary(job, base, grid) is not None for job in needed)
        raise ReportError(f"report: {run_dir} is still choosing learning rates ({done} of {len(needed)} "
                          f"lr runs current); no final runs to report yet (run 'dcasgd compare {run_dir}' "
                          f"to go on)")
    study = Study(run_dir, meta, grid, chosen, [], {}, {}, {})
    wanted: set[Path] = set()
    for job in jobs:
        wanted.add(job.out)
        if job.phase == "final":
            study.expected += 1
        try:
            summary, differences = finished_run(job, configs[job])
        except (OSError, ValueError) as exc:
            raise ReportError(f"report: cannot read {job.out / 'summary.json'} ({exc})") from None
        if summary is None:
            if job.phase == "final":
                study.missing.append(str(job.out.relative_to(run_dir)))
            continue
        if differences:
            study.left_out.append(f"{job.out.relative_to(run_dir)}: made with other settings "
                                  f"({'; '.join(differences[:3])}{'; ...' if len(differences) > 3 else ''})")
            continue
        summary["_method"] = method_of(summary["config"])
        if job.phase == "final":
            study.final.setdefault(job.group.name, {}).setdefault((job.method, job.workers), []).append(summary)
        else:
            study.lambda_runs.setdefault(job.group.name, []).append(summary)
    for phase in ("final", "lambda"):
        for path in sorted((run_dir / phase).glob("*/*/summary.json")):
            if path.parent not in wanted:
                study.left_out.append(f"{path.parent.relative_to(run_dir)}: not part of the study's grid")
    for job in lr_jobs(grid, run_dir):
        summary = current_summary(job, base, grid)
        if summary is not None:
            study.lr_runs.setdefault(job.group.lr_name, {}).setdefault((job.method, job.workers), []).append(summary)
    study.groups = [g for g in groups(grid) if g.name in study.final]
    for cells in study.final.values():
        for runs in cells.values():
            runs.sort(key=lambda r: r["config"]["seed"])
    for by_key in study.lr_runs.values():
        for runs in by_key.values():
            runs.sort(key=lambda r: r["config"]["lr"])
    for runs in study.lambda_runs.values():
        runs.sort(key=lambda r: r["config"]["lam0"])
    if not study.final:
        raise ReportError(f"report: {run_dir} holds no finished final runs of its grid yet"
                          + (f" ({len(study.left_out)} made with other settings)" if study.left_out else "")
                          + f"; run 'dcasgd compare {run_dir}'")
    return study


# ---------------------------------------------------------------- statistics


def verdict(a: dict[str, Any], b: dict[str, Any]) -> str:
    """``a`` against ``b`` (lower is better): lower, higher, within the spread, no spread (a single value on
    either side: nothing to judge a gap by), or n/a."""
    if a.get("mean") is None or b.get("mean") is None:
        return "n/a"
    if min(a.get("n", 2), b.get("n", 2)) < 2:
        return "no spread"
    if abs(a["mean"] - b["mean"]) <= a["std"] + b["std"]:
        return "within the spread"
    return "lower" if a["mean"] < b["mean"] else "higher"


def error_at_time(run: dict[str, Any], when: float) -> float | None:
    """Test error of the run's last evaluation at or before simulated time ``when``."""
    error = None
    for point in run.get("curve", []):
        if point["time_s"] > when:
            break
        error = point.get("test_error")
    return error if finite_number(error) else None


# ---------------------------------------------------------------- facts


def _edge(study: Study, group: Group, method: str, workers: int) -> str | None:
    """'smallest' or 'largest' when the lr this cell's lr came from was at an edge of the lr grid."""
    source = method if group.protocol == "tuned" or method in SYNCHRONOUS else "asgd"   # paper: ASGD's lr
    grid = lr_grid(cluster_grid(study.grid, group.cluster), group.momentum, source, workers)
    if len(grid) < 2:
        return None
    chosen = study.chosen.get((group.protocol, group.lr_name, method, workers))
    lr = None if chosen is None else chosen.lr
    return "smallest" if lr == min(grid) else "largest" if lr == max(grid) else None


def cell_facts(study: Study, group: Group, method: str, workers: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [r["final_test_error"] for r in runs]
    lrs = sorted({r["config"]["lr"] for r in runs})
    params = sorted({p for p in (param_of(r["config"]) for r in runs) if p is not None})
    ended = [r.get("ended_by") or ("epochs" if r.get("outcome", "finished") == "finished" else r.get("outcome"))
             for r in runs]
    return {"method": method, "workers": workers, "seeds": [r["config"]["seed"] for r in runs], "errors": errors,
            **stat(errors), "runs": len(runs), "diverged": sum(bool(r.get("diverged")) for r in runs),
            "lr": lrs[0] if len(lrs) == 1 else lrs, "lr_at_grid_edge": _edge(study, group, method, workers),
            "param": (params[0] if len(params) == 1 else params) if params else None,
            "ended_by": {k: ended.count(k) for k in dict.fromkeys(ended)},
            "epochs_done": stat([r.get("epochs_done") for r in runs])["mean"],
            "sim_time_s": stat([finish_time(r) for r in runs])["mean"]}


def group_facts(study: Study, group: Group) -> dict[str, Any]:
    cells_runs = study.final[group.name]
    keys = [(m, w) for m in METHODS for w in sorted(study.grid["workers"]) if (m, w) in cells_runs]
    cells = {k: cell_facts(study, group, *k, cells_runs[k]) for k in keys}
    workers = sorted({w for _, w in keys if w > 1})
    facts: dict[str, Any] = {
        "name": group.name, "cluster": group.cluster, "protocol": group.protocol, "momentum": group.momentum,
        "lr_group": group.lr_name, "cluster_settings": study.grid["clusters"].get(group.cluster, {}),
        "workers": workers, "cells": list(cells.values()), "target": None, "time_to_target": [],
        "vs_asgd": [], "ordering": [], "ssgd": [], "soonest": [], "soonest_overall": None,
        "gap_to_sequential": None, "ideal": [], "m_star": [], "speedups": []}
    budget = float((study.grid.get("budgets") or {}).get(group.cluster, 0.0))
    facts["time_budget_s"] = budget or None
    facts["epoch_caps"] = {str(w): epoch_cap(cluster_grid(study.grid, group.cluster),
                                             study.meta.get("base_config", {}).get("epochs", 1.0), w)
                           for w in [1, *workers]} if budget else None
    if group.protocol == "paper":
        asgd = {w: study.chosen.get(("paper", group.lr_name, "asgd", w)) for w in workers}
        facts["paper_lr"] = {str(w): c.lr for w, c in asgd.items() if c is not None}
        facts["paper_lr_at_grid_edge"] = {str(w): _edge(study, group, "asgd", w) for w in asgd if asgd[w]}
    for w in workers:
        asgd = cells.get(("asgd", w))
        for method in METHODS:
            if method in ("sequential", "asgd") or (method, w) not in cells or asgd is None:
                continue
            c = cells[(method, w)]
            facts["vs_asgd"].append({
                "method": method, "workers": w, "mean": c["mean"], "std": c["std"], "n": c["n"],
                "asgd_mean": asgd["mean"], "asgd_std": asgd["std"], "asgd_n": asgd["n"],
                "difference": None if None in (c["mean"], asgd["mean"]) else c["mean"] - asgd["mean"],
                "verdict": verdict(c, asgd)})
        chain = [cells.get((m, w)) for m in ("dc-asgd-a", "dc-asgd-c", "asgd")]
        if None not in chain and all(c["mean"] is not None for c in chain):
            pairs = [{"lower": lo["method"], "higher": hi["method"], "lower_mean": lo["mean"], "lower_std": lo["std"],
                      "higher_mean": hi["mean"], "higher_std": hi["std"], "verdict": verdict(lo, hi)}
                     for lo, hi in zip(chain, chain[1:])]
            facts["ordering"].append({"workers": w, "held": all(lo["mean"] < hi["mean"] for lo, hi in
                                                                 zip(chain, chain[1:])),
                                      "clearly": all(p["verdict"] == "lower" for p in pairs), "pairs": pairs})
        if ("ssgd", w) in cells:
            s = cells[("ssgd", w)]
            facts["ssgd"].append({"workers": w, "mean": s["mean"], "std": s["std"], "n": s["n"],
                                  "diverged": s["diverged"], "lr": s["lr"],
                                  "vs": {m: {"mean": cells[(m, w)]["mean"], "std": cells[(m, w)]["std"],
                                             "verdict": verdict(s, cells[(m, w)])}
                                         for m in ("asgd", "dc-asgd-a") if (m, w) in cells}})
    seq = cells.get(("sequential", 1))
    if seq is None or seq["mean"] is None:
        return facts
    target = seq["mean"]
    seq_finish = stat([finish_time(r) for r in cells_runs[("sequential", 1)]])
    facts["target"] = {"error": target, "std": seq["std"], "n": seq["n"], "sequential_finish_s": seq_finish["mean"],
                       "sequential_finish_std_s": seq_finish["std"]}
    for (method, w), runs in ((k, cells_runs[k]) for k in keys):
        times = [first_time_at(r, target) for r in runs]
        reached = [t for t in times if t is not None]
        at_finish = stat([error_at_time(r, seq_finish["mean"]) for r in runs]) if seq_finish["mean"] is not None \
            else stat([])
        facts["time_to_target"].append({
            "method": method, "workers": w, "runs": len(runs), "reached": len(reached), "times_s": times,
            **{f"{k}_s" if k != "n" else k: v for k, v in stat(reached).items()},
            "error_at_sequential_finish": at_finish})
    facts["ladder"] = [_rung(cells_runs, keys, workers, target + offset, offset) for offset in LADDER]
    ttt = {(t["method"], t["workers"]): t for t in facts["time_to_target"]}
    for w in workers:
        facts["soonest"].append(_soonest([t for t in facts["time_to_target"] if t["workers"] == w], w))
    facts["soonest_overall"] = _soonest(facts["time_to_target"], None)
    rennala_s = {w: c.param for w in workers if (c := study.chosen.get((group.protocol, group.lr_name, "rennala", w)))}
    facts.update(speedup_facts(cells_runs, target, rennala_s))
    rows = {(r["method"], r["workers"]): r for r in facts["speedups"]}
    for s in [*facts["soonest"], facts["soonest_overall"]]:
        if s and s.get("method") and s["method"] != "sequential":       # (sequential SGD: the reference)
            s["speedup"] = rows[(s["method"], s["method_workers"])]
            s["vs_ssgd"] = against_ssgd(cells_runs, s["method"], s["method_workers"], target)
    if workers:
        top = workers[-1]
        rows = []
        for method in METHODS:
            c = cells.get((method, top))
            if c is None or c["mean"] is None:
                continue
            rows.append({"method": method, "mean": c["mean"], "std": c["std"], "n": c["n"],
                         "gap": c["mean"] - target, "verdict": verdict(c, seq),
                         "reached": ttt[(method, top)]["reached"], "runs": ttt[(method, top)]["runs"]})
        closest = min(rows, key=lambda r: r["gap"]) if rows else None
        facts["gap_to_sequential"] = {"workers": top, "sequential_mean": target, "sequential_std": seq["std"],
                                      "rows": rows, "closest": closest["method"] if closest else None}
    return facts


def _rung(cells_runs: dict, keys: list, workers: list[int], target: float, offset: float) -> dict[str, Any]:
    """Who reaches ``target`` (sequential SGD's error + ``offset`` points) soonest at each M, and how long
    sequential SGD itself took to reach it."""
    rows = []
    for method, w in keys:
        if method == "sequential":
            continue
        reached = [t for t in (first_time_at(r, target) for r in cells_runs[(method, w)]) if t is not None]
        rows.append({"method": method, "workers": w, "runs": len(cells_runs[(method, w)]), "reached": len(reached),
                     **{f"{k}_s" if k != "n" else k: v for k, v in stat(reached).items()}})
    sequential = stat([first_time_at(r, target) for r in cells_runs[("sequential", 1)]])
    return {"offset": offset, "target": target, "sequential_s": sequential["mean"],
            "sequential_std_s": sequential["std"], "sequential_n": sequential["n"],
            "soonest": [_soonest([r for r in rows if r["workers"] == w], w) for w in workers]}


def _soonest(rows: list[dict[str, Any]], workers: int | None) -> dict[str, Any] | None:
    """The row whose every seed reached the target with the smallest mean time (else the most seeds reached)."""
    candidates = [t for t in rows if t["reached"] > 0]
    if not candidates:
        return {"workers": workers, "method": None, "reached": 0}
    def rank(t: dict[str, Any]) -> tuple[bool, int, float]:
        return t["reached"] < t["runs"], -t["reached"], t["mean_s"]

    ranked = sorted(candidates, key=rank)
    best = ranked[0]
    tied = [t for t in ranked if rank(t) == rank(best)]
    out = {"workers": workers if workers is not None else best["workers"], "method": best["method"],
           "method_workers": best["workers"], "tied": [[t["method"], t["workers"]] for t in tied],
           "mean_s": best["mean_s"], "std_s": best["std_s"], "reached": best["reached"], "runs": best["runs"],
           "runner_up": None}
    if len(ranked) > len(tied):
        nxt = ranked[len(tied)]
        out["runner_up"] = {"method": nxt["method"], "workers": nxt["workers"], "mean_s": nxt["mean_s"],
                            "std_s": nxt["std_s"], "reached": nxt["reached"], "runs": nxt["runs"],
                            "verdict": verdict({"mean": best["mean_s"], "std": best["std_s"], "n": best["n"]},
                                               {"mean": nxt["mean_s"], "std": nxt["std_s"], "n": nxt["n"]})
                            if nxt["reached"] == best["reached"] else "fewer seeds reached it"}
    return out


def stability_facts(study: Study, lr_name: str) -> dict[str, Any]:
    """Largest stable lr per method and M in the lr-selection runs of one cluster and momentum."""
    by_key = study.lr_runs[lr_name]
    momentum = next(g.momentum for g in groups(study.grid) if g.lr_name == lr_name)
    cluster = lr_name.rsplit("-mom", 1)[0]
    mine = cluster_grid(study.grid, cluster)
    grid = [round(lr * (1.0 - momentum), 12) for lr in all_lr_values(mine)]      # every lr of the cluster
    rows = []
    for method in METHODS:
        for w in sorted(study.grid["workers"]):
            runs = _best_per_lr(by_key.get((method, w), []))
            if not runs:
                continue
            own_grid = lr_grid(mine, momentum, method, w)
            errors = [None if r.get("diverged") else r["final_test_error"] for r in runs]
            finite = [e for e in errors if finite_number(e)]
            best = min(finite) if finite else None
            stable = [r["config"]["lr"] for r, e in zip(runs, errors)
                      if best is not None and finite_number(e) and e <= STABLE_FACTOR * best]
            top = max(stable) if stable else None
            rows.append({"method": method, "workers": w, "lrs": [r["config"]["lr"] for r in runs],
                         "errors": [r["final_test_error"] for r in runs],
                         "diverged": [bool(r.get("diverged")) for r in runs],
                         "stable": [r["config"]["lr"] in stable for r in runs], "best_error": best,
                         "best_lr": None if best is None else runs[errors.index(best)]["config"]["lr"],
                         "max_stable_lr": top, "at_grid_top": top is not None and top == max(own_grid),
                         "complete": len(runs) == len(own_grid)})
    most = []
    for w in sorted({r["workers"] for r in rows}):
        at_w = [r for r in rows if r["workers"] == w and r["max_stable_lr"] is not None]
        if not at_w:
            continue
        lr = max(r["max_stable_lr"] for r in at_w)
        methods = [r["method"] for r in at_w if r["max_stable_lr"] == lr]
        everyone = [r for r in rows if r["workers"] == w]
        most.append({"workers": w, "lr": lr, "methods": methods, "of": len(everyone),
                     "others": [r["method"] for r in everyone if r["method"] not in methods],
                     "at_grid_top": lr == max(grid),
                     "diverged_at_top": [r["method"] for r in everyone
                                         if any(d for x, d in zip(r["lrs"], r["diverged"]) if x == max(grid))]})
    return {"lr_group": lr_name, "cluster": cluster, "momentum": momentum, "lr_grid": grid, "factor": STABLE_FACTOR,
            "rows": rows, "most_stable": most}


def _best_per_lr(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One run per lr, by lr: where a method's own setting (S, m, R) was searched too, the best at that lr."""
    def rank(r: dict[str, Any]) -> float:
        error = r["final_test_error"]
        return float("inf") if error is None or r.get("diverged") or not finite_number(error) else error

    best: dict[float, dict[str, Any]] = {}
    for r in runs:
        lr = r["config"]["lr"]
        if lr not in best or rank(r) < rank(best[lr]):
            best[lr] = r
    return [best[lr] for lr in sorted(best)]


def coverage(study: Study) -> dict[str, Any]:
    grid, base = study.grid, study.meta.get("base_config", {})
    return {
        "methods": list(grid["methods"]), "methods_left_out": [m for m in METHODS if m not in grid["methods"]],
        "workers": list(grid["workers"]), "workers_left_out": [w for w in DEFAULT_GRID["workers"]
                                                              if w not in grid["workers"]],
        "seeds": list(grid["seeds"]), "clusters": grid["clusters"], "momenta": list(grid["momenta"]),
        "protocols": list(grid["protocols"]), "protocols_left_out": [p for p in PROTOCOLS
                                                                    if p not in grid["protocols"]],
        "lr_grid": list(grid["lr_grid"]), "lr_grids": grid.get("lr_grids") or {}, "val_size": grid["val_size"],
        "lam0_grid": list(grid.get("lam0_grid") or []),
        "lambda_workers": grid.get("lambda_workers"), "ssp_bound": grid.get("ssp_bound"),
        **{key: grid.get(key) for key in ("rennala_s", "msync_m", "ringmaster_r", "time_budget", "budgets",
                                          "sequential_time_s", "epoch_cap_factor", "epoch_caps", "cluster_grids",
                                          "paper_methods")},
        "epoch_cap_per_workers": study.meta.get("epoch_cap_per_workers"), "dropped": study.meta.get("dropped", []),
        **{k: base.get(k) for k in ("dataset", "model", "epochs", "batch_size", "lr_schedule", "eval_every",
                                    "base_time", "jitter")},
        "final_runs_expected": study.expected, "final_runs_reported": study.expected - len(study.missing),
        "final_runs_missing": study.missing, "left_out": study.left_out,
    }


def facts(study: Study, report_command: str, probe_run: Path | None = None) -> dict[str, Any]:
    """Everything findings.json holds."""
    lr_names = [name for name in dict.fromkeys(g.lr_name for g in groups(study.grid)) if name in study.lr_runs]
    return {
        "runs_command": study.meta.get("command"), "git_commit": study.meta.get("git_commit"),
        "finished": bool(study.meta.get("finished")), "report_command": report_command,
        "run_dir": str(study.run_dir), "rules": {"spread": SPREAD_RULE, "target": TARGET_RULE,
                                                 "stable": STABLE_RULE},
        "coverage": coverage(study),
        "groups": (group_list := [group_facts(study, g) for g in study.groups]),
        "goals": {"statements": list(GOALS), "verdicts": goal_facts(group_list)},
        "recommendations": recommendations(group_list),
        "dropped": study.meta.get("dropped", []),
        "stability": [stability_facts(study, name) for name in lr_names],
        "lambda": {name: [{"lam0": r["config"]["lam0"], "workers": r["config"]["workers"],
                           "error": r["final_test_error"], "diverged": bool(r.get("diverged"))} for r in runs]
                   for name, runs in study.lambda_runs.items()},
        "compensation": None if probe_run is None else str(probe_run),
    }
