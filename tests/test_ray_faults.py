"""Faults on a real Ray: SIGKILLed workers and server shards, a node removed from a cluster.

One three-node Ray cluster on this machine (loopback only) for the module:
the head carries the ``dcasgd_server`` resource (server shards and the
coordinator go there) and two nodes carry one ``dcasgd_worker`` each, so a
two-worker run puts one worker on each.  Every run is the 4-class synthetic
task with a small MLP; 2 epochs of 2048 samples in batches of 32 is 128 updates.

The invariant every test checks on ``trace.jsonl`` (one line per applied
push): versions run 1..N without gaps or repeats, each (worker, seq) appears
once, and each worker's seqs run 1..k, i.e. no push was applied twice and none
was skipped.  After a resume the lines from the lost stretch (versions past the
checkpoint) are superseded by the resumed run's.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import ray_cluster  # noqa: E402
from dcasgd.backends import ray as rb  # noqa: E402
from dcasgd.config import TrainConfig  # noqa: E402

pytestmark = pytest.mark.ray

STORE = 100 * 1024**2
UPDATES = 128


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(STORE, [{"num_cpus": 1, "workers": 1}] * 2) as (c, nodes):
        yield c, nodes


def make_cfg(out: Path, address: str, **overrides) -> TrainConfig:
    settings = dict(backend="ray", dataset="synthetic", model="mlp", rule="dc-asgd-a", consistency="async",
                    workers=2, epochs=2.0, batch_size=32, lr=0.1, seed=0, progress=False, out=str(out),
                    address=address)
    settings.update(overrides)
    return TrainConfig(**settings)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def effective_history(trace: list[dict]) -> list[dict]:
    """The applied pushes that count: a version at or below one already seen starts a resumed stretch."""
    history: list[dict] = []
    for r in trace:
        while history and history[-1]["version"] >= r["version"]:
            history.pop()                                   # lost with the server, redone after the resume
        history.append(r)
    return history


def assert_applied_once(trace: list[dict], updates: int, workers: int = 2) -> None:
    history = effective_history(trace)
    assert [r["version"] for r in history] == list(range(1, updates + 1))
    keys = [(r["worker"], r["seq"]) for r in history]
    assert len(set(keys)) == len(keys) == updates
    for m in range(workers):
        seqs = [s for w, s in keys if w == m]
        assert seqs == list(range(1, len(seqs) + 1)), f"worker {m}: seqs {seqs}"


def sigkill(actor) -> int:
    """SIGKILL a server actor's process (a worker is busy in run(): use RayRun.worker_pids)."""
    pid = ray.get(actor.pid.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    return pid


# ---------------------------------------------------------------- (a) a worker SIGKILLed in mid-push


def test_a_worker_killed_mid_push_is_reported_restarted_and_nothing_is_applied_twice(cluster, tmp_path):
    c, _ = cluster
    out = tmp_path / "kill-worker"
    kills: list[tuple[int, int]] = []                 # (pid, seq of the push it was in the middle of)
    mark = tmp_path / "in-push"

    hold = tmp_path / "hold-worker-0"
    hold.write_text("")

    def chaos(run: rb.RayRun) -> None:
        # worker 1 sleeps 0.2 s between sending each push and reading the answer, and meanwhile the
        # mark file says "pid seq": kill it there, twice (the second time in its restarted process)
        if len(kills) >= 2 or run.version < 20:
            return
        try:
            pid, seq = map(int, mark.read_text().split())
        except (OSError, ValueError):
            return                                          # not in a push right now
        if pid not in [p for p, _ in kills]:
            os.kill(pid, signal.SIGKILL)
            kills.append((pid, seq))
        if len(kills) == 2:
            hold.unlink()                                   # worker 0 may go on: the run cannot end before

    # worker 0 starts no gradient until worker 1 was killed twice, so the run outlasts both restarts
    # however slowly the machine makes them
    summary = rb.run_ray(make_cfg(out, c.address, epochs=3.0, worker_restarts=2),
                         instrument=rb.Instrumentation(on_tick=chaos, worker_hooks={
                             0: {"hold_while": str(hold)},
                             1: {"push_pause_s": 0.2, "push_pause_mark": str(mark)}}))
    assert len(kills) == 2
    events = [(e["event"], e["worker"]) for e in summary["worker_events"]]
    assert events.count(("worker_failed", 1)) == 2 and events.count(("worker_rejoined", 1)) == 2
    assert summary["worker_restarts_used"] == [0, 2]
    assert summary["updates"] == summary["gradients"] == 192              # the job, exactly, nothing twice
    trace = read_jsonl(out / "trace.jsonl")
    assert_applied_once(trace, 192)
    applied = {(r["worker"], r["seq"]) for r in trace}
    lost = summary["lost_gradients_per_worker"]
    assert lost[0] == 0
    for _, seq in kills:
        # the push was sent before the kill: the shard applied it (and the restarted worker went on
        # with seq + 1), or it never arrived and its grant was given back (counted as lost)
        assert (1, seq) in applied or lost[1] >= 1
    assert summary["final_test_error"] < 30.0


# ---------------------------------------------------------------- (b) a server shard SIGKILLed, then --resume


def test_a_killed_server_shard_stops_the_run_and_resume_applies_nothing_twice(cluster, tmp_path):
    c, _ = cluster
    out = tmp_path / "kill-server"
    cfg = dict(servers=2, checkpoint_every=20)

    def kill_shard(run: rb.RayRun) -> None:
        if run.version >= 50 and not getattr(run, "_killed", False):
            run._killed = True
            sigkill(run.actors.shards[1])                   # the second shard: a plain ServerShard actor

    with pytest.raises(rb.ServerLost):
        rb.run_ray(make_cfg(out, c.address, **cfg), instrument=rb.Instrumentation(on_tick=kill_shard))
    crashed = json.loads((out / "summary.json").read_text())
    assert crashed["server_failed"] is True and crashed["stop_reason"] is None
    assert crashed["outcome"] == "failed"                   # not the label of exit 5, no_live_workers
    assert crashed["final_test_error"] is None               # no evaluation of the final weights: no stale one
    assert crashed["last_evaluation"]["version"] < crashed["updates"]
    ckpt = crashed["last_checkpoint_version"]
    assert ckpt >= 40 and ckpt % 20 == 0
    assert crashed["lost_updates"] == crashed["updates"] - ckpt >= 0
    assert any(e["event"] == "server_failed" for e in read_jsonl(out / "metrics.jsonl") if e["kind"] == "event")

    final = rb.run_ray(make_cfg(out, c.address, resume=str(out), **cfg))
    assert final["resumed_from"]["version"] == ckpt and final["lost_updates"] == crashed["lost_updates"]
    assert final["updates"] == UPDATES and final["epochs_done"] == 2.0
    assert_applied_once(read_jsonl(out / "trace.jsonl"), UPDATES)
    assert final["final_test_error"] < 30.0


# ---------------------------------------------------------------- a checkpoint copied in from another run


def test_a_ray_checkpoint_copied_in_from_another_run_is_refused(cluster, tmp_path):
    """Two runs with the same settings: B's checkpoint in A's directory must not turn A into B."""
    import shutil
    from dcasgd.io.checkpoint import CheckpointError, list_checkpoints
    c, _ = cluster
    a, b = tmp_path / "a", tmp_path / "b"
    rb.run_ray(make_cfg(a, c.address, checkpoint_every=20, stop_after_updates=20))
    rb.run_ray(make_cfg(b, c.address, checkpoint_every=20, stop_after_updates=40))
    foreign = list_checkpoints(b / "checkpoints")[-1]
    shutil.copy(foreign, a / "checkpoints" / foreign.name)
    with pytest.raises(CheckpointError, match="copied in from another run"):
        rb.run_ray(make_cfg(a, c.address, resume=str(a)))


# ---------------------------------------------------------------- (c) a worker node removed from the cluster


def test_removing_a_worker_node_loses_its_worker_and_the_rest_finish(cluster, tmp_path):
    """Last in the module: it leaves the cluster with one worker node."""
    c, nodes = cluster
    out = tmp_path / "remove-node"
    removed: list[int] = []

    def remove(run: rb.RayRun) -> None:
        if run.version >= 40 and not removed:
            victim = nodes[1]
            removed.extend(m for m, node in enumerate(run.placement["workers"]) if node == victim.node_id)
            c.remove_node(victim)

    summary = rb.run_ray(make_cfg(out, c.address), instrument=rb.Instrumentation(on_tick=remove))
    assert sorted(summary["placement"]["workers"]) == sorted(n.node_id for n in nodes)   # one per worker node
    assert len(removed) == 1
    lost = removed[0]
    failed = [e for e in summary["worker_events"] if e["event"] == "worker_failed"]
    assert [e["worker"] for e in failed] == [lost] and failed[0]["version"] >= 40
    assert summary["updates"] == UPDATES                                 # the survivor finishes the job
    assert summary["pushes_per_worker"][1 - lost] > summary["pushes_per_worker"][lost] > 0
    assert sum(summary["lost_gradients_per_worker"]) <= 1              # at most its in-flight gradient
    assert_applied_once(read_jsonl(out / "trace.jsonl"), UPDATES)
