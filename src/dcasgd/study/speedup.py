"""Speedups over sequential SGD, the throughput ideal, the m* model, the study's goals: numbers from summaries.

Within one group (cluster x protocol x momentum), with the target the mean final error of sequential SGD:

- **measured speedup** of a run with seed s: ``T_seq(s) / T(s)``, sequential SGD's simulated time for its
  epochs (the run with the same seed; the mean over seeds where that one is missing) over the simulated
  time of the run's first evaluation at or below the target (None where it never got there);
- **throughput-ideal speedup** at M workers, seed s: ``sum_i r_i / r_seq``, the gradients per simulated
  second of the M workers over sequential SGD's, as if every gradient were as useful as a fresh one.  A
  worker's rate is ``r = 1 / (2 comm_time + base_time * speed * E[exp(jitter z)])`` from the speeds and
  timing settings its summary records (``E[exp(jitter z)] = exp(jitter^2 / 2)``);
- **share of the ideal**: measured speedup / ideal speedup, per seed;
- **m\\*** (a model, Tyurin and Richtárik, NeurIPS 2023): with the workers' times ``tau_i = 1 / r_i``
  sorted ascending, the number of fastest workers minimising
  ``(1/m * sum_{i<=m} 1/tau_i)^-1 * (1 + c/m) = (m + c) / sum_{i<=m} 1/tau_i`` (the smallest such m),
  with ``c`` Rennala's batch size S chosen on validation at that M.  The model's own speedup over one
  worker of sequential SGD's speed is ``(1 + c) tau_seq / min_m (m + c) / sum_{i<=m} 1/tau_i``;
- against SSGD: ``T_ssgd(s) / T(s)`` where both reached the target; where SSGD did not, at least
  ``(SSGD's end) / T(s)``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

GOAL_SPEEDUP, GOAL_VS_SSGD, GOAL_WORKERS, GOAL_LARGER = 6.0, 2.0, 16, 64
GOALS = (f"G1: at M={GOAL_WORKERS} on a lognormal cluster the best method reaches sequential SGD's final error at "
         f"least {GOAL_SPEEDUP:g} times sooner than sequential SGD and at least {GOAL_VS_SSGD:g} times sooner than "
         f"SSGD, on every seed",
         f"G2: at M={GOAL_LARGER} the best method is sooner than the best at M={GOAL_WORKERS}")


def finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def stat(values: list[float | None]) -> dict[str, Any]:
    """mean, sample std (0 for one value) and n of the finite values; mean None when there are none."""
    vals = [float(v) for v in values if finite_number(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def first_time_at(run: dict[str, Any], target: float) -> float | None:
    """Simulated time of the run's first evaluation at or below ``target``, or None."""
    for point in run.get("curve", []):
        if finite_number(point.get("test_error")) and point["test_error"] <= target:
            return float(point["time_s"])
    return None


def finish_time(run: dict[str, Any]) -> float | None:
    curve = run.get("curve") or []
    return float(curve[-1]["time_s"]) if curve else None


def gradient_rates(run: dict[str, Any]) -> list[float] | None:
    """Each worker's expected gradients per simulated second, from the run's recorded speeds and timing."""
    speeds, cfg = run.get("speeds"), run.get("config", {})
    if not speeds or any(not finite_number(s) for s in speeds):
        return None
    from ..engine.timing import mean_noise
    return [1.0 / (2 * cfg.get("comm_time", 0.0) + cfg.get("base_time", 1.0) * s * mean_noise(cfg, m))
            for m, s in enumerate(speeds)]


def m_star(rates: list[float], c: float, sequential_rate: float) -> dict[str, Any]:
    """The m* of Tyurin and Richtárik's bound for workers of these rates, and the model's speedup over one worker
    of ``sequential_rate`` (see the module docstring)."""
    ordered = sorted(rates, reverse=True)                     # fastest first: tau ascending
    best_m, best_time, total = 0, math.inf, 0.0
    for m, rate in enumerate(ordered, 1):
        total += rate
        model_time = (m + c) / total
        if model_time < best_time:
            best_m, best_time = m, model_time
    return {"m": best_m, "c": c, "of": len(rates), "model_time": best_time,
            "model_speedup": (1 + c) / sequential_rate / best_time}


def _by_seed(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {r["config"]["seed"]: r for r in runs}


def speedup_facts(cells_runs: dict[tuple[str, int], list[dict[str, Any]]], target: float,
                  rennala_s: dict[int, int | None]) -> dict[str, Any]:
    """The ideal and m* per M, and every (method, M)'s measured speedup and share of the ideal, per seed."""
    sequential = _by_seed(cells_runs.get(("sequential", 1), []))
    seq_time = {s: finish_time(r) for s, r in sequential.items()}
    seq_rate = {s: (gradient_rates(r) or [None])[0] for s, r in sequential.items()}
    mean_seq_time = stat(list(seq_time.values()))["mean"]
    ideal, models, rows = [], [], []
    ideal_by: dict[tuple[int, int], float] = {}
    for w in sorted({w for _, w in cells_runs if w > 1}):
        seeds: dict[int, dict[str, Any]] = {}
        for (_, workers), runs in cells_runs.items():
            if workers == w:
                for r in runs:
                    seeds.setdefault(r["config"]["seed"], r)
        per_seed, stars = {}, {}
        for seed, run in sorted(seeds.items()):
            rates, own = gradient_rates(run), seq_rate.get(seed)
            if rates is None or not own:
                continue
            per_seed[seed] = ideal_by[(w, seed)] = sum(rates) / own
            if rennala_s.get(w):
                stars[seed] = m_star(rates, float(rennala_s[w]), own)
        ideal.append({"workers": w, "per_seed": per_seed, **stat(list(per_seed.values()))})
        models.append({"workers": w, "c": rennala_s.get(w), "per_seed": stars,
                       "m": stat([s["m"] for s in stars.values()]),
                       "model_speedup": stat([s["model_speedup"] for s in stars.values()])})
    for (method, w), runs in cells_runs.items():
        if method == "sequential":
            continue                                          # the reference itself
        speedups, shares = {}, {}
        for r in runs:
            seed, reached = r["config"]["seed"], first_time_at(r, target)
            base = seq_time.get(seed) or mean_seq_time
            speedups[seed] = base / reached if reached and base else None
            ideal_here = ideal_by.get((w, seed))
            shares[seed] = speedups[seed] / ideal_here if speedups[seed] and ideal_here else None
        rows.append({"method": method, "workers": w, "runs": len(runs), "per_seed": speedups,
                     "reached": sum(v is not None for v in speedups.values()), **stat(list(speedups.values())),
                     "share": {"per_seed": shares, **stat(list(shares.values()))}})
    return {"ideal": ideal, "m_star": models, "speedups": rows}


def against_ssgd(cells_runs: dict[tuple[str, int], list[dict[str, Any]]], method: str, workers: int,
                 target: float) -> dict[str, Any] | None:
    """How many times sooner ``method`` reached the target than SSGD at the same M, per seed.

    Where SSGD never reached it, SSGD's end over the method's time bounds that ratio from below
    (``at_least_per_seed``); ``ssgd_ended_first`` marks where that bound is below 1 on some seed (SSGD's run
    ended, at its epoch cap, before the method got there), so the bound says nothing."""
    ssgd = _by_seed(cells_runs.get(("ssgd", workers), []))
    if not ssgd:
        return None
    ratios, at_least = {}, {}
    for seed, run in _by_seed(cells_runs.get((method, workers), [])).items():
        mine, theirs = first_time_at(run, target), ssgd.get(seed)
        if mine is None or theirs is None:
            continue
        ssgd_time = first_time_at(theirs, target)
        if ssgd_time is not None:
            ratios[seed] = ssgd_time / mine
        elif finish_time(theirs):
            at_least[seed] = finish_time(theirs) / mine
    return {"per_seed": ratios, **stat(list(ratios.values())), "ssgd_not_reached": sorted(at_least),
            "at_least_per_seed": at_least, "ssgd_ended_first": any(bound < 1 for bound in at_least.values())}


def goal_facts(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """G1 and G2 (:data:`GOALS`) per group where they apply: met, missed, or n/a (no data), with the numbers."""
    out = []
    for g in groups:
        soonest = {s["workers"]: s for s in g.get("soonest", []) if s.get("method")}
        if g["cluster_settings"].get("hetero_sigma", 0) > 0 and GOAL_WORKERS in g["workers"]:
            best = soonest.get(GOAL_WORKERS)
            verdict, seeds = "n/a", {}
            if g.get("target") and best is None:
                verdict = "missed"                            # no method reached sequential SGD's error
            elif best is not None:
                vs = best.get("vs_ssgd") or {}
                for seed, speedup in best["speedup"]["per_seed"].items():
                    versus = (vs.get("per_seed") or {}).get(seed, (vs.get("at_least_per_seed") or {}).get(seed))
                    seeds[seed] = {"speedup": speedup, "vs_ssgd": versus,
                                   "ssgd_reached": seed in (vs.get("per_seed") or {}),    # else a lower bound
                                   "met": bool(speedup and speedup >= GOAL_SPEEDUP and versus is not None
                                               and versus >= GOAL_VS_SSGD)}
                verdict = "met" if seeds and len(seeds) == best["runs"] and all(
                    s["met"] for s in seeds.values()) else "missed"
            out.append({"goal": "G1", "group": g["name"], "workers": GOAL_WORKERS, "verdict": verdict,
                        "method": best["method"] if best else None, "per_seed": seeds})
        if GOAL_WORKERS in g["workers"] and GOAL_LARGER in g["workers"] and g.get("target"):
            small, large = soonest.get(GOAL_WORKERS), soonest.get(GOAL_LARGER)
            if large is None:
                verdict = "missed"
            elif small is None:
                verdict = "met"
            else:
                verdict = "met" if large["mean_s"] < small["mean_s"] else "missed"
            out.append({"goal": "G2", "group": g["name"], "verdict": verdict,
                        "at": {str(w): None if s is None else {"method": s["method"], "mean_s": s["mean_s"],
                                                               "std_s": s["std_s"], "reached": s["reached"],
                                                               "runs": s["runs"]}
                               for w, s in ((GOAL_WORKERS, small), (GOAL_LARGER, large))}})
    return out


def recommendations(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cluster and M, over the tuned groups (every momentum): the method and momentum that reached
    sequential SGD's error soonest on every seed, else the lowest mean final error.  Each momentum's target is
    its own group's sequential SGD error (``target_error``, recorded with the pick): where momenta give
    different targets, the times compared are to different errors."""
    out = []
    tuned = [g for g in groups if g["protocol"] == "tuned" and g.get("target")]
    for cluster in dict.fromkeys(g["cluster"] for g in tuned):
        mine = [g for g in tuned if g["cluster"] == cluster]
        for w in sorted({w for g in mine for w in g["workers"]}):
            fastest = [(s["mean_s"], g["momentum"], s, g["target"]["error"]) for g in mine for s in g["soonest"]
                       if s["workers"] == w and s.get("method") and s["reached"] == s["runs"]]
            if fastest:
                _, momentum, s, target = min(fastest, key=lambda x: (x[0], x[1]))
                out.append({"cluster": cluster, "workers": w, "method": s["method"], "momentum": momentum,
                            "by": "time to sequential SGD's error", "target_error": target,
                            "mean_s": s["mean_s"], "std_s": s["std_s"],
                            "speedup": s["speedup"], "vs_ssgd": s.get("vs_ssgd")})
                continue
            lowest = [(c["mean"], g["momentum"], c) for g in mine for c in g["cells"]
                      if c["workers"] == w and c["mean"] is not None]
            if lowest:
                _, momentum, c = min(lowest, key=lambda x: (x[0], x[1]))
                out.append({"cluster": cluster, "workers": w, "method": c["method"], "momentum": momentum,
                            "by": "final error (no method reached sequential SGD's error on every seed)",
                            "error_mean": c["mean"], "error_std": c["std"]})
    return out
