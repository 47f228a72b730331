"""Write results/README.md from the files `dcasgd report` wrote (no number typed by hand).

    python scripts/results_readme.py [RESULTS_DIR]      (default: results/ of this repository)

Each study directory of RESULTS_DIR (e.g. results/fmnist-mlp) holds `runs/` (made
by `dcasgd compare`) and the report made by `dcasgd report STUDY/runs --to STUDY`:
`findings.json`, `findings.md`, `table.md`, `table.csv`, `stability.csv`, the plots
and, with a probe run, `compensation.md`.  This script reads `findings.json` (the
numbers, with the commands and the study's grid) and `compensation.md`, and
answers per study, with the spread over seeds:

1. Speedup to sequential SGD's error: for each M and cluster, which method reaches
   it soonest, and how many times sooner than sequential SGD and than SSGD?
2. Share of the ideal: how close does each method come to the throughput ideal
   (and how many workers the m* model says are worth their staleness)?
3. The question of the DC-ASGD paper: at ASGD's learning rate, does DC-ASGD beat ASGD?
4. What should a user pick? A recommendation per regime (cluster and M).

and states each goal of the study (`findings.json["goals"]`) as met or missed,
then which method stays stable at the largest learning rate, and the
compensation probe.  It also lists what each study covered, left out and did
not run (with why), and the commands that made its runs and its report.  It only
reads JSON and Markdown: no dcasgd import.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "results"

LABELS = {"sequential": "Sequential SGD", "ssgd": "SSGD", "asgd": "ASGD", "ssp": "SSP",
          "staleness": "Staleness-scaled lr", "delay-adaptive": "Delay-adaptive", "gap-aware": "Gap-aware",
          "adadelay": "AdaDelay", "dana": "DANA", "dc-asgd-c": "DC-ASGD-c", "dc-asgd-a": "DC-ASGD-a",
          "msync": "m-sync SGD", "rennala": "Rennala SGD", "ringmaster": "Ringmaster ASGD",
          "ringmaster-stop": "Ringmaster (stops)"}

INTRO = """# Results: how much sooner does each method reach sequential SGD's accuracy?

Asynchrony exists to save wall-clock time. The studies below run every method
with `dcasgd compare` on the deterministic simulated cluster (real gradients at
the stale weights each worker pulled; simulated clock) and ask, per cluster and
number of workers M: how much sooner than one worker does a method reach the
test error that sequential SGD reaches with the preset's epochs?

Every run of a cluster gets the same **time budget**: the simulated time
sequential SGD needs for the preset's epochs (the slowest seed), and an epoch
cap (recorded per study below); the learning rate (and Rennala's S, m-sync's m,
Ringmaster's R) is chosen on a validation split held out from the training set,
under that same budget. Groups are cluster x protocol x momentum: `tuned` gives
each method and M its own settings; `paper` runs every asynchronous method at
ASGD's tuned learning rate (as Zheng et al., ICML 2017, kept ASGD's
hyperparameters for DC-ASGD), the synchronous ones (SSGD, m-sync, Rennala) at
their own. A method's **speedup** is sequential SGD's time over the time of its
first evaluation at or below sequential SGD's mean final error (same seed); the
**throughput ideal** is the workers' summed gradient rate over sequential SGD's,
the speedup if every gradient were as useful as a fresh one.

Every number below is copied by `scripts/results_readme.py` from the
`findings.json` that `dcasgd report` computed from the runs' summaries; the
commands that made them are listed per study. The simulator is deterministic:
the same commands give the same numbers, and `python scripts/regenerate_run.py
RUN_DIR` runs one committed run again from its recorded configuration and
compares the summaries field by field; [`regenerated.md`](regenerated.md)
records one run of every table checked that way (`--one-per-table`). Errors are test errors in percent,
mean ± sample standard deviation over seeds; two results are *within the
spread* when the intervals mean ± std overlap."""


def pm(mean: float | None, std: float | None) -> str:
    return "n/a" if mean is None else f"{mean:.2f} ± {std:.2f}"


def secs(mean: float | None, std: float | None, n: int = 2) -> str:
    if mean is None:
        return "n/a"
    decimals = 0 if abs(mean) >= 100 else 1 if abs(mean) >= 10 else 2
    return f"{mean:.{decimals}f} s" if n < 2 else f"{mean:.{decimals}f} ± {std:.{decimals}f} s"


def names(methods: list[str]) -> str:
    labels = [LABELS.get(m, m) for m in methods]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def listing(values: list[Any]) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "none"


def setting(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"worker {k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def vs(verdict: str, a: float | None, b: float | None) -> str:
    if verdict in ("within the spread", "no spread") and a is not None and b is not None:
        side = "lower" if a < b else "higher" if a > b else "equal"
        return f"{side}, within the spread" if verdict == "within the spread" else f"{side}, one seed (no spread)"
    return f"**{verdict}**, clearly" if verdict in ("lower", "higher") else verdict


def load(results: Path) -> list[tuple[Path, dict[str, Any]]]:
    studies = []
    for study in sorted(p for p in results.iterdir() if p.is_dir()):
        path = study / "findings.json"
        if path.exists():
            studies.append((study, json.loads(path.read_text(encoding="utf-8"))))
    return studies


# ---------------------------------------------------------------- what was run


def budget_lines(c: dict[str, Any]) -> list[str]:
    """The study's time budget per cluster, its epoch caps, its S/m/R grids and what it did not run."""
    lines = []
    budgets = {k: v for k, v in (c.get("budgets") or {}).items() if v}
    if budgets:
        caps = c.get("epoch_cap_per_workers") or {}
        lines.append("- **Budget:** " + "; ".join(f"`{k}` {v:.0f} simulated s" for k, v in budgets.items())
                     + " (" + ("sequential SGD's time for the epochs, the slowest seed" if c.get("time_budget")
                               == "sequential" else "given") + ")"
                     + (f"; epoch cap per M: {cap_text(caps)}" if caps else "") + ".")
    searched = (("rennala_s", "Rennala's S", ("rennala",)), ("msync_m", "m-sync's m (below 1: a fraction of M)",
                                                             ("msync",)),
                ("ringmaster_r", "Ringmaster's R", ("ringmaster", "ringmaster-stop")))
    own = [f"{name} {listing(c[key] if isinstance(c[key], list) else [c[key]])}" for key, name, methods in searched
           if c.get(key) is not None and set(methods) & set(c["methods"])]
    if own:
        lines.append(f"- **Method settings searched with the lr:** {'; '.join(own)}.")
    for d in c.get("dropped") or []:
        lines.append(f"- **Not run:** {d['what']}: {d['why']}.")
    return lines


def cap_text(caps: dict[str, dict[str, float]]) -> str:
    """Epoch caps per cluster and M, once when every cluster has the same."""
    def one(table: dict[str, float]) -> str:
        return ", ".join(f"M={w}: {e:g}" for w, e in table.items())

    tables = list(caps.values())
    if all(t == tables[0] for t in tables):
        return one(tables[0])
    return "; ".join(f"`{c}` {one(t)}" for c, t in caps.items())


def times(mean: float | None, std: float | None, n: int = 2) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f}x" if n < 2 else f"{mean:.2f} ± {std:.2f}x"


def share(s: dict[str, Any] | None) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    return f"{100 * s['mean']:.0f}%" + (f" ± {100 * s['std']:.0f}%" if s["n"] > 1 else "")


def coverage(study: Path, f: dict[str, Any]) -> list[str]:
    c = f["coverage"]
    clusters = "; ".join(f"`{name}` ({', '.join(f'{k} {setting(v)}' for k, v in s.items()) or 'no extra settings'})"
                         for name, s in c["clusters"].items())
    left = []
    if c["methods_left_out"]:
        left.append(f"methods {names(c['methods_left_out'])}")
    if c["workers_left_out"]:
        left.append(f"M = {listing(c['workers_left_out'])} (of the default grid)")
    if c["protocols_left_out"]:
        left.append(f"the {listing(c['protocols_left_out'])} protocol")
    if not c["lam0_grid"]:
        left.append("the λ₀ sweep")
    lines = [f"### `{study.name}`", "",
             f"- **Task:** dataset {c['dataset']}, model {c['model']}, epochs {c['epochs']:g}, "
             f"batch size {c['batch_size']}, "
             f"lr schedule {c['lr_schedule']}, evaluation every {c['eval_every']:g} epochs.",
             f"- **Covered:** methods {names(c['methods'])}; M = {listing(c['workers'])}; seeds "
             f"{listing(c['seeds'])}; clusters {clusters}; momenta {listing(c['momenta'])}; protocols "
             f"{listing(c['protocols'])}; lr grid {listing(c['lr_grid'])}"
             + "".join(f", {k}: {listing(v)}" for k, v in (c.get("lr_grids") or {}).items())
             + f" (times 1 - momentum), chosen on a "
             f"{c['val_size']}-sample validation split"
             + (f"; λ₀ sweep {listing(c['lam0_grid'])} at M = {c['lambda_workers']}" if c["lam0_grid"] else "")
             + ".",
             f"- **Left out:** {'; '.join(left) if left else 'nothing of the default grid'}.",
             *budget_lines(c),
             f"- **Runs:** `{f['runs_command']}` (git commit `{f['git_commit']}`); **report:** "
             f"`{f['report_command']}`."]
    if not f["finished"] or c["final_runs_missing"]:
        lines.append(f"- **Unfinished:** {c['final_runs_reported']} of {c['final_runs_expected']} final runs were "
                     f"done when the report was made; the numbers below cover those.")
    if c["left_out"]:
        lines.append(f"- {len(c['left_out'])} run(s) in the directory were not used (not in the grid, or made "
                     f"with other settings; see findings.md).")
    plots = sorted(name for name in f.get("files", []) if name.endswith(".png"))   # this report's, not older ones
    lines.append(f"- **Files:** [`table.md`]({study.name}/table.md) (all cells, with learning rates and times), "
                 f"[`findings.md`]({study.name}/findings.md), `table.csv`, `stability.csv`, `findings.json`"
                 + (", plots " + ", ".join(f"[`{p}`]({study.name}/{p})" for p in plots) if plots else "") + ".")
    return lines + [""]


# ---------------------------------------------------------------- goals


def goals(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    verdicts = [(study, v) for study, f in studies for v in (f.get("goals") or {}).get("verdicts", [])]
    statements = next(((f.get("goals") or {}).get("statements") for _, f in studies if f.get("goals")), None)
    if not statements:
        return []
    lines = ["## The goals, met or missed", ""] + [f"- {s}" for s in statements] + [""]
    if not verdicts:
        return lines + ["No study has the groups these goals are about.", ""]
    lines += ["| study | goal | group | verdict | numbers |", "|---|---|---|---|---|"]
    for study, v in verdicts:
        if v["goal"] == "G1":
            numbers = "; ".join(f"seed {k}: {x['speedup']:.2f}x sequential, "
                                + _g1_vs_ssgd(x)
                                for k, x in v["per_seed"].items() if x["speedup"] is not None)
            numbers = f"{LABELS.get(v['method'], v['method'])}: {numbers}" if v["method"] else "no method reached it"
        else:
            numbers = "; ".join(f"M={w}: " + (f"{LABELS.get(x['method'], x['method'])} "
                                              f"{secs(x['mean_s'], x['std_s'], x['reached'])}" if x else "none")
                                for w, x in v["at"].items())
        lines.append(f"| {study.name} | {v['goal']} | {v['group']} | **{v['verdict']}** | {numbers} |")
    return lines + [""]


# ---------------------------------------------------------------- 1. speedup


def _g1_vs_ssgd(seed: dict[str, Any]) -> str:
    """A G1 seed's ratio to SSGD; where SSGD never reached the target, its run's end over the method's time."""
    if seed["vs_ssgd"] is None:
        return "SSGD n/a"
    if seed.get("ssgd_reached", True):
        return f"{seed['vs_ssgd']:.2f}x SSGD"
    return f"SSGD never reached it (its run ended at {seed['vs_ssgd']:.2f}x this time)"


def ssgd_not_reached_text(seeds: int, bound: float, ended_first: bool) -> str:
    """Where SSGD never reached the target: its run's end over the method's time is a lower bound on how many
    times sooner the method was, stated unless SSGD's run ended before the method got there (``ended_first``,
    from findings.json: the bound is below 1 and says nothing either way)."""
    if ended_first:
        return (f"SSGD never got there in {seeds} seed(s), its runs ending before this method reached it "
                f"(at {bound:.2f}x its time): no comparison")
    return f"SSGD never got there in {seeds} seed(s): at least {bound:.2f}x"


def _vs_ssgd(against: dict[str, Any] | None) -> str:
    if not against:
        return "n/a"
    parts = []
    if against["n"]:
        parts.append(times(against["mean"], against["std"], against["n"])
                     + (f" ({against['n']} seeds)" if against["ssgd_not_reached"] else ""))
    if against["ssgd_not_reached"]:
        parts.append(ssgd_not_reached_text(len(against["ssgd_not_reached"]),
                                           min(against["at_least_per_seed"].values()),
                                           against.get("ssgd_ended_first", False)))
    return "; ".join(parts) or "n/a"


def speedup(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## 1. Speedup to sequential SGD's error", "",
             "Per group and M, the method that reaches sequential SGD's mean final error soonest (all seeds "
             "reaching it first; otherwise the most seeds), how many times sooner than sequential SGD (per seed, "
             "mean ± std over the seeds that reached it) and than SSGD (where SSGD never reached it, a lower "
             "bound: its end over the method's time; where SSGD's runs ended at their epoch cap before the "
             "method reached it, that bound is below 1 and the table says there is no comparison).", ""]
    for study, f in studies:
        groups = [g for g in f["groups"] if g.get("target") and g.get("speedups")]
        if not groups:
            lines += [f"`{study.name}`: no sequential SGD runs, so no target and no speedups.", ""]
            continue
        lines += [f"**`{study.name}`** ([`speedup.png`]({study.name}/speedup.png), "
                  f"[`time_curves.png`]({study.name}/time_curves.png)):", "",
                  "| group | M | soonest | time | × sooner than sequential SGD | × sooner than SSGD | "
                  "throughput ideal | share of it |", "|---|---|---|---|---|---|---|---|"]
        for g in groups:
            ideal = {i["workers"]: i for i in g["ideal"]}
            for s in g["soonest"]:
                i = ideal.get(s["workers"], {})
                ideal_text = times(i.get("mean"), i.get("std"), i.get("n", 0))
                if not s.get("method"):
                    lines.append(f"| {g['name']} | {s['workers']} | none reached it | | | | {ideal_text} | |")
                    continue
                sp = s["speedup"]
                who = names([m for m, _ in s["tied"]]) + (" (tied)" if len(s["tied"]) > 1 else "")
                lines.append(f"| {g['name']} | {s['workers']} | {who} | {secs(s['mean_s'], s['std_s'], s['reached'])} "
                             f"({s['reached']}/{s['runs']}) | {times(sp['mean'], sp['std'], sp['n'])} | "
                             f"{_vs_ssgd(s.get('vs_ssgd'))} | {ideal_text} | {share(sp['share'])} |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- 2. share of the ideal


def ideal_share(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## 2. Share of the throughput ideal", "",
             "Each method's measured speedup over the throughput ideal, per seed (mean ± std over the seeds that "
             "reached sequential SGD's error), highest first; m* is the number of fastest workers that the model "
             "of Tyurin and Richtárik (NeurIPS 2023) says minimise the time to a target, with c = Rennala's S "
             "chosen on validation: a model, not a measurement.", ""]
    for study, f in studies:
        groups = [g for g in f["groups"] if g.get("speedups")]
        if not groups:
            continue
        lines += [f"**`{study.name}`:**", "", "| group | M | throughput ideal | shares of it | m* (model) |",
                  "|---|---|---|---|---|"]
        for g in groups:
            ideal = {i["workers"]: i for i in g["ideal"]}
            stars = {m["workers"]: m for m in g.get("m_star", [])}
            for w in g["workers"]:
                rows = sorted((r for r in g["speedups"] if r["workers"] == w and r["share"]["mean"] is not None),
                              key=lambda r: -r["share"]["mean"])
                shares = "; ".join(f"{LABELS.get(r['method'], r['method'])} {share(r['share'])}"
                                   + (f" ({r['reached']}/{r['runs']})" if r["reached"] < r["runs"] else "")
                                   for r in rows) or "no method reached the target"
                i, star = ideal.get(w, {}), stars.get(w) or {}
                m = (f"{star['m']['mean']:.3g} of {w} (c = {star['c']})" if star.get("c") and star["m"]["mean"]
                     is not None else "n/a (no Rennala S)")
                lines.append(f"| {g['name']} | {w} | {times(i.get('mean'), i.get('std'), i.get('n', 0))} | {shares} | "
                             f"{m} |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- 3. the DC-ASGD paper's question


def paper_question(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## 3. At ASGD's learning rate, does DC-ASGD beat ASGD?", "",
             "The `paper` groups run every asynchronous method at ASGD's tuned learning rate for its M. Final test "
             "error at the end of the budget (or the epoch cap), and the speedup to sequential SGD's error.", ""]
    for study, f in studies:
        paper = [g for g in f["groups"] if g["protocol"] == "paper"]
        rows = [(g, v) for g in paper for v in g["vs_asgd"] if v["method"] in ("dc-asgd-a", "dc-asgd-c")]
        if not rows:
            lines += [f"`{study.name}`: no `paper` group with DC-ASGD and ASGD.", ""]
            continue
        summary = []
        for method in ("dc-asgd-a", "dc-asgd-c"):
            mine = [(g, v) for g, v in rows if v["method"] == method]
            if mine:
                where = {k: [f"{g['name']} M={v['workers']}" for g, v in mine if v["verdict"] == k]
                         for k in ("lower", "within the spread", "higher", "no spread")}
                summary.append(f"{LABELS[method]} is clearly below ASGD in {len(where['lower'])} of {len(mine)} "
                               f"cells" + (f" ({', '.join(where['lower'])})" if where["lower"] else "")
                               + f", within the spread in {len(where['within the spread'])}, clearly above in "
                               f"{len(where['higher'])}" + (f" ({', '.join(where['higher'])})" if where["higher"]
                                                            else ""))
        lines += [f"**`{study.name}`:** " + "; ".join(summary) + ".", "",
                  "| group | M | ASGD's lr | DC-ASGD-a | DC-ASGD-c | ASGD | DC-ASGD-a vs ASGD | speedup DC-ASGD-a | "
                  "speedup ASGD |", "|---|---|---|---|---|---|---|---|---|"]
        for g in paper:
            speed = {(r["method"], r["workers"]): r for r in g.get("speedups", [])}
            for w in g["workers"]:
                cells = {v["method"]: v for v in g["vs_asgd"] if v["workers"] == w}
                if "dc-asgd-a" not in cells and "dc-asgd-c" not in cells:
                    continue
                asgd = next(iter(cells.values()))
                paper_lr = g.get("paper_lr")           # (a report made before the protocol took ASGD's lr: one)
                lr = paper_lr.get(str(w)) if isinstance(paper_lr, dict) else paper_lr

                def sp(method: str) -> str:
                    r = speed.get((method, w))
                    return "" if r is None else (f"{times(r['mean'], r['std'], r['n'])} ({r['reached']}/{r['runs']})"
                                                 if r["reached"] else f"not reached (0/{r['runs']})")

                lines.append(f"| {g['name']} | {w} | {'n/a' if lr is None else f'{lr:g}'} | "
                             + " | ".join(pm(cells[m]["mean"], cells[m]["std"]) if m in cells else ""
                                          for m in ("dc-asgd-a", "dc-asgd-c"))
                             + f" | {pm(asgd['asgd_mean'], asgd['asgd_std'])} | "
                             + (vs(cells["dc-asgd-a"]["verdict"], cells["dc-asgd-a"]["mean"],
                                   cells["dc-asgd-a"]["asgd_mean"]) if "dc-asgd-a" in cells else "")
                             + f" | {sp('dc-asgd-a')} | {sp('asgd')} |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- 4. what to pick


def recommendation(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## 4. What should a user pick?", "",
             "Per regime (cluster and M), over the `tuned` groups of every momentum: the method and momentum that "
             "reached sequential SGD's error soonest on every seed; where none did, the lowest final error. Each "
             "momentum's target is its own sequential SGD's error, given beside the pick: where they differ, "
             "so do the errors whose times are compared.", ""]
    for study, f in studies:
        picks = f.get("recommendations") or []
        if not picks:
            continue
        lines += [f"**`{study.name}`:**", ""]
        for r in picks:
            what = f"{LABELS.get(r['method'], r['method'])} with momentum {r['momentum']:g}"
            if "mean_s" in r:
                sp = r["speedup"]
                target = f" ({r['target_error']:.2f}% at that momentum)" if "target_error" in r else ""
                why = (f"reaches sequential SGD's error{target} in {secs(r['mean_s'], r['std_s'], sp['runs'])}, "
                       f"{times(sp['mean'], sp['std'], sp['n'])} sooner than sequential SGD; against SSGD: "
                       f"{_vs_ssgd(r.get('vs_ssgd'))}")
            else:
                why = (f"no method reached sequential SGD's error on every seed; lowest final error "
                       f"{pm(r['error_mean'], r['error_std'])}")
            lines.append(f"- `{r['cluster']}`, M = {r['workers']}: **{what}**: {why}.")
        lines.append("")
    return lines


# ---------------------------------------------------------------- (c)


def question_c(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## Which method stays stable at the largest learning rate?", ""]
    rule = next((f["rules"]["stable"] for _, f in studies), None)
    if rule:
        lines += [f"From the lr-selection runs (tuned protocol, seed 0, validation split). Rule: {rule}.", ""]
    for study, f in studies:
        if not f["stability"]:
            lines += [f"`{study.name}`: no lr-selection runs (a single lr, or only the paper protocol).", ""]
            continue
        lines += [f"**`{study.name}`:**", "", "| lr runs | lr grid | M | largest stable lr: methods | "
                  "diverged at the largest lr of the grid |", "|---|---|---|---|---|"]
        for s in f["stability"]:
            for most in s["most_stable"]:
                if most["workers"] == 1 and len(s["most_stable"]) > 1:
                    continue                               # sequential SGD alone: nothing to compare
                if not most["others"]:
                    who = f"every method ({most['of']})" if most["of"] > 1 else names(most["methods"])
                elif len(most["methods"]) > most["of"] / 2:
                    who = f"all but {names(most['others'])} ({len(most['methods'])} of {most['of']})"
                else:
                    who = f"{names(most['methods'])} ({len(most['methods'])} of {most['of']})"
                top = " (the top of the grid)" if most["at_grid_top"] else ""
                diverged = names(most["diverged_at_top"]) if most["diverged_at_top"] else "none"
                lines.append(f"| {s['lr_group']} | {listing(s['lr_grid'])} | {most['workers']} | {most['lr']:g}"
                             f"{top}: {who} | {diverged} |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- compensation


def compensation(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = []
    for study, f in studies:
        path = study / "compensation.md"
        if "compensation.md" not in f.get("files", []) or not path.exists():
            continue
        text = path.read_text(encoding="utf-8").splitlines()
        run = next((t for t in text if t.startswith("_Run:")), "")
        median = next((t for t in text if t.startswith("In the median")), "")
        lines += [f"**`{study.name}`** ([`compensation.md`]({study.name}/compensation.md), "
                  f"[`compensation.png`]({study.name}/compensation.png)): {text[0].lstrip('# ')}", ""]
        for text_line in (run, median):
            if text_line:
                lines += [text_line, ""]
    return (["## The compensation probe", "",
             "How close the delay-compensated gradient comes to the gradient the worker missed, measured on "
             "probed pushes of one run (see each `compensation.md` for every estimate and the best scale).", ""]
            + lines) if lines else []


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    results = Path(args[0]) if args else RESULTS
    studies = load(results)
    lines = INTRO.splitlines() + [""]
    if not studies:
        lines += ["No study has been reported yet (no `findings.json` under the study directories).", ""]
    else:
        lines += ["## What was run", ""]
        for study, f in studies:
            lines += coverage(study, f)
        lines += (goals(studies) + speedup(studies) + ideal_share(studies) + paper_question(studies)
                  + recommendation(studies) + question_c(studies) + compensation(studies))
    out = results / "README.md"
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
