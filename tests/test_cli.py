"""The command line: outputs, and one clear message with exit status 2 for bad input."""

import json
import subprocess
import sys

import pytest

from dcasgd.cli import main
from dcasgd.compute.data import find_dataset_dir


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dcasgd", *args], capture_output=True, text=True, timeout=300)


def test_train_writes_metrics_and_summary(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--dataset", "synthetic", "--workers", "3", "--epochs", "1", "--batch-size", "32",
                 "--out", str(out), "--no-progress", "--straggler", "2:3.0", "--lam0", "1.5"]) == 0
    assert f"results in {out}/" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    for key in ("final_test_error", "updates", "mean_staleness", "max_staleness", "wall_time_s", "sim_time_s",
                "staleness", "pushes_per_worker"):
        assert key in summary
    assert summary["config"]["lam0"] == 1.5 and summary["config"]["stragglers"] == {"2": 3.0}
    assert summary["updates"] == sum(summary["pushes_per_worker"])
    kinds = {json.loads(line)["kind"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"update", "eval", "staleness"} <= kinds


@pytest.mark.parametrize("args, message", [
    (["--rule", "adam"], "invalid choice: 'adam'"),
    (["--consistency", "ssp"], "ssp needs a staleness bound"),
    (["--consistency", "ssp:-1"], "must be >= 0"),
    (["--consistency", "eventual"], "unknown consistency"),
    (["--workers", "0"], "workers must be an integer >= 1"),
    (["--batch-size", "-3"], "batch_size must be an integer >= 1"),
    (["--lr", "0"], "lr must be a finite number > 0"),
    (["--lr", "nan"], "lr must be a finite number > 0"),
    (["--straggler", "9:2.0", "--workers", "4"], "straggler: worker 9 is not in 0..3"),
    (["--straggler", "3"], "expected WORKER:FACTOR"),
    (["--momentum", "1.5"], "momentum must be in [0, 1)"),
    (["--speeds", "1,2"], "speeds: 2 values given for 8 workers"),
    (["--config", "/nonexistent.toml"], "cannot read"),
])
def test_bad_input_exits_2_with_one_clear_message(tmp_path, args, message):
    result = run_cli("train", "--dataset", "synthetic", "--out", str(tmp_path / "x"), *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x" / "summary.json").exists()


def test_config_file_and_preset_precedence(tmp_path):
    from dcasgd.cli import build_parser, config_from_args
    toml = tmp_path / "c.toml"
    toml.write_text('workers = 5\nlr = 0.3\nstragglers = { "1" = 2.0 }\n')
    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["train", "--preset", "fmnist-mlp", "--config", str(toml), "--lr", "0.7"]))
    assert (cfg.model, cfg.workers, cfg.lr, cfg.stragglers) == ("mlp", 5, 0.7, {1: 2.0})
    toml.write_text("wrokers = 5\n")
    result = run_cli("train", "--config", str(toml))
    assert result.returncode == 2 and "unknown setting(s) ['wrokers']" in result.stderr
    toml.write_text("workers = [\n")
    result = run_cli("train", "--config", str(toml))
    assert result.returncode == 2 and "not valid TOML" in result.stderr


def test_help_documents_every_flag():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    for flag in ("--backend", "--rule", "--consistency", "--workers", "--dataset", "--model", "--epochs",
                 "--batch-size", "--lr", "--seed", "--out", "--lam", "--lam0", "--straggler", "--replay",
                 "--comm-time", "--fail", "--jitter", "--servers", "--address"):
        assert flag in result.stdout
    assert "behaves exactly as sgd" in " ".join(result.stdout.split())


@pytest.mark.skipif(find_dataset_dir("fashion-mnist") is None, reason="Fashion-MNIST not installed")
def test_short_default_run_on_fashion_mnist(tmp_path):
    out = tmp_path / "fm"
    result = run_cli("train", "--epochs", "1", "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["rule"] == "dc-asgd-a" and summary["config"]["workers"] == 8
    assert summary["final_test_error"] < 30.0            # far below chance (90%) after one epoch
