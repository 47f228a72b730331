"""Errors say whose fault they are, and nothing hangs (issue 18, items 5 to 13).

- a full disk (an injected ENOSPC) is the machine's failure: exit 6, a line naming the file, resumable;
  a path that cannot be a run directory is the user's: exit 2;
- the user's own loss, model or metric raising is reported as theirs (UserCodeError: function, worker,
  gradient, the original as ``__cause__``), with a summary saying the run failed, on both backends;
- an nn.Module passed where a factory belongs gets one line;
- an ``--address`` that is not a Ray cluster fails within a bound, and a refused token is named;
- SIGINT and SIGTERM stop a run cleanly (summary, checkpoint) with exit 130 / 143, and stop ``compare``
  at once, which the next compare resumes;
- the summary tells the truth (a NaN metric is null, not NaN; no stale final error), TOML takes the flags'
  names, a resume command is shell-quoted, and ``report`` does not say "not finished: 12 of 12 are done".

Each test failed on the code before these changes.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for
import torch
from torch import nn

import dcasgd
from dcasgd.cli import config_from_args, build_parser, main
from dcasgd.errors import UserCodeError
from dcasgd.io import metrics as metrics_module
from dcasgd.io.checkpoint import list_checkpoints

TINY = ["--dataset", "synthetic", "--workers", "2", "--epochs", "1", "--batch-size", "64", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def strict_json(path: Path) -> dict:
    """Parse refusing NaN and Infinity, which are not JSON."""
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def write_module(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


# ---------------------------------------------------------------- 5. a full disk is not bad input


class FullDiskFile:
    """A file whose writes fail with ENOSPC once ``budget`` write calls have gone through."""

    def __init__(self, real, budget: list[int]) -> None:
        self.real, self.budget = real, budget

    def write(self, data):
        if self.budget[0] <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.budget[0] -= 1
        return self.real.write(data)

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_a_full_disk_is_exit_6_naming_the_file_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    budget = [6]                                  # six flushes of metrics.jsonl, then the disk is full

    def full_disk_open(path, mode="r", *args, **kwargs):
        return FullDiskFile(open(path, mode, *args, **kwargs), budget)

    monkeypatch.setattr(metrics_module, "open", full_disk_open, raising=False)
    status = main(["train", *TINY, "--eval-every", "0.1", "--checkpoint-every", "4", "--out", str(out)])
    lines = error_lines(capsys)
    assert status == 6, lines
    assert len(lines) == 1 and lines[0].startswith("dcasgd: storage failure:")
    assert str(out / "metrics.jsonl") in lines[0] and "No space left on device" in lines[0]
    assert f"dcasgd train --resume {out}" in lines[0]             # a checkpoint exists: say how to go on
    assert summary_of(out)["outcome"] == "failed"
    monkeypatch.undo()                                            # space freed
    assert main(["train", "--resume", str(out)]) == 0
    assert summary_of(out)["outcome"] == "finished" and summary_of(out)["updates"] == 32


def test_a_path_that_cannot_be_a_run_directory_is_bad_input(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    assert main(["train", *TINY, "--out", str(tmp_path / "a-file")]) == 2
    assert "exists and is not a directory" in error_lines(capsys)[0]
    assert main(["train", *TINY, "--out", str(tmp_path / "a-file" / "run")]) == 2
    assert "cannot use" in error_lines(capsys)[0]


# ---------------------------------------------------------------- 6. the user's code raising is theirs


def test_the_api_reports_a_loss_on_labels_out_of_range_as_the_users_code():
    x, y = torch.randn(64, 4), torch.full((64,), 7)                    # class 7; the model gives 2 classes
    good = (x, torch.zeros(64, dtype=torch.long))
    with pytest.raises(UserCodeError) as caught:
        dcasgd.train(lambda: nn.Linear(4, 2), (x, y), eval_data=good, workers=2, epochs=1, batch_size=16,
                     progress=False)
    error = caught.value
    assert "cross_entropy" in str(error) and "on worker" in str(error) and "at gradient 0" in str(error)
    assert isinstance(error.__cause__, IndexError)


def test_a_model_raising_is_named_too():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Linear(4, 2)

        def forward(self, x):
            raise RuntimeError("forward is broken")

    with pytest.raises(UserCodeError, match="Broken.*forward pass.*forward is broken") as caught:
        dcasgd.train(Broken, (torch.randn(32, 4), torch.zeros(32, dtype=torch.long)), workers=1, epochs=1,
                     progress=False)
    assert isinstance(caught.value.__cause__, RuntimeError)


BAD_LOSS = """
import torch
import torch.nn.functional as F

def loss(output, target):
    if torch.is_grad_enabled():                     # in training; evaluations (no grad) work
        raise ValueError("my loss is broken")
    return F.cross_entropy(output, target)
"""


def test_the_cli_reports_the_users_loss_with_a_summary_and_debug_shows_the_traceback(tmp_path):
    name = write_module(tmp_path, "badloss", BAD_LOSS)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "dcasgd", "train", *TINY, "--loss", f"{name}:loss",
                          "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**ENV, "PYTHONPATH": str(tmp_path)})
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1, run.stderr
    assert "badloss:loss" in lines[0] and "my loss is broken" in lines[0] and "worker" in lines[0]
    assert f"summary in {out}/summary.json" in lines[0] and "--resume" not in lines[0]   # no checkpoint: no hint
    summary = summary_of(out)
    assert summary["outcome"] == "failed" and "my loss is broken" in summary["error"]
    debug = subprocess.run([sys.executable, "-m", "dcasgd", "train", *TINY, "--loss", f"{name}:loss",
                            "--out", str(tmp_path / "run2"), "--debug"], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env={**ENV, "PYTHONPATH": str(tmp_path)})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ValueError: my loss is broken" in debug.stderr


@pytest.mark.ray
def test_the_ray_cli_reports_the_users_loss_and_writes_the_summary_it_points_at(tmp_path):
    name = write_module(tmp_path, "badloss_ray", BAD_LOSS)
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "dcasgd", "train", "--backend", "ray", *TINY,
                          "--loss", f"{name}:loss", "--out", str(out)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**ENV, "PYTHONPATH": str(tmp_path)})
    last = [line for line in run.stderr.splitlines() if line.startswith("dcasgd:")][-1]
    assert run.returncode == 1, run.stderr[-2000:]
    assert "badloss_ray:loss" in last and "my loss is broken" in last and "worker" in last
    assert f"summary in {out}/summary.json" in last
    assert summary_of(out)["outcome"] == "failed"


# ---------------------------------------------------------------- 7. a module where a factory belongs


def test_a_module_passed_as_the_model_gets_one_line_saying_how_to_fix_it():
    with pytest.raises(dcasgd.ConfigError, match=r"nn.Module instance \(Linear\).*lambda: net"):
        dcasgd.train(nn.Linear(4, 2), (torch.randn(8, 4), torch.zeros(8, dtype=torch.long)), progress=False)


# ---------------------------------------------------------------- 8. --address never hangs


def test_a_web_server_as_the_address_fails_at_once_with_one_line(tmp_path):
    web = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        port = int(web.stdout.readline().split("port ")[1].split()[0])    # "Serving HTTP on ... port N ..."
        run = subprocess.run([sys.executable, "-m", "dcasgd", "train", "--backend", "ray", *TINY, "--address",
                              f"127.0.0.1:{port}", "--out", str(tmp_path / "run")], capture_output=True,
                             text=True, timeout=120, env=ENV)
    finally:
        web.kill()
        web.wait()
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert "is not a Ray cluster" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_refused_auth_token_is_named(monkeypatch):
    from dcasgd.backends.ray import cluster
    monkeypatch.setattr(cluster, "check_reachable", lambda address, timeout_s: None)
    log = ("gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: RPC error: "
           "InvalidAuthToken: Authentication token is missing or incorrect\n")
    monkeypatch.setattr(cluster.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, stdout="", stderr=log))
    with pytest.raises(dcasgd.ConfigError, match="refused this machine's authentication token.*RAY_AUTH_MODE"):
        cluster.connect_or_explain("10.0.0.1:6379", 30)

    def hang(*a, **k):
        raise subprocess.TimeoutExpired(a, k["timeout"])
    monkeypatch.setattr(cluster.subprocess, "run", hang)
    with pytest.raises(dcasgd.ConfigError, match="did not accept a connection within 7 s"):
        cluster.connect_or_explain("10.0.0.1:6379", 7)


# ---------------------------------------------------------------- 9, 10. Ctrl-C and SIGTERM


def start(args: list[str], cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dcasgd", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, cwd=cwd)


def has_update(out: Path) -> bool:
    path = out / "metrics.jsonl"
    return path.exists() and b'"kind": "update"' in path.read_bytes()


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_sim_run_cleanly_with_a_summary_and_a_checkpoint(tmp_path, signum, status):
    out = tmp_path / "run"
    run = start(["train", "--dataset", "synthetic", "--workers", "2", "--epochs", "5000", "--no-progress",
                 "--checkpoint-every", "1000", "--out", str(out)])
    wait_for(lambda: list_checkpoints(out / "checkpoints"), "checkpoint", run)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == status, err
    summary = summary_of(out)
    assert summary["outcome"] == "interrupted" and summary["stopped_early"]
    last = list_checkpoints(out / "checkpoints")[-1]
    assert int(last.stem.split("-")[1]) == summary["updates"]          # a checkpoint where it stopped
    assert f"dcasgd train --resume {out}" in err
    assert main(["train", "--resume", str(out), "--stop-after-updates", str(summary["updates"] + 10)]) == 0


@pytest.mark.ray
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_ray_run_cleanly_with_a_summary_and_a_checkpoint(tmp_path, signum, status):
    out = tmp_path / "run"
    run = start(["train", "--backend", "ray", "--dataset", "synthetic", "--workers", "2", "--epochs", "500",
                 "--no-progress", "--checkpoint-every", "50", "--out", str(out)])
    wait_for(lambda: has_update(out), "update", run)
    run.send_signal(signum)
    _, err = run.communicate(timeout=180)
    assert run.returncode == status, err[-3000:]
    summary = summary_of(out)
    assert summary["outcome"] == "interrupted" and summary["stop_reason"] == "interrupted"
    assert list_checkpoints(out / "checkpoints")
    assert "Fatal" not in err and "*** SIG" not in err                  # no Ray signal dump


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_compare_at_once_and_the_next_compare_finishes_the_study(tmp_path, signum, status):
    study = tmp_path / "study"
    grid = ["compare", str(study), "--dataset", "synthetic", "--epochs", "2", "--methods", "asgd,dc-asgd-a",
            "--workers-grid", "2,4", "--seeds", "0,1,2,3,4,5,6,7,8,9", "--lr-grid", "0.1", "--val-size", "256",
            "--jobs", "2",
            "--threads", "1"]
    total = 2 * 2 * 10
    run = start(grid)
    wait_for(lambda: len(list(study.glob("final/*/*/summary.json"))) >= 1, "finished run", run)
    run.send_signal(signum)
    _, err = run.communicate(timeout=180)
    assert run.returncode == status, err
    assert f"stopped by {signal.Signals(signum).name}" in err
    done = [p for p in study.glob("final/*/*/summary.json") if json.loads(p.read_text())["outcome"] == "finished"]
    assert len(done) < total                                            # the queue was not run out
    assert json.loads((study / "compare.json").read_text())["finished"] is False
    assert main(grid) == 0
    finished = [json.loads(p.read_text()) for p in study.glob("final/*/*/summary.json")]
    assert len(finished) == total and all(s["outcome"] == "finished" for s in finished)


# ---------------------------------------------------------------- 11, 12, 13. the smaller ones


def test_a_nan_metric_is_null_in_the_summary_and_reported_as_such(tmp_path, capsys):
    name = write_module(tmp_path, "nanmetric", "def metric(output, target):\n    return float('nan')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        status = main(["train", *TINY, "--metric", f"{name}:metric", "--out", str(tmp_path / "run")])
    finally:
        sys.path.remove(str(tmp_path))
    assert status == 3
    assert "final metric is not a number" in error_lines(capsys)[0]
    summary = strict_json(tmp_path / "run" / "summary.json")
    assert summary["final_test_error"] is None and summary["outcome"] == "diverged"
    assert summary["metric_not_finite"] is True


def test_toml_takes_the_flags_names(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('workers = 4\nstraggler = ["1:3.0"]\nfail = ["0:5:9", "2:7"]\nno-progress = true\n')
    cfg = config_from_args(build_parser().parse_args(["train", "--config", str(config)]))
    assert cfg.stragglers == {1: 3.0} and cfg.failures == ((0, 5.0, 9.0), (2, 7.0, None)) and not cfg.progress
    config.write_text('workers = 4\nstraggler = { "3" = 2.5 }\n')
    assert config_from_args(build_parser().parse_args(["train", "--config", str(config)])).stragglers == {3: 2.5}


def test_a_toml_resume_with_out_continues_the_run_into_out(tmp_path):
    run, new = tmp_path / "run", tmp_path / "new"
    assert main(["train", *TINY, "--out", str(run), "--checkpoint-every", "8", "--stop-after-updates", "12"]) == 0
    config = tmp_path / "resume.toml"
    config.write_text(f'resume = "{run}"\n')
    assert main(["train", "--config", str(config), "--out", str(new)]) == 0
    assert summary_of(new)["updates"] == 32 and summary_of(new)["config"]["dataset"] == "synthetic"


def test_the_printed_resume_command_is_shell_quoted_and_works(tmp_path, capsys):
    out = tmp_path / "my run's dir"
    assert main(["train", *TINY, "--out", str(out), "--checkpoint-every", "8", "--stop-after-updates", "12"]) == 0
    printed = capsys.readouterr().out
    command = printed.split("continue with: ")[1].strip()
    argv = shlex.split(command)
    assert argv[:3] == ["dcasgd", "train", "--resume"] and argv[3] == str(out)
    assert main(argv[1:]) == 0 and summary_of(out)["updates"] == 32


def test_report_does_not_call_a_study_with_every_final_run_done_unfinished(tmp_path):
    study = tmp_path / "study"
    assert main(["compare", str(study), "--dataset", "synthetic", "--epochs", "0.5", "--methods", "sequential,asgd",
                 "--workers-grid", "1,2", "--seeds", "0", "--lr-grid", "0.1", "--val-size", "256", "--threads", "1"]) == 0
    record = json.loads((study / "compare.json").read_text())
    (study / "compare.json").write_text(json.dumps({**record, "finished": False}))
    assert main(["report", str(study), "--to", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "table.md").read_text()
    assert "not finished: 2 of 2" not in table and "has not recorded the study as finished" in table


def test_signals_set_the_flag_only_inside_a_watching_loop_and_the_api_installs_nothing():
    from dcasgd.engine import signals
    before = signal.getsignal(signal.SIGTERM)
    signals.install()                                     # outside the CLI (Ray's driver calls it): a no-op
    assert signal.getsignal(signal.SIGTERM) is before
    with signals.stop_on_signals() as stop:
        with pytest.raises(signals.Stopped):              # nothing watches: stop at once
            signals._handler(signal.SIGTERM, None)
        with signals.watching():
            signals._handler(signal.SIGTERM, None)       # a loop watches: it is asked to stop
            assert stop.requested and stop.signum == signal.SIGTERM
            signals._handler(signal.SIGTERM, None)       # (a repeated SIGTERM still only asks)
            with pytest.raises(signals.Stopped):          # a second Ctrl-C does not wait
                signals._handler(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGTERM) is before and not signals.STOP.requested
    dcasgd.train(lambda: nn.Linear(4, 2), (torch.randn(32, 4), torch.zeros(32, dtype=torch.long)), workers=2,
                 epochs=1, progress=False)
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_eval_fn_may_return_tensors():
    def eval_fn(model, batch):
        x, y = batch
        return (model(x).argmax(1) != y).sum(), torch.tensor(len(y))          # tensors, not numbers
    result = dcasgd.train(lambda: nn.Linear(4, 2), (torch.randn(64, 4), torch.zeros(64, dtype=torch.long)),
                          eval_fn=eval_fn, workers=2, epochs=1, batch_size=16, progress=False)
    assert isinstance(result.final_error, float) and 0 <= result.final_error <= 1
    json.dumps(result.summary)
