"""A run's files are never invented, mixed or taken over (issue 18, items 1 to 4).

- resume checks that metrics.jsonl still holds the bytes its checkpoint recorded (length and SHA-256),
  and never pads a lost tail with NUL bytes;
- a checkpoint carries its run's identity, and a checkpoint copied in from another run is refused;
- one process owns a run directory (and a study directory): a second gets one line naming the holder;
- a resume under another torch thread count warns and records both counts.

Each test failed on the code before these changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_for

from dcasgd.cli import main
from dcasgd.io.checkpoint import list_checkpoints, load_checkpoint, load_latest
from dcasgd.io.lock import LOCK_NAME, DirLock

TINY = ["--dataset", "synthetic", "--workers", "2", "--epochs", "1", "--batch-size", "64", "--no-progress"]
UPDATES = 32                                   # 2048 samples / 64 per gradient


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def stopped_run(out: Path, stop_after: int = 20, *extra: str) -> None:
    assert main(["train", *TINY, "--out", str(out), "--checkpoint-every", "8",
                 "--stop-after-updates", str(stop_after), *extra]) == 0


# ---------------------------------------------------------------- 1. resume never invents data


def test_a_checkpoint_records_the_fsynced_length_and_digest_of_metrics(tmp_path):
    out = tmp_path / "run"
    stopped_run(out)
    _, state = load_latest(out / "checkpoints")
    mark = state["metrics"]
    prefix = (out / "metrics.jsonl").read_bytes()[:mark["bytes"]]
    assert len(prefix) == mark["bytes"] > 0
    assert hashlib.sha256(prefix).hexdigest() == mark["sha256"]


def test_resume_refuses_a_metrics_file_that_lost_its_tail_and_never_pads_it(tmp_path, capsys):
    out = tmp_path / "run"
    stopped_run(out)
    metrics = out / "metrics.jsonl"
    kept = metrics.read_bytes()[:400]                  # the tail lost in a crash
    metrics.write_bytes(kept)
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    line = one_error_line(capsys)
    assert "fewer than" in line and "--out NEW" in line
    assert metrics.read_bytes() == kept                # not padded, not touched


def test_resume_refuses_a_metrics_file_whose_checkpointed_bytes_changed(tmp_path, capsys):
    out = tmp_path / "run"
    stopped_run(out)
    metrics = out / "metrics.jsonl"
    data = bytearray(metrics.read_bytes())
    data[10:14] = b"XXXX"                              # same length, other bytes
    metrics.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 2
    assert "not the ones the checkpoint recorded" in one_error_line(capsys)


def test_resume_into_a_new_directory_starts_a_fresh_history_from_the_checkpoint(tmp_path, capsys):
    out, new = tmp_path / "run", tmp_path / "new"
    stopped_run(out)
    (out / "metrics.jsonl").write_bytes(b"")           # the history is gone
    assert main(["train", "--resume", str(out), "--out", str(new)]) == 0
    data = (new / "metrics.jsonl").read_bytes()
    assert b"\0" not in data
    records = [json.loads(line) for line in data.decode().splitlines()]
    updates = [r["version"] for r in records if r["kind"] == "update"]
    assert updates == list(range(21, UPDATES + 1))     # from the stop's checkpoint (20) on, nothing invented
    summary = summary_of(new)
    assert summary["history_from_version"] == 20 and summary["updates"] == UPDATES


# ---------------------------------------------------------------- 2. a checkpoint is bound to its run


def test_a_checkpoint_copied_in_from_another_run_is_refused(tmp_path, capsys):
    """Two runs with the same settings: B's checkpoint in A's directory must not turn A into B."""
    a, b = tmp_path / "a", tmp_path / "b"
    stopped_run(a, 10)
    stopped_run(b, 26)
    foreign = list_checkpoints(b / "checkpoints")[-1]
    shutil.copy(foreign, a / "checkpoints" / foreign.name)
    assert load_checkpoint(foreign)["run_id"] != (a / "run_id").read_text().strip()
    capsys.readouterr()
    assert main(["train", "--resume", str(a)]) == 2
    line = one_error_line(capsys)
    assert "copied in from another run" in line and foreign.name in line
    (a / "checkpoints" / foreign.name).unlink()
    assert main(["train", "--resume", str(a)]) == 0      # its own checkpoint still resumes it
    assert summary_of(a)["run_id"] == (a / "run_id").read_text().strip()


# ---------------------------------------------------------------- 3. one process owns a run directory


def test_a_directory_locked_by_another_holder_gets_one_line_naming_it(tmp_path, capsys):
    out = tmp_path / "run"
    with DirLock(out):
        assert main(["train", *TINY, "--out", str(out)]) == 2
        line = one_error_line(capsys)
        assert f"in use by process {os.getpid()}" in line
        assert not (out / "metrics.jsonl").exists()
    assert not (out / LOCK_NAME).exists()
    assert main(["train", *TINY, "--out", str(out)]) == 0


def test_compare_locks_its_study_directory(tmp_path, capsys):
    study = tmp_path / "study"
    with DirLock(study):
        assert main(["compare", str(study), "--dataset", "synthetic", "--methods", "asgd", "--workers-grid", "2",
                     "--seeds", "0", "--lr-grid", "0.1", "--epochs", "0.25"]) == 2
        assert f"in use by process {os.getpid()}" in one_error_line(capsys)
    assert not (study / "compare.json").exists()


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text("999999\n")            # what a killed run leaves: a file, no lock
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert summary_of(out)["updates"] == UPDATES


def test_a_live_run_cannot_be_joined_or_resumed_and_a_killed_one_can(tmp_path, capsys):
    out = tmp_path / "run"
    live = subprocess.Popen([sys.executable, "-m", "dcasgd", "train", "--dataset", "synthetic", "--workers", "2",
                             "--epochs", "2000", "--no-progress", "--checkpoint-every", "5", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for(lambda: list_checkpoints(out / "checkpoints"), "checkpoint", live)
        assert main(["train", *TINY, "--out", str(out), "--overwrite"]) == 2       # a second writer
        assert f"in use by process {live.pid}" in one_error_line(capsys)
        assert main(["train", "--resume", str(out)]) == 2                          # a resume of a live run
        assert f"in use by process {live.pid}" in one_error_line(capsys)
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait(timeout=60)
    assert (out / LOCK_NAME).exists()                   # the dead run's lock file stays, and blocks nothing
    assert main(["train", "--resume", str(out), "--epochs", "2000", "--stop-after-updates", "40"]) == 0


# ---------------------------------------------------------------- 4. bits depend on the thread count


def test_a_resume_under_another_thread_count_warns_and_records_both(tmp_path):
    """In child processes: a test process whose OpenMP pool has run two threads must not fork later."""
    out = tmp_path / "run"

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dcasgd", "train", *args], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    first = cli(*TINY, "--out", str(out), "--checkpoint-every", "8", "--stop-after-updates", "20", "--threads", "1")
    assert first.returncode == 0, first.stderr
    second = cli("--resume", str(out), "--threads", "2")
    assert second.returncode == 0, second.stderr
    assert "written with 1 torch threads" in second.stderr and "--threads 1" in second.stderr
    summary = summary_of(out)
    assert summary["torch_threads"] == 2 and summary["torch_threads_history"] == [1, 2]


def test_a_resume_under_the_same_thread_count_is_bit_identical_and_quiet(tmp_path, capsys):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", *TINY, "--out", str(whole), "--threads", "1"]) == 0
    stopped_run(parts, 20, "--threads", "1")
    capsys.readouterr()
    assert main(["train", "--resume", str(parts)]) == 0           # the checkpoint's --threads 1 comes back
    assert "torch threads" not in capsys.readouterr().err
    assert (parts / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()
    assert "torch_threads_history" not in summary_of(parts)


def test_a_lock_whose_pid_cannot_be_written_is_let_go_and_is_a_storage_error(tmp_path, monkeypatch):
    import errno
    from dcasgd.errors import StorageError
    from dcasgd.io import lock as lock_module

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(lock_module.os, "write", full_disk)
    with pytest.raises(StorageError, match="No space left"):
        DirLock(tmp_path / "run").acquire()
    monkeypatch.undo()
    with DirLock(tmp_path / "run"):                     # not left held by the failed attempt
        pass
