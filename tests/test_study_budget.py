"""compare on a time budget: one budget per cluster (sequential SGD's own time by default), the paper protocol at
ASGD's lr, cells it cannot run said and recorded, and the same runs on a Ray cluster as in local processes."""

import json
from pathlib import Path

import pytest

from dcasgd.cli import main
from dcasgd.config import ConfigError, TrainConfig
from dcasgd.core.consistency import parse_consistency
from dcasgd.study.compare import (DEFAULT_GRID, Choice, choose, dropped, lr_jobs, pairs, param_values, plan,
                                  study_grid)

TINY = ["--dataset", "synthetic", "--batch-size", "32", "--epochs", "1", "--eval-every", "0.25", "--val-size", "128",
        "--jitter", "0.1", "--threads", "1"]


def summary(path: Path) -> dict:
    return json.loads((path / "summary.json").read_text())


def runs_under(out: Path) -> dict[Path, dict]:
    return {p.parent.relative_to(out): json.loads(p.read_text()) for p in sorted(out.rglob("summary.json"))}


def test_every_run_of_a_cluster_gets_sequential_sgds_time_as_its_budget(tmp_path, capsys):
    """Lognormal speeds depend on the seed, so sequential SGD's time does too: the budget is the slowest seed's,
    read back here from the sequential runs themselves; every run of the cluster, lr runs too, gets it."""
    out = tmp_path / "study"
    config = tmp_path / "lognormal.toml"
    config.write_text("[compare.clusters]\nlognormal = { hetero_sigma = 0.5 }\n")
    assert main(["compare", str(out), *TINY, "--config", str(config), "--methods", "sequential,asgd",
                 "--workers-grid", "1,4", "--seeds", "0,1,2", "--lr-grid", "0.05,0.2", "--momenta", "0,0.9",
                 "--lam0-grid", "", "--jobs", "2"]) == 0
    runs = runs_under(out)
    sequential = {p: s for p, s in runs.items() if p.parts[0] == "final" and p.name.startswith("sequential")}
    assert len(sequential) == 6                                 # 2 groups x 3 seeds
    times = {s["config"]["seed"]: s["sim_time_s"] for s in sequential.values()}
    assert len(set(times.values())) == 3                        # the seeds' speeds differ
    budget = max(times.values())
    assert all(s["ended_by"] == "epochs" and s["epochs_done"] == 1.0 for s in sequential.values())
    for path, s in runs.items():
        assert s["config"]["time_budget"] == budget, path
        assert s["config"]["epochs"] == (1.0 if s["config"]["workers"] == 1 else 4.0), path   # the caps
    assert {p.parts[1] for p in runs if p.parts[0] == "final"} == {"lognormal-tuned-mom0", "lognormal-tuned-mom0.9"}
    record = json.loads((out / "compare.json").read_text())
    assert record["grid"]["budgets"] == {"lognormal": budget}
    assert record["grid"]["sequential_time_s"]["lognormal"] == {str(k): v for k, v in times.items()}
    assert record["epoch_cap_per_workers"] == {"lognormal": {"1": 1.0, "4": 4.0}}
    asgd = [s for p, s in runs.items() if p.parts[0] == "final" and p.name.startswith("asgd")]
    assert all(s["sim_time_s"] <= budget and s["ended_by"] in ("epochs", "time_budget") for s in asgd)


def test_compare_time_budget_flag_sets_the_budget_and_zero_turns_it_off(tmp_path):
    common = ["--methods", "asgd", "--workers-grid", "2", "--seeds", "0", "--lr-grid", "0.1", "--lam0-grid", "",
              "--jobs", "1"]
    assert main(["compare", str(tmp_path / "a"), *TINY, *common, "--time-budget", "7.5"]) == 0
    (run,) = runs_under(tmp_path / "a").values()
    assert run["config"]["time_budget"] == 7.5 and run["sim_time_s"] == 7.5 and run["ended_by"] == "time_budget"
    assert main(["compare", str(tmp_path / "b"), *TINY, *common, "--config", str(_toml(tmp_path, 0))]) == 0
    (run,) = runs_under(tmp_path / "b").values()
    assert run["config"]["time_budget"] == 0 and run["config"]["epochs"] == 1.0 and run["ended_by"] == "epochs"


def _toml(tmp_path: Path, budget: float) -> Path:
    path = tmp_path / "budget.toml"
    path.write_text(f"[compare]\ntime_budget = {budget}\n")
    return path


def test_compare_says_what_it_cannot_run_and_records_why(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["compare", str(out), *TINY, "--methods", "sequential,asgd,dc-asgd-a", "--workers-grid", "2",
                 "--seeds", "0", "--lr-grid", "0.1", "--lam0-grid", "1,4", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "compare: not run: sequential SGD: it runs at M = 1, which is not in the worker grid" in printed
    assert "compare: not run: the lambda sweep: it runs at M = 8 (lambda_workers), which is not in the worker " \
           "grid [2]" in printed
    dropped = json.loads((out / "compare.json").read_text())["dropped"]
    assert [d["what"] for d in dropped] == ["sequential SGD", "the lambda sweep"]
    assert not (out / "lambda").exists() and not list((out / "final").glob("*/sequential-*"))
    assert main(["report", str(out)]) == 0
    assert "_Not run (recorded by compare): sequential SGD: it runs at M = 1" in (out / "findings.md").read_text()


def test_m_sync_runs_only_m_below_m_and_says_so():
    grid = {**DEFAULT_GRID, "msync_m": [0.5, 2, 8], "methods": ["msync"], "workers": [2, 4, 16]}
    assert param_values(grid, "msync", 2) == [1]                # 0.5 x 2 = 1; 2 and 8 are not below 2
    assert param_values(grid, "msync", 4) == [2]                # 0.5 x 4 = 2 = the count 2; 8 is not below 4
    assert param_values(grid, "msync", 16) == [2, 8]
    assert param_values(grid, "rennala", 4) == [2, 4, 8]       # any S (one worker may give several)
    only_4 = {**grid, "msync_m": [4]}
    assert param_values(only_4, "msync", 4) == [] and ("msync", 4) not in pairs(only_4)
    assert {"what": "msync at M = 4", "why": "no m of msync_m [4] for M = 4 below M (m = M is SSGD)"} in dropped(only_4)



def test_a_grid_narrowed_on_the_command_line_says_what_of_the_preset_it_left_out():
    preset = study_grid("fmnist-mlp", {}, None)
    narrowed = study_grid("fmnist-mlp", {"momenta": [0.0], "seeds": [0, 1, 2], "workers": [4, 16]}, None)
    assert preset["narrowed"] == {} and not any("preset's grid" in d["what"] for d in dropped(preset))
    assert narrowed["narrowed"] == {"momenta": [0.9], "workers": [1, 64]}     # the seeds are all the preset's
    assert {"what": "momenta 0.9 of the preset's grid", "why": "the command line narrowed momenta to 0.0"} \
        in dropped(narrowed)
    assert study_grid(None, {"momenta": [0.0]}, None)["narrowed"] == {}      # no preset: nothing to narrow

# ---------------------------------------------------------------- the paper protocol


def _write_lr_runs(base: TrainConfig, grid: dict, out: Path, errors: dict[tuple[str, float], float]) -> None:
    """A finished lr phase made by hand: each lr run's summary records its job's configuration and the
    validation error given in ``errors`` (method, lr) -> error."""
    for job in lr_jobs(grid, out):
        job.out.mkdir(parents=True)
        config = json.loads(json.dumps(job.config(base, grid).to_dict()))
        error = errors[(job.method, job.lr)]
        (job.out / "summary.json").write_text(json.dumps({"config": config, "final_test_error": error,
                                                          "diverged": False}))


def test_the_paper_protocol_runs_every_asynchronous_method_at_asgds_lr(tmp_path):
    """ASGD's best lr is 0.1, DC-ASGD-a's own 0.4, SSGD's 0.2, sequential SGD's 0.4: under `paper` DC-ASGD-a
    runs at 0.1; SSGD (synchronous) and sequential SGD keep their own; under `tuned` each its own."""
    grid = {**DEFAULT_GRID, "methods": ["sequential", "ssgd", "asgd", "dc-asgd-a"], "workers": [1, 4],
            "seeds": [0, 1], "lr_grid": [0.1, 0.2, 0.4], "protocols": ["tuned", "paper"], "lam0_grid": [],
            "val_size": 64, "budgets": {"homogeneous": 0.0}}
    base = TrainConfig(dataset="synthetic", epochs=1, batch_size=32)
    best = {"sequential": 0.4, "ssgd": 0.2, "asgd": 0.1, "dc-asgd-a": 0.4}
    _write_lr_runs(base, grid, tmp_path, {(m, lr): 10.0 if lr == best[m] else 20.0 + lr
                                          for m in best for lr in grid["lr_grid"]})
    chosen = choose(base, grid, tmp_path)
    g = "homogeneous-mom0"
    assert chosen[("tuned", g, "dc-asgd-a", 4)] == Choice(0.4)
    assert chosen[("paper", g, "dc-asgd-a", 4)] == Choice(0.1)
    assert chosen[("paper", g, "asgd", 4)] == Choice(0.1)
    assert chosen[("paper", g, "ssgd", 4)] == Choice(0.2)
    assert chosen[("paper", g, "sequential", 1)] == Choice(0.4)
    finals = {(j.group.protocol, j.method): j.lr for j in plan(base, grid, tmp_path, chosen) if j.phase == "final"}
    assert finals == {("tuned", "sequential"): 0.4, ("tuned", "ssgd"): 0.2, ("tuned", "asgd"): 0.1,
                      ("tuned", "dc-asgd-a"): 0.4, ("paper", "sequential"): 0.4, ("paper", "ssgd"): 0.2,
                      ("paper", "asgd"): 0.1, ("paper", "dc-asgd-a"): 0.1}


def _has_consistency(spec: str) -> bool:
    try:
        parse_consistency(spec)
        return True
    except Exception:  # noqa: BLE001 - a consistency mode this checkout does not have
        return False


@pytest.mark.skipif(not _has_consistency("ringmaster:2"), reason="the Ringmaster consistency modes are not here")
def test_ringmaster_is_tuned_with_its_r_and_under_paper_takes_the_best_r_at_asgds_lr(tmp_path):
    grid = {**DEFAULT_GRID, "methods": ["asgd", "ringmaster"], "workers": [4], "seeds": [0], "lr_grid": [0.1, 0.4],
            "ringmaster_r": [2, 6], "protocols": ["tuned", "paper"], "lam0_grid": [], "val_size": 64,
            "budgets": {"homogeneous": 0.0}}
    base = TrainConfig(dataset="synthetic", epochs=1, batch_size=32)
    assert sorted(j.out.name for j in lr_jobs(grid, tmp_path) if j.method == "ringmaster") == [
        "ringmaster-R2-M4-lr0.1", "ringmaster-R2-M4-lr0.4", "ringmaster-R6-M4-lr0.1", "ringmaster-R6-M4-lr0.4"]
    errors = {("asgd", 0.1): 10.0, ("asgd", 0.4): 30.0}
    for job in lr_jobs(grid, tmp_path):
        job.out.mkdir(parents=True)
        config = json.loads(json.dumps(job.config(base, grid).to_dict()))
        # ringmaster: best overall R 2 at lr 0.4; at ASGD's lr 0.1 the better R is 6
        error = errors.get((job.method, job.lr), {(2, 0.4): 5.0, (6, 0.4): 9.0, (2, 0.1): 12.0,
                                                  (6, 0.1): 11.0}.get((job.param, job.lr)))
        (job.out / "summary.json").write_text(json.dumps({"config": config, "final_test_error": error}))
    chosen = choose(base, grid, tmp_path)
    assert chosen[("tuned", "homogeneous-mom0", "ringmaster", 4)] == Choice(0.4, 2)
    assert chosen[("paper", "homogeneous-mom0", "ringmaster", 4)] == Choice(0.1, 6)


def test_the_paper_protocol_needs_asgd():
    from dcasgd.study.compare import study_grid
    with pytest.raises(ConfigError, match="ASGD's lr"):
        study_grid(None, {"methods": ["sequential", "dc-asgd-a"], "protocols": ["paper"]}, None)


# ---------------------------------------------------------------- the same study on a Ray cluster


@pytest.mark.ray
def test_compare_on_a_two_node_ray_cluster_gives_the_runs_of_local_jobs(tmp_path):
    pytest.importorskip("ray")
    from conftest import ray_cluster
    grid = ["--methods", "sequential,asgd", "--workers-grid", "1,3", "--seeds", "0,1", "--lr-grid", "0.05,0.2",
            "--lam0-grid", ""]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["compare", str(local), *TINY, *grid, "--jobs", "2"]) == 0
    with ray_cluster(150 * 1024**2, [{"num_cpus": 2, "workers": 2}]) as (cluster, _):
        assert main(["compare", str(remote), *TINY, *grid, "--address", cluster.address]) == 0
    mine, theirs = runs_under(local), runs_under(remote)
    assert sorted(mine) == sorted(theirs) and len(mine) == 4 + 4             # lr runs, then the final runs
    wall = {"wall_time_s", "eval_wall_s", "command", "run_id"}      # (run_id: every run its own)
    for path, summary_local in mine.items():
        assert (remote / path / "metrics.jsonl").read_bytes() == (local / path / "metrics.jsonl").read_bytes()
        summary_ray = theirs[path]
        assert summary_ray["config"]["out"] == str(remote / path)          # where it lies, as a local run records
        for s in (summary_local, summary_ray):
            s["config"].pop("out")
        assert {k: v for k, v in summary_ray.items() if k not in wall} == {
            k: v for k, v in summary_local.items() if k not in wall}
    record = json.loads((remote / "compare.json").read_text())
    assert record["chosen"] == json.loads((local / "compare.json").read_text())["chosen"]


def test_learning_rates_per_method_and_m_and_bad_keys():
    from dcasgd.study.compare import lr_grid, lr_values, study_grid
    grid = {**DEFAULT_GRID, "lr_grid": [0.1], "lr_grids": {"asgd@16": [0.01, 0.02], "asgd": [0.05], "@16": [0.3]}}
    assert lr_values(grid, "asgd", 16) == [0.01, 0.02]          # method@M first, then method, then @M
    assert lr_values(grid, "asgd", 4) == [0.05]
    assert lr_values(grid, "dana", 16) == [0.3]
    assert lr_values(grid, "dana", 4) == [0.1]
    assert lr_grid(grid, 0.9, "asgd", 16) == [0.001, 0.002]
    grid = {**grid, "methods": ["asgd", "dana"], "workers": [4, 16], "seeds": [0], "lam0_grid": []}
    assert sorted(j.out.name for j in lr_jobs(grid, Path("x"))) == [
        "asgd-M16-lr0.01", "asgd-M16-lr0.02", "asgd-M4-lr0.05", "dana-M16-lr0.3", "dana-M4-lr0.1"]
    for bad in ({"sgd@4": [0.1]}, {"asgd@x": [0.1]}, {"asgd": []}, {"@4": [-1.0]}):
        with pytest.raises(ConfigError, match="lr_grids|learning rates"):
            study_grid(None, {"lr_grids": bad}, None)


def test_a_cluster_can_have_its_own_grids_and_epoch_caps():
    from dcasgd.study.compare import budget_settings, study_grid
    grid = {**DEFAULT_GRID, "methods": ["asgd"], "workers": [4], "seeds": [0], "lam0_grid": [], "lr_grid": [0.1, 0.2],
            "clusters": {"homogeneous": {}, "lognormal": {"hetero_sigma": 0.5}},
            "cluster_grids": {"homogeneous": {"lr_grid": [0.1], "epoch_caps": {"4": 2}}},
            "budgets": {"homogeneous": 10.0, "lognormal": 10.0}}
    assert {(j.group.cluster, j.lr) for j in lr_jobs(grid, Path("x"))} == {
        ("homogeneous", 0.1), ("lognormal", 0.1), ("lognormal", 0.2)}
    base = TrainConfig(dataset="synthetic", epochs=1)
    assert budget_settings(grid, base, "homogeneous", 4) == {"time_budget": 10.0, "epochs": 2.0}
    assert budget_settings(grid, base, "lognormal", 4) == {"time_budget": 10.0, "epochs": 4.0}   # 1 x min(4, 4)
    with pytest.raises(ConfigError, match="cluster_grids"):
        study_grid(None, {"cluster_grids": {"nope": {"lr_grid": [0.1]}}}, None)
    with pytest.raises(ConfigError, match="cluster_grids"):
        study_grid(None, {"cluster_grids": {"homogeneous": {"seeds": [1]}}}, None)


def test_the_paper_protocol_alone_runs_every_asynchronous_method_at_asgds_lr(tmp_path):
    """Paper alone: DC-ASGD has no lr runs of its own, and takes ASGD's (it was a KeyError)."""
    study = tmp_path / "study"
    assert main(["compare", str(study), *TINY, "--methods", "sequential,asgd,dc-asgd-a", "--workers-grid", "1,2",
                 "--seeds", "0", "--lr-grid", "0.05,0.2", "--protocols", "paper", "--lam0-grid", "",
                 "--threads", "1"]) == 0
    finals = {path.parent.name: summary for path, summary in
              ((p, json.loads(p.read_text())) for p in study.glob("final/*/*/summary.json"))}
    assert sorted(finals) == ["asgd-M2-s0", "dc-asgd-a-M2-s0", "sequential-M1-s0"]
    assert finals["dc-asgd-a-M2-s0"]["config"]["lr"] == finals["asgd-M2-s0"]["config"]["lr"]
    assert not list(study.glob("lr/*/dc-asgd-a-*"))                    # no lr runs of its own
    assert main(["report", str(study), "--to", str(tmp_path / "report")]) == 0
