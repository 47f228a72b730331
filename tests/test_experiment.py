"""compare + report on a tiny grid of two groups: the layout, resumability, stale runs, and every report
number recomputed here from the runs' summaries (never from the report's own code)."""

import csv
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from dcasgd.cli import main
from dcasgd.config import TrainConfig
from dcasgd.study.compare import (DEFAULT_GRID, METHODS, PARAMETER, Choice, Group, config_differences, method_of,
                                  method_settings)
from dcasgd.study.findings import STABLE_FACTOR, Study, facts
from dcasgd.study.report import write_findings, write_tables

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("straggler-paper-mom0", "straggler-tuned-mom0")
STUDY_TOML = """dataset = "synthetic"
epochs = 1
batch_size = 32
eval_every = 0.25
[compare]
methods = ["sequential", "asgd", "dc-asgd-a"]
workers = [1, 4]
seeds = [0, 1]
lr_grid = [0.05, 0.2]
protocols = ["paper", "tuned"]
lam0_grid = [1.0, 4.0]
lambda_workers = 4
val_size = 256
[compare.clusters]
straggler = { stragglers = { "3" = 4.0 } }
"""
PAIRS = [("sequential", 1), ("asgd", 4), ("dc-asgd-a", 4)]


def compare_args(out: Path, config: Path) -> list[str]:
    return ["compare", str(out), "--config", str(config), "--jobs", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished study (20 short runs, two groups) and its report written into the study directory."""
    home = tmp_path_factory.mktemp("study")
    config = home / "study.toml"
    config.write_text(STUDY_TOML)
    out = home / "runs"
    assert main(compare_args(out, config)) == 0
    assert main(["report", str(out)]) == 0
    return out


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def final_runs(study: Path, group: str, method: str, workers: int) -> list[dict]:
    return [summary(study / "final" / group / f"{method}-M{workers}-s{s}") for s in (0, 1)]


def findings(study: Path) -> dict:
    return json.loads((study / "findings.json").read_text())


def first_time_at(run: dict, target: float):
    return next((p["time_s"] for p in run["curve"] if p["test_error"] <= target), None)


# ---------------------------------------------------------------- compare


def test_grid_runs_and_learning_rates_chosen_on_validation(study):
    meta = json.loads((study / "compare.json").read_text())
    assert set(meta["chosen_lr"]) == {f"straggler-mom0/{m}@M{w}" for m, w in PAIRS}
    for key, lr in meta["chosen_lr"].items():
        method, m = key.split("/")[1].split("@M")
        val = {x: summary(study / "lr" / "straggler-mom0" / f"{method}-M{m}-lr{x:g}") for x in (0.05, 0.2)}
        assert all(s["eval_split"] == "val" for s in val.values())
        assert lr == min(val, key=lambda x: (val[x]["final_test_error"], x))
    assert sorted(p.name for p in (study / "final").iterdir()) == sorted(GROUPS)
    for group in GROUPS:
        assert sorted(p.name for p in (study / "final" / group).iterdir()) == sorted(
            f"{m}-M{w}-s{s}" for m, w in PAIRS for s in (0, 1))
    asgd_lr = meta["chosen_lr"]["straggler-mom0/asgd@M4"]
    for method, workers in PAIRS:          # paper: ASGD's lr for the asynchronous methods, sequential SGD its own
        own = meta["chosen_lr"][f"straggler-mom0/{method}@M{workers}"]
        for run in final_runs(study, "straggler-paper-mom0", method, workers):
            assert run["config"]["lr"] == (own if method == "sequential" else asgd_lr)
            assert run["eval_split"] == "test"
        for run in final_runs(study, "straggler-tuned-mom0", method, workers):
            assert run["config"]["lr"] == meta["chosen_lr"][f"straggler-mom0/{method}@M{workers}"]
            assert run["config"]["stragglers"] == ({"3": 4.0} if workers == 4 else {})
    assert sorted(p.name for p in (study / "lambda" / "straggler-paper-mom0").iterdir()) == ["lam0-1", "lam0-4"]


def test_compare_is_resumable(study, capsys):
    before = {p: p.stat().st_mtime_ns for p in study.rglob("summary.json")}
    assert main(compare_args(study, study.parent / "study.toml")) == 0
    assert "skipped (done before)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in study.rglob("summary.json")} == before


@pytest.mark.parametrize("method", METHODS)
def test_method_names_round_trip(method):
    settings = method_settings(method, 2, 3 if method in PARAMETER else None)
    workers = 1 if method == "sequential" else 4
    assert method_of({**settings, "workers": workers}) == method


def test_a_final_run_made_with_another_lr_is_moved_aside_and_run_again(tmp_path, capsys):
    """Narrowing the grid to another lr must not reuse the final run made at the old one."""
    out = tmp_path / "study"
    args = ["compare", str(out), "--dataset", "synthetic", "--methods", "asgd", "--workers-grid", "4",
            "--seeds", "0", "--lam0-grid", "", "--val-size", "64", "--epochs", "1", "--batch-size", "32",
            "--jobs", "1", "--threads", "1"]
    run = Path("final") / "homogeneous-tuned-mom0" / "asgd-M4-s0"
    assert main(args + ["--lr-grid", "0.2"]) == 0
    first = summary(out / run)
    assert main(args + ["--lr-grid", "0.05"]) == 0
    assert "stale: " in capsys.readouterr().out
    moved = summary(out / "stale" / run)
    assert moved == first and moved["config"]["lr"] == 0.2                  # kept, not deleted
    assert summary(out / run)["config"]["lr"] == 0.05
    assert json.loads((out / "compare.json").read_text())["chosen_lr"] == {"homogeneous-mom0/asgd@M4": 0.05}
    assert main(args + ["--lr-grid", "0.2"]) == 0                          # and back: a second stale copy
    assert (out / "stale" / run.parent / "asgd-M4-s0.1" / "summary.json").exists()


def test_config_differences_name_computing_settings_only():
    wanted = TrainConfig(lr=0.05, out="here", progress=False)
    recorded = json.loads(json.dumps(TrainConfig(lr=0.2, out="elsewhere", progress=True).to_dict()))
    assert config_differences(recorded, wanted) == ["lr: 0.2 -> 0.05"]
    del recorded["corrupt"]                                  # a run recorded before the field existed
    recorded["lr"] = 0.05
    assert config_differences(recorded, wanted) == []


def test_lr_runs_made_with_other_settings_are_not_used_to_choose(tmp_path):
    """A setting changed since the lr phase (here epochs): its runs are stale, rerun, and chosen from anew."""
    out = tmp_path / "study"
    args = ["compare", str(out), "--dataset", "synthetic", "--methods", "asgd", "--workers-grid", "4",
            "--seeds", "0", "--lam0-grid", "", "--val-size", "64", "--batch-size", "32", "--lr-grid", "0.05,0.2",
            "--jobs", "1", "--threads", "1"]
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--epochs", "0.5"]) == 0
    lr_dir = Path("lr") / "homogeneous-mom0"
    cap = 4                                      # under the study's budget M = 4 runs to 4 x the epochs (budget.py)
    for lr in ("0.05", "0.2"):
        assert summary(out / "stale" / lr_dir / f"asgd-M4-lr{lr}")["config"]["epochs"] == cap * 1
    val = {lr: summary(out / lr_dir / f"asgd-M4-lr{lr:g}") for lr in (0.05, 0.2)}
    assert all(s["config"]["epochs"] == cap * 0.5 for s in val.values())
    chosen = min(val, key=lambda lr: (val[lr]["final_test_error"], lr))
    assert json.loads((out / "compare.json").read_text())["chosen_lr"] == {"homogeneous-mom0/asgd@M4": chosen}
    final = summary(out / "final" / "homogeneous-tuned-mom0" / "asgd-M4-s0")["config"]
    assert final["epochs"] == cap * 0.5 and final["lr"] == chosen


# ---------------------------------------------------------------- report: files


def test_every_output_file_is_written_and_names_both_commands(study):
    names = ("table.md", "table.csv", "stability.csv", "findings.md", "findings.json", "curves.png",
             "time_curves.png", "staleness.png", "stability.png", "lambda.png", "speedup.png")
    assert sorted(findings(study)["files"]) == sorted(names)
    for name in names:
        path = study / name
        assert path.exists() and path.stat().st_size > 0, name
    for png in study.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs_command = json.loads((study / "compare.json").read_text())["command"]
    for name in ("table.md", "findings.md"):
        text = (study / name).read_text()
        assert f"`{runs_command}`" in text and f"`dcasgd report {study}`" in text
    numbers = findings(study)
    assert numbers["runs_command"] == runs_command and numbers["report_command"] == f"dcasgd report {study}"
    assert numbers["finished"] and numbers["coverage"]["final_runs_missing"] == []


def test_table_numbers_equal_the_runs_summaries(study):
    rows = list(csv.DictReader(open(study / "table.csv")))
    assert sorted((r["group"], r["method"], r["workers"]) for r in rows) == sorted(
        (g, m, str(w)) for g in GROUPS for m, w in PAIRS)
    table = (study / "table.md").read_text()
    for row in rows:
        runs = final_runs(study, row["group"], row["method"], int(row["workers"]))
        errors = [r["final_test_error"] for r in runs]
        assert float(row["mean_error_pct"]) == pytest.approx(statistics.fmean(errors), abs=1e-4)
        assert float(row["std_error_pct"]) == pytest.approx(statistics.stdev(errors), abs=1e-4)
        assert row["runs"] == "2" and row["diverged"] == str(sum(r["diverged"] for r in runs))
        assert float(row["lr"]) == runs[0]["config"]["lr"]
        assert f"{statistics.fmean(errors):.2f} ± {statistics.stdev(errors):.2f} (n=2" in table


def test_time_to_target_is_recomputed_from_the_curves(study):
    rows = {(r["group"], r["method"], r["workers"]): r for r in csv.DictReader(open(study / "table.csv"))}
    numbers = {g["name"]: g for g in findings(study)["groups"]}
    for group in GROUPS:
        sequential = final_runs(study, group, "sequential", 1)
        target = statistics.fmean(r["final_test_error"] for r in sequential)
        finish = statistics.fmean(r["curve"][-1]["time_s"] for r in sequential)
        g = numbers[group]
        assert g["target"]["error"] == pytest.approx(target)
        assert g["target"]["sequential_finish_s"] == pytest.approx(finish)
        by_key = {(t["method"], t["workers"]): t for t in g["time_to_target"]}
        for method, workers in PAIRS:
            runs = final_runs(study, group, method, workers)
            times = [first_time_at(r, target) for r in runs]
            reached = [t for t in times if t is not None]
            t = by_key[(method, workers)]
            assert t["times_s"] == times and t["reached"] == len(reached)
            row = rows[(group, method, str(workers))]
            assert float(row["target_error_pct"]) == pytest.approx(target, abs=1e-4)
            assert row["reached_target"] == str(len(reached))
            if reached:
                assert t["mean_s"] == pytest.approx(statistics.fmean(reached))
                assert float(row["time_to_target_mean_s"]) == pytest.approx(statistics.fmean(reached), rel=1e-5)
            at_finish = [[p["test_error"] for p in r["curve"] if p["time_s"] <= finish][-1] for r in runs]
            assert t["error_at_sequential_finish"]["mean"] == pytest.approx(statistics.fmean(at_finish))
        gap = {r["method"]: r for r in g["gap_to_sequential"]["rows"]}
        for method, workers in PAIRS[1:]:
            mean = statistics.fmean(r["final_test_error"] for r in final_runs(study, group, method, workers))
            assert gap[method]["gap"] == pytest.approx(mean - target)


def test_stability_is_recomputed_from_the_lr_runs(study):
    (s,) = findings(study)["stability"]
    assert s["lr_group"] == "straggler-mom0" and s["lr_grid"] == [0.05, 0.2]
    rows = {(r["method"], r["workers"]): r for r in s["rows"]}
    written = list(csv.DictReader(open(study / "stability.csv")))
    for method, workers in PAIRS:
        runs = [summary(study / "lr" / "straggler-mom0" / f"{method}-M{workers}-lr{x:g}") for x in (0.05, 0.2)]
        ok = [r for r in runs if not r["diverged"]]
        best = min(r["final_test_error"] for r in ok)
        stable = [r["config"]["lr"] for r in ok if r["final_test_error"] <= STABLE_FACTOR * best]
        assert rows[(method, workers)]["max_stable_lr"] == max(stable)
        mine = [w for w in written if (w["method"], w["workers"]) == (method, str(workers))]
        assert [float(w["lr"]) for w in mine] == [0.05, 0.2]
        assert [w["stable"] == "1" for w in mine] == [r["config"]["lr"] in stable for r in runs]
    best_lr = max(rows[k]["max_stable_lr"] for k in PAIRS[1:])
    (most,) = [m for m in s["most_stable"] if m["workers"] == 4]
    assert most["lr"] == best_lr and set(most["methods"]) == {m for m, w in PAIRS[1:]
                                                              if rows[(m, w)]["max_stable_lr"] == best_lr}
    assert "stable: the lr-selection run" in (study / "findings.md").read_text()


def test_findings_compare_dc_asgd_with_asgd_by_the_stated_rule(study):
    numbers = {g["name"]: g for g in findings(study)["groups"]}
    text = (study / "findings.md").read_text()
    for group in GROUPS:
        dc = [r["final_test_error"] for r in final_runs(study, group, "dc-asgd-a", 4)]
        asgd = [r["final_test_error"] for r in final_runs(study, group, "asgd", 4)]
        (m1, s1), (m2, s2) = ((statistics.fmean(x), statistics.stdev(x)) for x in (dc, asgd))
        expected = ("within the spread" if abs(m1 - m2) <= s1 + s2 else "lower" if m1 < m2 else "higher")
        (row,) = [v for v in numbers[group]["vs_asgd"] if v["method"] == "dc-asgd-a"]
        assert row["verdict"] == expected and row["difference"] == pytest.approx(m1 - m2)
        assert f"DC-ASGD-a {m1:.2f} ± {s1:.2f} vs ASGD {m2:.2f} ± {s2:.2f}: " in text


# ---------------------------------------------------------------- report: hand-made summaries


def _run(method: str, workers: int, seed: int, lr: float, final: float | None, curve: list[tuple[float, float]],
         diverged: bool = False) -> dict:
    return {"final_test_error": final, "diverged": diverged, "_method": method,
            "curve": [{"epoch": i / 4, "time_s": t, "test_error": e} for i, (t, e) in enumerate(curve)],
            "config": {**method_settings(method, 2), "workers": workers, "seed": seed, "lr": lr}}


def test_report_numbers_on_hand_made_summaries(tmp_path):
    """Numbers worked out by hand: target, time to target, edges of the lr grid, stability, verdicts."""
    grid = {**DEFAULT_GRID, "methods": ["sequential", "asgd", "dc-asgd-a"], "workers": [1, 4], "seeds": [0, 1, 2],
            "lr_grid": [0.05, 0.1, 0.2], "momenta": [0.5]}
    group = Group("homogeneous", "tuned", 0.5)                     # lr grid at momentum 0.5: 0.025, 0.05, 0.1
    seq = [_run("sequential", 1, s, 0.1, e, [(0, 90), (20, 30), (40, e)]) for s, e in enumerate((10.0, 12.0, 14.0))]
    asgd = [_run("asgd", 4, 0, 0.05, 11.0, [(0, 90), (5, 12), (10, 11)]),
            _run("asgd", 4, 1, 0.05, 12.0, [(0, 90), (6, 12), (10, 12)]),
            _run("asgd", 4, 2, 0.05, 13.0, [(0, 90), (5, 15), (10, 13)])]
    dca = [_run("dc-asgd-a", 4, s, 0.025, e, [(0, 90), (t, 11.5), (10, e)])
           for s, (t, e) in enumerate(((4, 9.0), (4, 9.5), (5, 10.0)))]
    lr_runs = {("asgd", 4): [_run("asgd", 4, 0, 0.025, 20.0, []), _run("asgd", 4, 0, 0.05, 15.0, []),
                             _run("asgd", 4, 0, 0.1, 90.0, [], diverged=True)],
               ("dc-asgd-a", 4): [_run("dc-asgd-a", 4, 0, x, e, []) for x, e in ((0.025, 16.0), (0.05, 15.0),
                                                                                  (0.1, 16.4))]}
    study = Study(tmp_path, {"command": "dcasgd compare X", "git_commit": "abc", "finished": True}, grid,
                  {("tuned", "homogeneous-mom0.5", "sequential", 1): Choice(0.1),
                   ("tuned", "homogeneous-mom0.5", "asgd", 4): Choice(0.05),
                   ("tuned", "homogeneous-mom0.5", "dc-asgd-a", 4): Choice(0.025)},
                  [group], {group.name: {("sequential", 1): seq, ("asgd", 4): asgd, ("dc-asgd-a", 4): dca}},
                  {"homogeneous-mom0.5": lr_runs}, {}, expected=9)
    numbers = facts(study, "dcasgd report X")
    (g,) = numbers["groups"]
    cells = {(c["method"], c["workers"]): c for c in g["cells"]}
    assert cells[("sequential", 1)]["mean"] == 12.0 and cells[("sequential", 1)]["std"] == 2.0
    assert [cells[k]["lr_at_grid_edge"] for k in PAIRS] == ["largest", None, "smallest"]
    assert g["target"]["error"] == 12.0 and g["target"]["sequential_finish_s"] == 40.0
    ttt = {(t["method"], t["workers"]): t for t in g["time_to_target"]}
    assert ttt[("asgd", 4)]["times_s"] == [5, 6, None] and ttt[("asgd", 4)]["mean_s"] == 5.5
    assert ttt[("sequential", 1)]["times_s"] == [40, 40, None]           # 10 and 12 reach 12 at the end only
    assert ttt[("dc-asgd-a", 4)]["mean_s"] == pytest.approx(13 / 3)
    assert ttt[("asgd", 4)]["error_at_sequential_finish"]["mean"] == 12.0
    (soonest,) = g["soonest"]
    assert soonest["method"] == "dc-asgd-a" and soonest["reached"] == 3          # all seeds, before asgd (2 of 3)
    assert soonest["runner_up"]["method"] == "asgd" and soonest["runner_up"]["verdict"] == "fewer seeds reached it"
    (vs,) = [v for v in g["vs_asgd"] if v["method"] == "dc-asgd-a"]
    assert vs["verdict"] == "lower" and vs["difference"] == pytest.approx(9.5 - 12.0)   # 9.5±0.5 vs 12±1
    gap = {r["method"]: r for r in g["gap_to_sequential"]["rows"]}
    assert gap["dc-asgd-a"]["gap"] == pytest.approx(-2.5) and gap["asgd"]["verdict"] == "within the spread"
    (stab,) = numbers["stability"]
    rows = {r["method"]: r for r in stab["rows"]}
    assert rows["asgd"]["max_stable_lr"] == 0.05 and rows["asgd"]["stable"] == [False, True, False]
    assert rows["dc-asgd-a"]["max_stable_lr"] == 0.1 and rows["dc-asgd-a"]["at_grid_top"]
    assert stab["most_stable"] == [{"workers": 4, "lr": 0.1, "methods": ["dc-asgd-a"], "of": 2, "others": ["asgd"],
                                    "at_grid_top": True, "diverged_at_top": ["asgd"]}]
    write_tables(numbers, tmp_path)
    write_findings(numbers, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "12.00 ± 2.00 (n=3, lr 0.1 (largest of grid))" in table
    assert "12.00 ± 1.00 (n=3, lr 0.05)" in table and "9.50 ± 0.50 (n=3, lr 0.025 (smallest of grid))" in table
    assert "5.50 ± 0.71 s (2/3)" in table and "(0.05, 0.1, 0.2; times 1 - momentum)" in table
    text = (tmp_path / "findings.md").read_text()
    assert "DC-ASGD-a 9.50 ± 0.50 vs ASGD 12.00 ± 1.00: lower, clearly" in text
    assert "M=4: DC-ASGD-a (1 of 2) up to lr 0.1 (the top of the grid); diverged at the top lr: ASGD" in text
    assert json.loads((tmp_path / "findings.json").read_text())["groups"][0]["target"]["error"] == 12.0


def test_a_diverged_cell_says_so(tmp_path):
    grid = {**DEFAULT_GRID, "methods": ["asgd"], "workers": [4], "seeds": [0, 1], "lr_grid": [0.1]}
    group = Group("homogeneous", "tuned", 0.0)
    runs = [_run("asgd", 4, s, 0.1, 90.0, [(0, 90), (1, 90)], diverged=True) for s in (0, 1)]
    study = Study(tmp_path, {"command": "c"}, grid, {}, [group], {group.name: {("asgd", 4): runs}}, {}, {})
    write_tables(facts(study, "r"), tmp_path)
    assert "diverged (2/2 seeds, error 90.00 ± 0.00, lr 0.1)" in (tmp_path / "table.md").read_text()


# ---------------------------------------------------------------- report: what it leaves out


def test_report_leaves_out_stale_and_foreign_runs(study, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(study, copy)
    stale = copy / "final" / "straggler-tuned-mom0" / "asgd-M4-s1" / "summary.json"
    record = json.loads(stale.read_text())
    record["config"]["epochs"] = 3                           # as if made before a setting changed
    stale.write_text(json.dumps(record))
    foreign = copy / "final" / "other-tuned-mom0" / "asgd-M4-s0"
    foreign.mkdir(parents=True)
    shutil.copy(copy / "final" / "straggler-tuned-mom0" / "asgd-M4-s0" / "summary.json", foreign)
    assert main(["report", str(copy), "--to", str(tmp_path / "report")]) == 0
    numbers = findings(tmp_path / "report")
    left = numbers["coverage"]["left_out"]
    assert any("asgd-M4-s1: made with other settings (epochs: 3 -> 4" in x for x in left)   # (4: the epoch cap)
    assert any("other-tuned-mom0/asgd-M4-s0: not part of the study's grid" in x for x in left)
    (g,) = [g for g in numbers["groups"] if g["name"] == "straggler-tuned-mom0"]
    (cell,) = [c for c in g["cells"] if c["method"] == "asgd"]
    assert cell["seeds"] == [0] and cell["n"] == 1
    assert "other settings" in (tmp_path / "report" / "table.md").read_text()


def test_report_refuses_what_is_not_a_finished_lr_phase(study, tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no compare.json" in capsys.readouterr().err
    copy = tmp_path / "runs"
    shutil.copytree(study, copy)
    shutil.rmtree(copy / "lr" / "straggler-mom0" / "asgd-M4-lr0.2")
    assert main(["report", str(copy), "--to", str(tmp_path / "r")]) == 2
    assert "still choosing learning rates (5 of 6 lr runs current)" in capsys.readouterr().err


# ---------------------------------------------------------------- compensation and results/README.md


def test_report_adds_compensation_from_a_probe_run_given_or_found(study, tmp_path):
    probe_run = tmp_path / "probe-M4"
    assert main(["train", "--dataset", "synthetic", "--workers", "4", "--epochs", "1", "--batch-size", "32",
                 "--probe-every", "4", "--out", str(probe_run), "--no-progress"]) == 0
    probe = summary(probe_run)["probe"]
    to = tmp_path / "report"
    assert main(["report", str(study), "--to", str(to), "--probe", str(probe_run)]) == 0
    assert (to / "compensation.png").read_bytes()[:4] == b"\x89PNG"
    text = (to / "compensation.md").read_text()
    assert f"{probe['median_relerr_delayed']:.4f}" in text and f"{probe['median_ratio_dc_to_delayed']:.3f}" in text
    shutil.copytree(study, tmp_path / "runs")                 # a probe* run next to the study is found
    assert main(["report", str(tmp_path / "runs"), "--to", str(tmp_path / "found")]) == 0
    assert (tmp_path / "found" / "compensation.md").read_text() == text
    assert findings(tmp_path / "found")["compensation"] == str(probe_run)
    assert {"compensation.png", "compensation.md"} <= set(findings(tmp_path / "found")["files"])


def test_results_readme_answers_from_findings(study, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(study, results / "tiny" / "runs")
    assert main(["report", str(results / "tiny" / "runs"), "--to", str(results / "tiny")]) == 0
    subprocess.run([sys.executable, str(ROOT / "scripts" / "results_readme.py"), str(results)], check=True,
                   capture_output=True)
    readme = (results / "README.md").read_text()
    numbers = findings(results / "tiny")
    for heading in ("## The goals, met or missed", "## 1. Speedup to sequential SGD's error",
                    "## 2. Share of the throughput ideal", "## 3. At ASGD's learning rate, does DC-ASGD beat ASGD?",
                    "## 4. What should a user pick?", "## Which method stays stable"):
        assert heading in readme
    assert f"`{numbers['runs_command']}`" in readme and f"`{numbers['report_command']}`" in readme
    assert "methods ssgd" not in readme and "Left out:** methods SSGD, m-sync SGD, Rennala SGD, SSP" in readme
    budget = numbers["coverage"]["budgets"]["straggler"]
    assert f"- **Budget:** `straggler` {budget:.0f} simulated s (sequential SGD's time for the epochs" in readme
    for g in numbers["groups"]:
        (v,) = [v for v in g["vs_asgd"] if v["method"] == "dc-asgd-a"]
        if g["protocol"] == "paper":                # the DC-ASGD paper's question: at ASGD's lr
            assert f"| {g['name']} | 4 | {g['paper_lr']['4']:g} | {v['mean']:.2f} ± {v['std']:.2f} |" in readme
        for s in g["soonest"]:
            if s.get("method"):
                sp = s["speedup"]
                assert f"| {g['name']} | 4 | " in readme and f"{sp['mean']:.2f}" in readme
    assert not math.isnan(numbers["groups"][0]["target"]["error"])


def test_relaxed_targets_name_who_gets_within_k_points_of_sequential_first():
    """Hand-made curves: sequential reaches 12% at 300 s; ASGD gets below 14% at 40 s and 50 s (two seeds),
    DC-ASGD-a below 14% at 60 s only in one seed: within 2 points (target 14%) ASGD is soonest, 45 s."""
    from dcasgd.study.findings import _rung

    def run(*points):
        return {"curve": [{"epoch": 0, "time_s": t, "test_error": e} for t, e in points]}
    cells_runs = {("sequential", 1): [run((0, 90), (100, 20), (300, 12.0))],
                  ("asgd", 4): [run((0, 90), (40, 13.5), (80, 13.0)), run((0, 90), (50, 13.9))],
                  ("dc-asgd-a", 4): [run((0, 90), (60, 13.0)), run((0, 90), (60, 14.5))]}
    rung = _rung(cells_runs, list(cells_runs), [4], 14.0, 2.0)
    assert rung["sequential_s"] == 300 and rung["target"] == 14.0
    best = rung["soonest"][0]
    assert best["method"] == "asgd" and best["mean_s"] == 45 and best["reached"] == best["runs"] == 2
    assert best["runner_up"]["method"] == "dc-asgd-a" and best["runner_up"]["reached"] == 1
