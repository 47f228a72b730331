"""Time budgets and target errors (engine/budget.py): where a run stops, what it reports, the lr schedule's horizon.

Every expectation comes from a run of the same configuration without the stop, read from its own
metrics: the simulator is deterministic, so the stopped run is a prefix of the full one.
"""

import json
import math

import pytest

from dcasgd.api import train
from dcasgd.cli import main
from dcasgd.config import ConfigError, TrainConfig

BASE = dict(dataset="synthetic", workers=4, batch_size=32, eval_every=0.25, lr=0.1, jitter=0.2, progress=False)


def lines(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def test_a_run_stops_at_the_first_evaluation_that_reaches_the_target(tmp_path):
    full = train(**BASE, epochs=3, out=str(tmp_path / "full")).summary
    evals = lines(tmp_path / "full", "eval")
    target = sorted(e["test_error"] for e in evals)[len(evals) // 2]     # reached midway, not at the start
    first = next(e for e in evals if e["test_error"] <= target)
    assert 0 < first["time_s"] < full["sim_time_s"]

    stopped = train(**BASE, epochs=3, target_error=target, out=str(tmp_path / "t")).summary
    assert stopped["outcome"] == "finished" and stopped["ended_by"] == "target"
    assert stopped["time_to_target_s"] == first["time_s"] == stopped["sim_time_s"]
    assert stopped["target_epoch"] == first["epoch"] and stopped["target_version"] == first["version"]
    assert stopped["final_test_error"] == first["test_error"] and stopped["updates"] == first["version"]
    assert lines(tmp_path / "t", "eval") == evals[:evals.index(first) + 1]
    assert full["ended_by"] == "epochs" and full["time_to_target_s"] is None


def test_a_run_stops_at_the_budget_with_an_evaluation_there(tmp_path):
    cfg = dict(BASE, epochs=2, lr_schedule="constant")          # constant lr: the budget changes no step
    train(**cfg, out=str(tmp_path / "full"))
    updates = lines(tmp_path / "full", "update")
    budget = (updates[30]["time_s"] + updates[31]["time_s"]) / 2      # between two updates
    assert updates[30]["time_s"] < budget < updates[31]["time_s"]

    stopped = train(**cfg, time_budget=budget, out=str(tmp_path / "b")).summary
    assert stopped["outcome"] == "finished" and stopped["ended_by"] == "time_budget"
    assert stopped["sim_time_s"] == budget and stopped["time_budget_s"] == budget
    assert lines(tmp_path / "b", "update") == updates[:31]
    last = lines(tmp_path / "b", "eval")[-1]
    assert last["time_s"] == budget and last["version"] == 31 == stopped["updates"]
    assert stopped["curve"][-1]["time_s"] == budget


def test_under_a_budget_the_cosine_schedule_ends_with_whichever_comes_first(tmp_path):
    """lr at each evaluation = lr0 (1 + cos(pi p)) / 2 with p = min(1, max(epoch / epochs, time / budget))."""
    cfg = dict(BASE, lr_schedule="cosine", lr=0.2)
    for epochs, budget in ((8, 20.0), (0.75, 200.0)):            # the budget ends the first, the epochs the second
        out = tmp_path / f"e{epochs}"
        summary = train(**cfg, epochs=epochs, time_budget=budget, out=str(out)).summary
        assert summary["ended_by"] == ("time_budget" if budget == 20.0 else "epochs")
        # (the evaluation at the budget shows the lr of the last update, which came before it)
        evals = [e for e in lines(out, "eval") if e["version"] > 0 and e["time_s"] < budget]
        assert len(evals) >= 3
        for e in evals:
            p = min(1.0, max(e["epoch"] / epochs, e["time_s"] / budget))
            assert e["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * p)), rel=1e-12, abs=1e-15)
        if budget == 20.0:
            assert max(e["epoch"] for e in evals) < 0.5 * epochs      # time, not epochs, drove the schedule


def test_the_cli_takes_the_flags_and_a_bad_value_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--workers", "2", "--epochs", "2", "--batch-size", "32",
                 "--time-budget", "5", "--target-error", "0.001", "--out", str(out), "--no-progress"]) == 0
    assert "at the end of the time budget (5 s)" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["time_budget"] == 5.0 and summary["config"]["target_error"] == 0.001
    with pytest.raises(ConfigError, match="time_budget"):
        TrainConfig(time_budget=-1.0).validate()
    with pytest.raises(ConfigError, match="target_error"):
        TrainConfig(target_error=float("nan")).validate()


@pytest.mark.ray
def test_on_ray_the_budget_ends_training_as_a_normal_finish(tmp_path, local_ray):
    """Wall seconds of training: 1000 epochs cannot finish within a 1-second budget, so the budget ends it."""
    pytest.importorskip("ray")
    result = train(**dict(BASE, jitter=0.0, workers=2), backend="ray", epochs=1000, time_budget=1.0,
                   out=str(tmp_path / "ray"))
    summary = result.summary
    assert summary["outcome"] == "finished" and summary["ended_by"] == "time_budget"
    assert summary["stop_reason"] == "time_budget" and summary["epochs_done"] < 1000
