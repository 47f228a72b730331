"""Write results/README.md from the files `dcasgd report` wrote (no number typed by hand).

    python scripts/results_readme.py [RESULTS_DIR]      (default: results/ of this repository)

Each study directory of RESULTS_DIR (e.g. results/fmnist-mlp) holds `runs/` (made
by `dcasgd compare`) and the report made by `dcasgd report STUDY/runs --to STUDY`:
`findings.json`, `findings.md`, `table.md`, `table.csv`, `stability.csv`, the plots
and, with a probe run, `compensation.md`.  This script reads `findings.json` (the
numbers, with the commands and the study's grid) and `compensation.md`, and
answers three questions per study, with the spread over seeds:

(a) Does DC-ASGD beat ASGD, and where?
(b) Which method reaches sequential SGD's error soonest in simulated time, and
    how close does it get at the largest M?
(c) Which method stays stable at the largest learning rate?

It also lists what each study covered and left out, and the commands that made
its runs and its report.  It only reads JSON and Markdown: no dcasgd import.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent.parent / "results"

LABELS = {"sequential": "Sequential SGD", "ssgd": "SSGD", "asgd": "ASGD", "ssp": "SSP",
          "staleness": "Staleness-scaled lr", "delay-adaptive": "Delay-adaptive", "gap-aware": "Gap-aware",
          "adadelay": "AdaDelay", "dana": "DANA", "dc-asgd-c": "DC-ASGD-c", "dc-asgd-a": "DC-ASGD-a"}

INTRO = """# Results: delay compensation on the simulated cluster

Zheng et al. (ICML 2017, Table 1; CIFAR-10, ResNet-20) report DC-ASGD-a <
DC-ASGD-c < ASGD in test error, and plot error against wall-clock time (their
Fig. 3), where asynchrony is meant to pay off. The studies below
repeat the comparison with `dcasgd compare` on the deterministic simulated
cluster (real gradients at the stale weights each worker pulled; simulated
clock), in groups of cluster x protocol x momentum: `tuned` gives each method
and M its own learning rate, chosen on a validation split held out from the
training set; `paper` gives every method sequential SGD's learning rate, as the
paper did (SSGD at M times it).

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
             f"{listing(c['protocols'])}; lr grid {listing(c['lr_grid'])} (times 1 - momentum), chosen on a "
             f"{c['val_size']}-sample validation split"
             + (f"; λ₀ sweep {listing(c['lam0_grid'])} at M = {c['lambda_workers']}" if c["lam0_grid"] else "")
             + ".",
             f"- **Left out:** {'; '.join(left) if left else 'nothing of the default grid'}.",
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


# ---------------------------------------------------------------- (a)


def question_a(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## (a) Does DC-ASGD beat ASGD, and where?", ""]
    for study, f in studies:
        rows = [(g, v) for g in f["groups"] for v in g["vs_asgd"] if v["method"] in ("dc-asgd-a", "dc-asgd-c")]
        if not rows:
            lines += [f"`{study.name}`: no DC-ASGD and ASGD runs to compare.", ""]
            continue
        summary = []
        for method in ("dc-asgd-a", "dc-asgd-c"):
            mine = [(g, v) for g, v in rows if v["method"] == method]
            if not mine:
                continue
            where = {k: [f"{g['name']} M={v['workers']}" for g, v in mine if v["verdict"] == k]
                     for k in ("lower", "within the spread", "higher", "no spread")}
            summary.append(f"{LABELS[method]} is clearly below ASGD in {len(where['lower'])} of {len(mine)} "
                           f"(group, M) cells" + (f" ({', '.join(where['lower'])})" if where["lower"] else "")
                           + f", within the spread in {len(where['within the spread'])}, clearly above in "
                           f"{len(where['higher'])}" + (f" ({', '.join(where['higher'])})" if where["higher"] else "")
                           + (f", one seed (no spread) in {len(where['no spread'])}" if where["no spread"] else ""))
        lines += [f"**`{study.name}`:** " + "; ".join(summary) + ".", ""]
        orderings = [(g, o) for g in f["groups"] for o in g["ordering"]]
        if orderings:
            held = [f"{g['name']} M={o['workers']}" + (" (clearly)" if o["clearly"] else "")
                    for g, o in orderings if o["held"]]
            lines += [f"The paper's ordering DC-ASGD-a < DC-ASGD-c < ASGD held in {len(held)} of {len(orderings)} "
                      f"cells (by the means)" + (f": {', '.join(held)}" if held else "") + ".", ""]
        lines += ["| group | M | DC-ASGD-a | DC-ASGD-c | ASGD | SSGD | DC-ASGD-a vs ASGD | DC-ASGD-c vs ASGD |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in f["groups"]:
            for w in g["workers"]:
                cells = {v["method"]: v for v in g["vs_asgd"] if v["workers"] == w}
                if "dc-asgd-a" not in cells and "dc-asgd-c" not in cells:
                    continue
                asgd = next(iter(cells.values()))
                row = [g["name"], str(w)]
                for m in ("dc-asgd-a", "dc-asgd-c"):
                    row.append(pm(cells[m]["mean"], cells[m]["std"]) if m in cells else "")
                row.append(pm(asgd["asgd_mean"], asgd["asgd_std"]))
                row.append(pm(cells["ssgd"]["mean"], cells["ssgd"]["std"]) if "ssgd" in cells else "")
                for m in ("dc-asgd-a", "dc-asgd-c"):
                    row.append(vs(cells[m]["verdict"], cells[m]["mean"], cells[m]["asgd_mean"]) if m in cells else "")
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


# ---------------------------------------------------------------- (b)


def _soonest(s: dict[str, Any] | None) -> str:
    if not s or s.get("method") is None:
        return "none reached it"
    who = names([m for m, _ in s["tied"]]) + (" (tied)" if len(s["tied"]) > 1 else "")
    text = f"{who}: {secs(s['mean_s'], s['std_s'], s['reached'])} ({s['reached']}/{s['runs']} seeds)"
    nxt = s.get("runner_up")
    if nxt:
        spread = {"lower": "clearly later", "no spread": "later, one seed"}.get(nxt["verdict"], nxt["verdict"])
        text += (f"; next {LABELS.get(nxt['method'], nxt['method'])} "
                 f"{secs(nxt['mean_s'], nxt['std_s'], nxt['reached'])} ({spread})")
    return text


def budget_note(f: dict[str, Any], groups: list[dict[str, Any]], top: int) -> str:
    """Every run gets the same epochs: how soon the M = top runs ran out of them, against sequential SGD."""
    ends = [c["sim_time_s"] for g in groups for c in g["cells"]
            if c["workers"] == top and c["method"] != "sequential" and c.get("sim_time_s") is not None
            and not c["diverged"]]                            # (a diverged run stops early)
    sequential = [c["sim_time_s"] for g in groups for c in g["cells"]
                  if c["method"] == "sequential" and c.get("sim_time_s") is not None]
    if not ends or not sequential:
        return ""
    epochs = f.get("coverage", {}).get("epochs")
    budget = (f"{epochs:g} epoch{'' if epochs == 1 else 's'}" if epochs is not None
              else "the same number of epochs")
    return (f"Every run had {budget}: at M = {top} the runs used them up after {min(ends):.0f} to "
            f"{max(ends):.0f} simulated seconds, sequential SGD after {min(sequential):.0f} to "
            f"{max(sequential):.0f} s. So \"not reached\" means not within that budget; runs with more epochs "
            f"at M = {top} (the same simulated time as sequential SGD) were left out for time.")


def question_b(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## (b) Who reaches sequential SGD's error soonest in simulated time, and how close does each get "
             "at the largest M?", "",
             "The target is sequential SGD's mean final test error in the same group; a run reaches it at the "
             "simulated time of its first evaluation at or below it. A method counts as soonest when all its "
             "seeds reached the target (otherwise, the one with the most seeds that did). The gap is the final "
             "error minus sequential SGD's.", ""]
    for study, f in studies:
        groups = [g for g in f["groups"] if g["target"] and g["gap_to_sequential"]]
        if not groups:
            lines += [f"`{study.name}`: no sequential SGD runs, so no target.", ""]
            continue
        top = groups[0]["gap_to_sequential"]["workers"]
        wins: dict[str, int] = {}
        for g in groups:
            s = next((s for s in g["soonest"] if s["workers"] == top), None)
            for m, _ in (s or {}).get("tied", []):
                wins[m] = wins.get(m, 0) + 1
        ranking = sorted(wins.items(), key=lambda kv: -kv[1])
        lines += [f"**`{study.name}`:** at M = {top}, soonest (ties counted for each): "
                  + ("; ".join(f"{LABELS.get(m, m)} in {n} of {len(groups)} groups" for m, n in ranking)
                     or "no method reached the target") + ".", "", budget_note(f, groups, top), ""]
        lines += [f"| group | target (sequential) | sequential took | soonest at M={top} | closest at M={top} "
                  f"(gap) | DC-ASGD-a gap | ASGD gap |", "|---|---|---|---|---|---|---|"]
        for g in groups:
            gap = g["gap_to_sequential"]
            rows = {r["method"]: r for r in gap["rows"]}
            best = min(r["gap"] for r in gap["rows"])
            closest = [r for r in gap["rows"] if r["gap"] == best]

            def gap_text(r: dict[str, Any] | None) -> str:
                if r is None:
                    return ""
                return (f"{r['gap']:+.2f} ({pm(r['mean'], r['std'])}, "
                        f"{vs(r['verdict'], r['mean'], gap['sequential_mean'])})")

            s = next((s for s in g["soonest"] if s["workers"] == gap["workers"]), None)
            target = g["target"]
            took = secs(target["sequential_finish_s"], target["sequential_finish_std_s"], target["n"])
            lines.append(f"| {g['name']} | {pm(target['error'], target['std'])} | {took} | "
                         f"{_soonest(s)} | {names([r['method'] for r in closest])} {gap_text(closest[0])} | "
                         f"{gap_text(rows.get('dc-asgd-a'))} | {gap_text(rows.get('asgd'))} |")
        lines.append("")
        ladder = [(g, rung) for g in groups for rung in g.get("ladder", [])]
        if ladder:
            lines += [f"Relaxed targets, at M = {top}: who is first within a few points of sequential SGD's "
                      f"error, against the simulated time sequential SGD itself needed to get there.", "",
                      "| group | within | target | sequential SGD took | soonest |", "|---|---|---|---|---|"]
            for g, rung in ladder:
                s = next((s for s in rung["soonest"] if s["workers"] == top), None)
                took = (secs(rung["sequential_s"], rung["sequential_std_s"], rung["sequential_n"])
                        if rung["sequential_n"] else "never")
                lines.append(f"| {g['name']} | {rung['offset']:g} points | {rung['target']:.2f} | {took} | "
                             f"{_soonest(s)} |")
            lines.append("")
    return lines


# ---------------------------------------------------------------- (c)


def question_c(studies: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    lines = ["## (c) Which method stays stable at the largest learning rate?", ""]
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
        lines += question_a(studies) + question_b(studies) + question_c(studies) + compensation(studies)
    out = results / "README.md"
    out.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
