"""compare + report on a tiny grid: every output file, and the table equals the runs' summaries."""

import csv
import json
import statistics

import pytest

from dcasgd.cli import main
from dcasgd.config import TrainConfig
from dcasgd.study.compare import config_differences, method_of, method_settings
from dcasgd.study.report import write_tables


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    args = ["compare", str(out), "--dataset", "synthetic", "--methods", "asgd,dc-asgd-a", "--workers-grid", "4,8",
            "--seeds", "0,1", "--lr-grid", "0.05,0.2", "--lam0-grid", "1,4", "--val-size", "256", "--epochs", "1",
            "--batch-size", "32", "--jobs", "2"]
    assert main(args) == 0
    assert main(["report", str(out)]) == 0
    return out


def test_grid_runs_and_learning_rates_chosen_on_validation(study):
    meta = json.loads((study / "compare.json").read_text())
    assert set(meta["chosen_lr"]) == {"asgd@M4", "asgd@M8", "dc-asgd-a@M4", "dc-asgd-a@M8"}
    for key, lr in meta["chosen_lr"].items():
        method, m = key.split("@M")
        val = {x: json.loads((study / "lr" / f"{method}-M{m}-lr{x:g}" / "summary.json").read_text())
               for x in (0.05, 0.2)}
        assert all(s["eval_split"] == "val" for s in val.values())
        assert lr == min(val, key=lambda x: (val[x]["final_test_error"], x))
    finals = sorted(p.name for p in (study / "final").iterdir())
    assert finals == sorted(f"{m}-M{w}-s{s}" for m in ("asgd", "dc-asgd-a") for w in (4, 8) for s in (0, 1))
    assert sorted(p.name for p in (study / "lambda").iterdir()) == ["lam0-1", "lam0-4"]


def test_every_output_file_is_written(study):
    for name in ("table.md", "table.csv", "findings.md", "curves.png", "staleness.png", "lambda.png",
                 "stability.png"):
        path = study / name
        assert path.exists() and path.stat().st_size > 0, name
    for png in study.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_numbers_equal_the_runs_summaries(study):
    rows = list(csv.DictReader(open(study / "table.csv")))
    assert len(rows) == 4
    for row in rows:
        errors = [json.loads((study / "final" / f"{row['method']}-M{row['workers']}-s{s}" / "summary.json")
                             .read_text())["final_test_error"] for s in (0, 1)]
        assert float(row["mean_error_pct"]) == pytest.approx(statistics.fmean(errors), abs=1e-4)
        assert float(row["std_error_pct"]) == pytest.approx(statistics.stdev(errors), abs=1e-4)
        assert row["seeds"] == "2"
        cell = f"{statistics.fmean(errors):.2f} ± {statistics.stdev(errors):.2f}"
        assert cell in (study / "table.md").read_text()
    assert "git commit" in (study / "table.md").read_text()


def test_compare_is_resumable(study, capsys):
    before = {p: p.stat().st_mtime_ns for p in study.glob("*/*/summary.json")}
    assert main(["compare", str(study), "--dataset", "synthetic", "--methods", "asgd,dc-asgd-a", "--workers-grid",
                 "4,8", "--seeds", "0,1", "--lr-grid", "0.05,0.2", "--lam0-grid", "1,4", "--val-size", "256",
                 "--epochs", "1", "--batch-size", "32"]) == 0
    assert "skipped (done before)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in study.glob("*/*/summary.json")} == before


@pytest.mark.parametrize("method", ["sequential", "ssgd", "asgd", "ssp", "staleness", "dc-asgd-c", "dc-asgd-a"])
def test_method_names_round_trip(method):
    settings = method_settings(method, 2)
    workers = 1 if method == "sequential" else 4
    assert method_of({**settings, "workers": workers}) == method


def test_report_adds_compensation_from_a_probe_run(study, tmp_path):
    probe_run = tmp_path / "probe"
    assert main(["train", "--dataset", "synthetic", "--workers", "4", "--epochs", "1", "--batch-size", "32",
                 "--probe-every", "4", "--out", str(probe_run), "--no-progress"]) == 0
    to = tmp_path / "report"
    assert main(["report", str(study), "--to", str(to), "--probe", str(probe_run)]) == 0
    assert (to / "compensation.png").read_bytes()[:4] == b"\x89PNG"
    probe = json.loads((probe_run / "summary.json").read_text())["probe"]
    text = (to / "compensation.md").read_text()
    assert f"{probe['median_relerr_delayed']:.4f}" in text and f"{probe['median_ratio_dc_to_delayed']:.3f}" in text


def test_a_final_run_made_with_another_lr_is_moved_aside_and_run_again(tmp_path, capsys):
    """Narrowing the grid to another lr must not reuse the final run made at the old one."""
    out = tmp_path / "study"
    args = ["compare", str(out), "--dataset", "synthetic", "--methods", "asgd", "--workers-grid", "4",
            "--seeds", "0", "--lam0-grid", "", "--val-size", "64", "--epochs", "1", "--batch-size", "32"]
    assert main(args + ["--lr-grid", "0.2"]) == 0
    first = json.loads((out / "final" / "asgd-M4-s0" / "summary.json").read_text())
    assert main(args + ["--lr-grid", "0.05"]) == 0
    assert "stale: " in capsys.readouterr().out
    moved = json.loads((out / "stale" / "final" / "asgd-M4-s0" / "summary.json").read_text())
    assert moved == first and moved["config"]["lr"] == 0.2                  # kept, not deleted
    again = json.loads((out / "final" / "asgd-M4-s0" / "summary.json").read_text())
    assert again["config"]["lr"] == 0.05
    assert json.loads((out / "compare.json").read_text())["chosen_lr"] == {"asgd@M4": 0.05}
    assert main(args + ["--lr-grid", "0.2"]) == 0                          # and back: a second stale copy
    assert (out / "stale" / "final" / "asgd-M4-s0.1" / "summary.json").exists()


def test_config_differences_name_computing_settings_only():
    wanted = TrainConfig(lr=0.05, out="here", progress=False)
    recorded = json.loads(json.dumps(TrainConfig(lr=0.2, out="elsewhere", progress=True).to_dict()))
    assert config_differences(recorded, wanted) == ["lr: 0.2 -> 0.05"]
    del recorded["corrupt"]                                  # a run recorded before the field existed
    recorded["lr"] = 0.05
    assert config_differences(recorded, wanted) == []


def test_the_table_marks_a_chosen_lr_at_the_edge_of_the_grid(tmp_path):
    def runs(lr, errors):
        return [{"config": {"seed": s, "lr": lr}, "final_test_error": e} for s, e in enumerate(errors)]

    groups = {("asgd", 4): runs(0.1, [20.0, 22.0]), ("asgd", 8): runs(0.05, [30.0, 31.0]),
              ("ssgd", 8): runs(0.2, [25.0, 25.0])}
    meta = {"grid": {"lr_grid": [0.05, 0.1, 0.2]}, "chosen_lr": {"asgd@M4": 0.1, "asgd@M8": 0.05, "ssgd@M8": 0.2}}
    write_tables(groups, meta, tmp_path)
    edge = {(r["method"], r["workers"]): r["lr_at_grid_edge"] for r in csv.DictReader(open(tmp_path / "table.csv"))}
    assert edge == {("asgd", "4"): "0", ("asgd", "8"): "1", ("ssgd", "8"): "1"}
    table = (tmp_path / "table.md").read_text()
    assert "21.00 ± 1.41 (n=2, lr 0.1)" in table and "30.50 ± 0.71 (n=2, lr 0.05 (edge))" in table
    assert "(n=2, lr 0.2 (edge))" in table and "(0.05, 0.1, 0.2)" in table
    write_tables({("asgd", 4): groups[("asgd", 4)]}, meta, tmp_path)        # nothing at an edge: no note
    assert "(edge)" not in (tmp_path / "table.md").read_text()


def test_lr_runs_made_with_other_settings_are_not_used_to_choose(tmp_path):
    """A setting changed since the lr phase (here epochs): its runs are stale, rerun, and chosen from anew."""
    out = tmp_path / "study"
    args = ["compare", str(out), "--dataset", "synthetic", "--methods", "asgd", "--workers-grid", "4",
            "--seeds", "0", "--lam0-grid", "", "--val-size", "64", "--batch-size", "32", "--lr-grid", "0.05,0.2"]
    assert main(args + ["--epochs", "1"]) == 0
    assert main(args + ["--epochs", "0.5"]) == 0
    for lr in ("0.05", "0.2"):
        old = json.loads((out / "stale" / "lr" / f"asgd-M4-lr{lr}" / "summary.json").read_text())
        assert old["config"]["epochs"] == 1
    val = {lr: json.loads((out / "lr" / f"asgd-M4-lr{lr:g}" / "summary.json").read_text()) for lr in (0.05, 0.2)}
    assert all(s["config"]["epochs"] == 0.5 for s in val.values())
    chosen = min(val, key=lambda lr: (val[lr]["final_test_error"], lr))
    assert json.loads((out / "compare.json").read_text())["chosen_lr"] == {"asgd@M4": chosen}
    final = json.loads((out / "final" / "asgd-M4-s0" / "summary.json").read_text())["config"]
    assert final["epochs"] == 0.5 and final["lr"] == chosen
