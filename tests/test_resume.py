"""Checkpoints and exact resume in the simulator; refused gradients; bad checkpoints."""

import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcasgd.io import atomic
from dcasgd.io import checkpoint as ckpt
from dcasgd.io.checkpoint import CheckpointError, encode, list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from dcasgd.config import TrainConfig
from dcasgd.errors import StorageError
from dcasgd.backends.sim import run_sim


def config(out, **kw):
    base = dict(dataset="synthetic", model="mlp", workers=4, epochs=2, batch_size=32, lr=0.1, rule="dc-asgd-a",
                consistency="async", jitter=0.4, out=str(out), progress=False, eval_every=0.5)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("extra", [
    dict(failures=((2, 6.0, 14.0),), momentum=0.5),
    dict(consistency="ssp:1", stragglers={1: 2.5}),
    dict(consistency="sync", rule="sgd"),
    dict(consistency="sync", rule="sgd", corrupt={1: 0.3}, workers=3),   # refused pushes mid-round
])
def test_stopped_and_resumed_runs_are_bit_identical(tmp_path, extra):
    whole = run_sim(config(tmp_path / "whole", **extra))
    total = whole.summary["updates"]
    reference = (tmp_path / "whole" / "metrics.jsonl").read_bytes()
    for stop in (1, total // 3, total - 2):                 # three stop points
        out = tmp_path / f"part{stop}"
        first = run_sim(config(out, stop_after_updates=stop, **extra))
        assert first.summary["stopped_early"] and first.summary["updates"] == stop
        assert list_checkpoints(out / "checkpoints")
        resumed = run_sim(config(out, resume=str(out), **extra))
        assert torch.equal(resumed.weights, whole.weights), stop
        assert torch.equal(resumed.buffers, whole.buffers)
        assert (out / "metrics.jsonl").read_bytes() == reference, stop
        assert (out / "trace.jsonl").read_bytes() == (tmp_path / "whole" / "trace.jsonl").read_bytes(), stop
        assert resumed.summary["final_test_error"] == whole.summary["final_test_error"]


def test_periodic_checkpoints_keep_the_last_k_and_resume_after_a_crash(tmp_path):
    out = tmp_path / "run"
    whole = run_sim(config(tmp_path / "whole"))
    run_sim(config(out, checkpoint_every=10, keep_checkpoints=2))
    kept = list_checkpoints(out / "checkpoints")
    assert len(kept) == 2 and kept[-1].name.endswith(f"{(whole.summary['updates'] // 10) * 10:09d}.pt")
    # a crash after the last checkpoint: resume from it, the metrics file is cut back and regrown
    resumed = run_sim(config(out, resume=str(out)))
    assert torch.equal(resumed.weights, whole.weights)
    assert (out / "metrics.jsonl").read_bytes() == (tmp_path / "whole" / "metrics.jsonl").read_bytes()


def test_resume_through_the_cli_takes_the_checkpoints_settings(tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "dcasgd", "train", "--dataset", "synthetic", "--workers", "3", "--epochs", "1",
           "--batch-size", "32", "--out", str(out), "--no-progress"]
    assert subprocess.run(cmd + ["--checkpoint-every", "7"],
                          capture_output=True, timeout=300).returncode == 0
    done = json.loads((out / "summary.json").read_text())
    result = subprocess.run([sys.executable, "-m", "dcasgd", "train", "--resume", str(out), "--no-progress"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    again = json.loads((out / "summary.json").read_text())
    assert again["updates"] == done["updates"] and again["final_test_error"] == done["final_test_error"]
    mismatch = subprocess.run([sys.executable, "-m", "dcasgd", "train", "--resume", str(out), "--workers", "5"],
                              capture_output=True, text=True, timeout=300)
    assert mismatch.returncode == 2 and "from a different run (workers" in mismatch.stderr


@pytest.mark.parametrize("extra", [dict(), dict(consistency="sync", rule="sgd"), dict(consistency="ssp:1")])
def test_refused_gradients_are_counted_and_max_refused_stops_cleanly(tmp_path, extra):
    result = run_sim(config(tmp_path / "a", corrupt={1: 0.3}, **extra))
    refused = result.summary["refused_per_worker"]
    assert refused[1] > 0 and refused[0] == refused[2] == refused[3] == 0
    assert result.summary["final_test_error"] < 40 and not result.summary["diverged"]
    events = [e for e in result.summary["worker_events"] if e["event"] == "push_refused"]
    assert len(events) == refused[1] and "NaN or Inf" in events[0]["reason"]
    assert all(math.isfinite(v) for v in result.weights.tolist())
    if extra.get("consistency") == "sync":                 # every round still averages all 4 workers
        updates = [r for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())
                   if r["kind"] == "update"]
        per_round = {}
        for r in updates:
            per_round.setdefault(r["version"], []).append(r["worker"])
        assert all(sorted(ws) == [0, 1, 2, 3] for ws in per_round.values())
        assert len(per_round) == result.summary["updates"]
    stopped = run_sim(config(tmp_path / "b", corrupt={1: 0.3}, max_refused=3, **extra))
    assert stopped.summary["stopped_early"] and stopped.summary["refused_per_worker"][1] == 3
    assert list_checkpoints(tmp_path / "b" / "checkpoints")
    assert stopped.summary["worker_events"][-1]["reason"] == "max_refused"


def test_server_side_clipping_counts_clipped_updates(tmp_path):
    result = run_sim(config(tmp_path / "c", clip_norm=1e-3, epochs=0.5))
    assert result.summary["clipped_updates"] == result.summary["updates"]


# ------------------------------------------------------------------ checkpoint files


def test_checkpoint_round_trip_and_corruption(tmp_path):
    state = {"w": torch.arange(5.0), "n": 3, "nested": {"s": "x"}}
    path = save_checkpoint(tmp_path, state, step=7)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["n"] == 3 and loaded["nested"] == {"s": "x"}
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)
    path.write_bytes(b"PK\x03\x04 something else entirely")
    with pytest.raises(CheckpointError, match="not a dcasgd checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        load_latest(tmp_path)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_can_never_run_code(tmp_path):
    payload = pickle.dumps({"x": Evil()})
    import hashlib
    blob = ckpt.MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    (tmp_path / "ckpt-000000001.pt").write_bytes(blob)
    with pytest.raises(CheckpointError, match="cannot load payload"):
        load_checkpoint(tmp_path / "ckpt-000000001.pt")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True), renamed=st.booleans())
def test_a_write_killed_at_any_byte_leaves_the_previous_checkpoint_loadable(tmp_path_factory, cut, renamed):
    directory = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(directory, {"w": torch.ones(100), "version": 1}, step=1)
    blob = encode({"w": torch.zeros(100), "version": 2})
    n = int(cut * len(blob))
    if renamed:
        # worst case: a torn file under the final name (as if the rename survived but the data did not)
        (directory / "ckpt-000000002.pt").write_bytes(blob[:n])
    else:
        real_fdopen = os.fdopen

        def torn_fdopen(fd, mode="r", *a, **k):
            f = real_fdopen(fd, mode, *a, **k)
            write = f.write

            def partial(data):
                write(data[:n])
                raise OSError("killed mid-write")
            f.write = partial
            return f
        atomic.os.fdopen = torn_fdopen  # the atomic writer that checkpoints use
        try:
            with pytest.raises(StorageError, match="killed mid-write"):   # names the file, keeps the reason
                save_checkpoint(directory, {"w": torch.zeros(100), "version": 2}, step=2)
        finally:
            atomic.os.fdopen = real_fdopen
        assert not list(directory.glob("*.tmp")) and not (directory / "ckpt-000000002.pt").exists()
    path, state = load_latest(directory)
    assert path.name == "ckpt-000000001.pt" and state["version"] == 1 and torch.equal(state["w"], torch.ones(100))


def test_resume_refuses_a_checkpoint_of_a_different_run(tmp_path):
    out = tmp_path / "r"
    run_sim(config(out, stop_after_updates=5))
    with pytest.raises(CheckpointError, match="different run"):
        run_sim(config(out, resume=str(out), workers=5))
