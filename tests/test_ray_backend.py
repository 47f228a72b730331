"""The Ray backend on a real local Ray (started once for this module, loopback only).

Every run is the 4-class synthetic task with a small MLP and two workers, so a
run takes seconds; chance error is 75%.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from dcasgd.backends import ray as rb  # noqa: E402
from dcasgd.cli import main as cli_main  # noqa: E402
from dcasgd.config import ConfigError, TrainConfig  # noqa: E402
from dcasgd.core.server import PushRejected  # noqa: E402
from dcasgd.backends.sim import load_trace  # noqa: E402
from dcasgd.backends.ray.worker import _flat_to_device  # noqa: E402
from dcasgd.engine.speeds import emulated_pause  # noqa: E402
from dcasgd.engine.timing import CYCLE_PARTS, HOLD_PARTS, read_trace  # noqa: E402

pytestmark = pytest.mark.ray

CHANCE = 75.0
SIM_SUMMARY_KEYS = {"final_test_error", "eval_split", "diverged", "updates", "gradients", "epochs_done",
                    "mean_staleness", "max_staleness", "wall_time_s", "staleness", "pushes_per_worker",
                    "refused_per_worker", "worker_events", "speeds", "curve", "backend", "config",
                    "server_bytes_per_param"}


def make_cfg(out: Path, **overrides) -> TrainConfig:
    settings = dict(backend="ray", dataset="synthetic", model="mlp", rule="dc-asgd-a", consistency="async",
                    workers=2, epochs=2.0, batch_size=32, lr=0.1, seed=0, progress=False, out=str(out))
    settings.update(overrides)
    return TrainConfig(**settings)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def updates_of(out: Path) -> list[dict]:
    return [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "update"]


@pytest.fixture(scope="module")
def async_run(local_ray, tmp_path_factory):
    out = tmp_path_factory.mktemp("async") / "run"
    summary = rb.run_ray(make_cfg(out))
    return summary, out


# ---------------------------------------------------------------- local Ray


def test_local_ray_is_bound_to_loopback(local_ray):
    addresses = {node["NodeManagerAddress"] for node in ray.nodes() if node["Alive"]}
    assert addresses == {"127.0.0.1"}
    options = rb.local_ray_options(num_params=10**6, data_bytes=10**8, num_workers=4)
    assert options["_node_ip_address"] == "127.0.0.1" and options["include_dashboard"] is False
    assert 256 * 1024**2 <= options["object_store_memory"]


# ---------------------------------------------------------------- async


def test_async_run_converges_with_real_staleness(async_run):
    summary, out = async_run
    assert summary["final_test_error"] < 30.0 < CHANCE
    assert summary["max_staleness"] >= 1 and summary["mean_staleness"] > 0
    assert summary["updates"] == summary["gradients"] == 128          # ceil(2 epochs * 2048) / 32, exactly
    assert sum(summary["pushes_per_worker"]) == 128 and all(p > 0 for p in summary["pushes_per_worker"])
    assert SIM_SUMMARY_KEYS <= set(summary) and "sim_time_s" not in summary
    assert summary["backend"] == "ray" and summary["updates_per_s"] > 0
    assert summary["refused_per_worker"] == [0, 0] and not summary["diverged"]
    written = json.loads((out / "summary.json").read_text())
    assert written["updates"] == 128 and SIM_SUMMARY_KEYS | {"command"} <= set(written)


def test_async_metrics_have_the_simulator_lines(async_run):
    summary, out = async_run
    records = read_jsonl(out / "metrics.jsonl")
    assert {r["kind"] for r in records} >= {"update", "eval", "staleness"}
    updates = [r for r in records if r["kind"] == "update"]
    assert [r["version"] for r in updates] == list(range(1, 129))      # in the order the server applied them
    for r in updates:
        assert {"version", "worker", "staleness", "loss", "time_s", "epoch", "clock", "clock_gap"} <= set(r)
        assert r["time_s"] >= 0 and math.isfinite(r["loss"])
    evals = [r for r in records if r["kind"] == "eval"]
    assert evals[0]["version"] == 0 and evals[-1]["version"] == 128
    assert evals[-1]["test_error"] == summary["final_test_error"]
    assert [e["epoch"] for e in summary["curve"]] == [e["epoch"] for e in evals]
    # Evaluations during training hold it (the driver shares the node with the workers): nothing is applied
    # between the weights an evaluation reads and the time it is stamped with, and that time leaves it out.
    middle = [e for e in evals if 0 < e["version"] < 128]
    assert middle and summary["eval_pause_s"] > 0
    assert summary["time_per_gradient_ms"]["evaluation_pause"] > 0   # held workers: not counted as exchange
    for e in middle:
        assert all(u["time_s"] >= e["time_s"] for u in updates if u["version"] > e["version"])
        assert all(u["time_s"] <= e["time_s"] for u in updates if u["version"] <= e["version"])


def test_trace_records_real_staleness_and_replays_in_the_simulator(async_run):
    _, out = async_run
    trace = read_jsonl(out / "trace.jsonl")
    assert len(trace) == 128
    for r in trace:
        assert set(r) == {"worker", "seq", "base_version", "version", "staleness", "t_pull", "t_push", "duration_s",
                          *CYCLE_PARTS, *HOLD_PARTS}
        assert r["staleness"] == r["version"] - 1 - r["base_version"] >= 0
        assert r["duration_s"] > 0 and r["t_pull"] <= r["t_push"]
        # the whole cycle, in parts measured on the worker's clock; the coordinator's holds are not in it
        assert r["compute_s"] == r["duration_s"] and r["slowdown_s"] == 0.0
        assert all(r[k] >= 0 for k in (*CYCLE_PARTS, *HOLD_PARTS))
        assert sum(r[k] for k in CYCLE_PARTS if k != "cycle_s") == pytest.approx(r["cycle_s"])
    assert any(r["held_s"] > 0 for r in trace)                         # evaluation pauses held the workers
    for m in (0, 1):
        seqs = [r["seq"] for r in trace if r["worker"] == m]
        assert seqs == list(range(1, len(seqs) + 1))
    durations = load_trace(out / "trace.jsonl", 2)
    assert [len(d) for d in durations] == [sum(r["worker"] == m for r in trace) for m in (0, 1)]
    records, whole = read_trace(out / "trace.jsonl", 2)
    assert whole and [[x["cycle_s"] for x in rs] for rs in records] == [
        [r["cycle_s"] for r in trace if r["worker"] == m] for m in (0, 1)]


# ---------------------------------------------------------------- sync and ssp


def test_sync_through_the_cli_gives_equal_pushes(local_ray, tmp_path, capsys):
    out = tmp_path / "sync"
    status = cli_main(["train", "--backend", "ray", "--consistency", "sync", "--dataset", "synthetic",
                       "--model", "mlp", "--workers", "2", "--servers", "2", "--epochs", "1", "--batch-size", "32",
                       "--rule", "sgd", "--out", str(out), "--no-progress"])
    assert status == 0 and "final test error" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pushes_per_worker"] == [32, 32]
    assert summary["updates"] == 32 and summary["gradients"] == 64      # one averaged update per round
    assert summary["max_staleness"] == 0
    assert len(summary["shard_ranges"]) == 2
    versions = [r["version"] for r in updates_of(out)]
    assert versions == sorted(versions) and versions[-1] == 32


# ---------------------------------------------------------------- probe, TensorBoard, staleness telemetry


def test_probe_tensorboard_and_waits_under_ssp0_with_a_slow_worker(local_ray, tmp_path):
    """--probe-every 2 and --tensorboard on Ray; ssp:0 with worker 1 slowed makes worker 0 wait."""
    from dcasgd.engine.probe import RECORD_FIELDS, CompensationProbe

    out, tb = tmp_path / "probe", tmp_path / "tb"
    summary = rb.run_ray(make_cfg(out, consistency="ssp:0", epochs=1.0, probe_every=2, tensorboard=str(tb)),
                         instrument=rb.Instrumentation(worker_hooks={1: {"compute_delay_s": 0.05}}))
    assert summary["updates"] == 64 and "probe_every" not in summary["ignored_settings"]
    records = read_jsonl(out / "metrics.jsonl")
    probes = [r for r in records if r["kind"] == "probe"]
    # every 2nd of 64 pushes, none lost at the end of the run (the driver's last wait_event answer
    # carries the final records: dropping it lost one when the machine was loaded)
    assert len(probes) == summary["probe"]["count"] == 32
    assert set(summary["probe"]) == set(CompensationProbe(2).summary()) | {"lam", "lam_form"}
    versions = {r["version"]: r for r in records if r["kind"] == "update"}
    for p in probes:
        assert set(RECORD_FIELDS) <= set(p) and p["lam_form"] == "dc-asgd-a"
        assert p["recompute_err"] < 1e-4                              # same batch, key and buffers as the push
        assert versions[p["version"]]["worker"] == p["worker"]        # the push it describes
        assert p["epoch"] == versions[p["version"]]["epoch"]
        assert p["staleness"] >= 0 and (p["staleness"] > 0 or p["delta_norm"] == 0)
    assert list(tb.glob("events.out.tfevents.*"))                    # TensorBoard got the lines too
    # staleness telemetry: overall and per worker, pushes and waits per worker, periodic lines
    st = summary["staleness"]
    for d in (st["overall"], *st["per_worker"]):
        assert {"histogram", "p50", "p90", "p99", "max", "mean", "count"} <= set(d)
    assert summary["pushes_per_worker"] == st["pushes_per_worker"] and sum(summary["pushes_per_worker"]) == 64
    waits = summary["wait_s_per_worker"]
    assert waits == st["wait_s_per_worker"] and len(waits) == 2 and min(waits) >= 0
    # ssp:0 holds the fast worker to the slow one's clock: equal pushes, and no gradient started ahead
    assert summary["pushes_per_worker"] == [32, 32]
    assert max(r["clock_gap"] for r in records if r["kind"] == "update") == 0
    assert summary["updates_per_s"] > 0
    assert sum(r["kind"] == "staleness" for r in records) >= 2


def test_the_last_probe_records_survive_a_slow_driver(local_ray, tmp_path):
    """A driver that is slow at the end finds the workers finished and its outstanding wait_event
    answered at once; that answer holds the final probe records and must be read, not dropped."""
    out = tmp_path / "slow-driver"
    summary = rb.run_ray(make_cfg(out, epochs=0.25, probe_every=1),
                         instrument=rb.Instrumentation(on_tick=lambda run: time.sleep(0.5 if run.version >= 12 else 0.0)))
    probes = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "probe"]
    assert summary["updates"] == 16
    assert sorted(p["version"] for p in probes) == list(range(1, 17)) == list(range(1, summary["probe"]["count"] + 1))


def test_an_emulated_straggler_pushes_factor_times_less_often_even_when_its_own_work_is_slower(local_ray, tmp_path):
    """--straggler 1:3 on Ray: worker 1's whole cycle is paced to 3x worker 0's, not to 3x its own busy time.

    Worker 1's gradients are made slower than worker 0's (a sleep in its compute, as a machine shared with
    other processes would make them): pausing (k - 1) x its own busy time, as the old emulation did, gave
    about 3 x 2 = 6 times fewer pushes.  Counts only, with a loose bound: the machine may be loaded.
    """
    hooks = {0: {"compute_delay_s": 0.01}, 1: {"compute_delay_s": 0.02}}
    summary = rb.run_ray(make_cfg(tmp_path / "straggler", epochs=3.0, stragglers={1: 3.0}),
                         instrument=rb.Instrumentation(worker_hooks=hooks))
    fast, slow = summary["pushes_per_worker"]
    assert fast + slow == 192 and "stragglers" not in summary["ignored_settings"]
    assert 2.4 <= fast / slow <= 3.75
    assert summary["emulated_slowdown"] == [1.0, 3.0]
    assert summary["achieved_slowdown"][0] == 1.0 and summary["achieved_slowdown"][1] > 1.0


def test_an_emulated_slow_worker_pauses_so_its_round_trip_takes_factor_times_longer():
    for slowdown, busy in ((4.0, 0.25), (1.5, 2.0), (1.0, 0.3)):
        pause = emulated_pause(slowdown, busy)
        assert pause >= 0 and math.isclose(busy + pause, slowdown * busy)


# ---------------------------------------------------------------- faults


def test_killed_workers_are_reported_and_a_restarted_one_rejoins(local_ray, tmp_path):
    killed = []

    def chaos(run: rb.RayRun) -> None:
        if run.version >= 30 and "w1" not in killed:            # for good
            killed.append("w1")
            ray.kill(run.actors.workers[1], no_restart=True)
        if run.version >= 60 and "w0" not in killed:            # Ray restarts it (--worker-restarts 1)
            killed.append("w0")
            ray.kill(run.actors.workers[0], no_restart=False)

    summary = rb.run_ray(make_cfg(tmp_path / "faults", epochs=2.5, worker_restarts=1),
                         instrument=rb.Instrumentation(on_tick=chaos))
    assert killed == ["w1", "w0"]
    events = [(e["event"], e["worker"]) for e in summary["worker_events"]]
    assert ("worker_failed", 1) in events and ("worker_failed", 0) in events and ("worker_rejoined", 0) in events
    failed = next(e for e in summary["worker_events"] if e["event"] == "worker_failed" and e["worker"] == 1)
    assert failed["version"] >= 30 and failed["time_s"] > 0
    assert summary["updates"] == 160                                 # the survivors finish the job exactly
    assert summary["final_test_error"] < 30.0
    assert summary["pushes_per_worker"][0] > summary["pushes_per_worker"][1]


def test_ssp_with_checkpoint_stop_resume_and_a_lost_server(local_ray, tmp_path):
    """Three runs of one ssp:1 job: stopped, resumed until the server dies, resumed to the end."""
    out = tmp_path / "resumable"
    # 1: stop after 40 updates (checkpoints at 20 and 40)
    first = rb.run_ray(make_cfg(out, consistency="ssp:1", checkpoint_every=20, stop_after_updates=40,
                                probe_every=5))
    assert first["updates"] == 40 and first["probe"]["count"] == 8 and [c["version"] for c in first["checkpoints"]] == [20, 40]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-000000020.pt", "ckpt-000000040.pt"]

    # 2: resume, then the server dies some updates after the checkpoint at 50
    def kill_server(run: rb.RayRun) -> None:
        if run.version >= 56 and run.actors is not None:
            ray.kill(run.actors.shards[0])

    with pytest.raises(rb.ServerLost):
        rb.run_ray(make_cfg(out, consistency="ssp:1", checkpoint_every=50, resume=str(out), probe_every=5),
                   instrument=rb.Instrumentation(on_tick=kill_server))
    crashed = json.loads((out / "summary.json").read_text())
    ckpt = crashed["last_checkpoint_version"]
    assert crashed["server_failed"] and ckpt in (50, 100)
    assert crashed["lost_updates"] == crashed["updates"] - ckpt > 0

    # 3: resume again: continues from the last checkpoint, counts the lost updates, applies nothing twice
    final = rb.run_ray(make_cfg(out, consistency="ssp:1", checkpoint_every=50, resume=str(out), probe_every=5))
    assert final["resumed_from"]["version"] == ckpt
    assert final["probe"]["count"] == 25                      # every 5th of 128, the lost stretch's dropped
    assert final["lost_updates"] == crashed["lost_updates"]
    assert final["updates"] == 128 and final["epochs_done"] == 2.0
    assert final["final_test_error"] < 30.0

    # the log: each segment strictly increasing, each resumed segment continuing from its checkpoint
    segments, current = [], []
    for r in read_jsonl(out / "metrics.jsonl"):
        if r["kind"] == "event" and r["event"] == "resumed":
            segments.append(current)
            current = [r["version"]]
        elif r["kind"] == "update":
            current.append(r["version"])
    segments.append(current)
    assert len(segments) == 3
    assert segments[0] == list(range(1, 41))
    # (the last update lines may die with the server: the driver can have seen a later version in an eval)
    assert segments[1] == [40] + list(range(41, 41 + len(segments[1]) - 1))
    assert segments[1][-1] <= crashed["updates"]
    assert segments[2] == [ckpt] + list(range(ckpt + 1, 129))
    assert len(segments[2]) - 1 == final["updates"] - ckpt

    # ssp:1 held in every segment: no worker started a gradient more than 1 clock ahead of the slowest
    updates = updates_of(out)
    assert max(r["clock_gap"] for r in updates) <= 1
    assert sum(r["clock_gap"] == 1 for r in updates) > 0

    # a checkpoint only resumes the setup that wrote it
    with pytest.raises(ValueError, match="workers"):
        rb.run_ray(make_cfg(tmp_path / "other", workers=3, resume=str(out)))


# ---------------------------------------------------------------- the server shard itself


def test_a_duplicate_push_is_applied_once(local_ray):
    weights = np.ones(1000, dtype=np.float32)
    shard = ray.remote(rb.ServerShard).remote(weights, "sgd", 2, 0.5)
    try:
        _, version, _ = ray.get(shard.pull.remote(0))
        grad = np.full(1000, 2.0, dtype=np.float32)
        ref = ray.put(grad)
        assert ray.get(shard.push.remote(0, 1, version, ref, 32)) == 1
        assert ray.get(shard.push.remote(0, 1, version, ref, 32)) == 1        # the retry: same answer
        assert ray.get(shard.push.remote(1, 1, version, ref, 32)) == 2        # another worker's seq 1
        assert ray.get(shard.push.remote(0, 1, version, ref, 32)) == 1        # still the version it made
        w, version, _ = ray.get(shard.weights.remote())[:3]
        assert version == 2
        np.testing.assert_allclose(w, 1.0 - 2 * 0.5 * 2.0)                  # two updates, not three
        info = ray.get(shard.info.remote())
        assert info["counters"]["pushes"] == [1, 1] and info["last_seq"] == [1, 1]
        bad = np.full(1000, np.nan, dtype=np.float32)
        with pytest.raises(PushRejected, match="NaN"):
            ray.get(shard.push.remote(0, 2, version, bad, 32))
        assert ray.get(shard.info.remote())["counters"]["refused"] == [1, 0]
        assert ray.get(shard.push.remote(0, 2, version, ref, 32)) == 3        # a refused seq may be sent again
    finally:
        ray.kill(shard)


def test_a_non_finite_gradient_is_refused_and_marks_divergence(local_ray, tmp_path):
    summary = rb.run_ray(make_cfg(tmp_path / "boom", rule="sgd", lr=1e12, epochs=1.0))
    assert summary["diverged"] is True
    assert sum(summary["refused_per_worker"]) >= 1
    assert summary["final_test_error"] == CHANCE
    assert summary["updates"] < 64


def test_cuda_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="cuda"):
        rb.run_ray(make_cfg(tmp_path / "gpu", device="cuda"))


# ---------------------------------------------------------------- the coordinator, without Ray


def run_async(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


async def settle() -> None:
    """Let every other task of this event loop run until it blocks (no timers involved)."""
    for _ in range(50):
        await asyncio.sleep(0)


def test_coordinator_ssp_waits_on_the_slowest_worker_without_polling():
    async def scenario():
        c = rb.Coordinator(2, "ssp:1", target_samples=10**6)
        now = [100.0]
        c.timer = lambda: now[0]                             # a fake clock: wait_s is exact
        gens = [(await c.worker_join(m))["generation"] for m in (0, 1)]
        assert (await c.next(0, gens[0], None, 1))["clock_gap"] == 0
        await c.applied(0)
        grant = await c.next(0, gens[0], {"applied": True}, 1)
        assert grant["go"] and grant["clock"] == 1 and grant["clock_gap"] == 1
        await c.applied(0)
        assert c.wait_s[0] == 0.0                            # nothing waited so far
        blocked = asyncio.create_task(c.next(0, gens[0], {"applied": True}, 1))   # clock 2, slowest 0
        await settle()
        assert not blocked.done()                            # blocked on the condition, not polling
        now[0] = 102.5
        await settle()
        assert not blocked.done()
        assert (await c.next(1, gens[1], None, 1))["go"]
        await c.applied(1)                                   # the slowest reaches clock 1: worker 0 may go
        grant = await asyncio.wait_for(blocked, 1)
        assert grant["go"] and grant["clock"] == 2 and grant["clock_gap"] == 1
        assert c.wait_s == [2.5, 0.0]                        # from entering next() to its grant, on the fake clock

    run_async(scenario())


def test_coordinator_stops_training_at_each_evaluation_mark_until_the_driver_has_evaluated():
    async def scenario():
        c = rb.Coordinator(2, "async", target_samples=12, num_train=4)     # 3 epochs of 4 samples
        now = [100.0]
        c.timer = lambda: now[0]                             # a fake clock: wait_s is exact
        await c.pause_for_evaluations(1.0, 1.0)              # evaluate at epochs 1 and 2 (3 is the end)
        g0, g1 = [(await c.worker_join(m))["generation"] for m in (0, 1)]
        assert (await c.next(0, g0, None, 2))["go"] and (await c.next(1, g1, None, 2))["go"]   # 4 samples
        blocked0 = asyncio.create_task(c.next(0, g0, {"applied": True}, 2))
        await settle()
        assert not blocked0.done() and c.status()["evaluation_ready"] == 0   # worker 1's gradient in flight
        blocked1 = asyncio.create_task(c.next(1, g1, {"applied": True}, 2))
        await settle()
        assert c.status()["evaluation_ready"] == 1 and c.granted_samples == 4   # quiet at the mark
        now[0] = 105.0                                       # the driver evaluates for 5 s
        assert not blocked0.done() and not blocked1.done()
        await c.evaluation_done()
        assert (await asyncio.wait_for(blocked0, 1))["go"] and (await asyncio.wait_for(blocked1, 1))["go"]
        assert c.status()["evaluation_ready"] == 0 and c.next_eval_epoch == 2.0
        assert c.wait_s == [0.0, 0.0] and c.held_s == 5.0    # time stood still is not waiting on staleness
        assert c.status()["held_s"] == [5.0, 5.0]            # ... but held each worker: the time split says so
        # the second mark (8 samples): its pause is number 2; the third mark is the end, where nobody waits
        pending = [asyncio.create_task(c.next(m, g, {"applied": True}, 2)) for m, g in ((0, g0), (1, g1))]
        await settle()
        assert c.status()["evaluation_ready"] == 2 and not any(t.done() for t in pending)
        await c.evaluation_done()
        grants = [await asyncio.wait_for(t, 1) for t in pending]
        assert all(gr["go"] for gr in grants) and c.granted_samples == 12 and c.next_eval_epoch == 3.0
        assert c.status()["evaluation_ready"] == 0

    run_async(scenario())


def test_coordinator_grants_carry_the_reference_cycle_and_how_long_the_worker_was_held():
    async def scenario():
        c = rb.Coordinator(3, "ssp:0", target_samples=10**6, reference_workers=[0, 1])
        now = [100.0]
        c.timer = lambda: now[0]
        gens = [(await c.worker_join(m))["generation"] for m in range(3)]
        first = await c.next(0, gens[0], None, 1)
        assert first["ref_cycle_s"] is None and first["wait_s"] == 0.0 and first["held_s"] == 0.0
        for m in (1, 2):
            await c.next(m, gens[m], None, 1)
        for worker, cycle in ((0, 0.5), (1, 0.3), (2, 5.0), (0, None)):    # worker 2 is slowed: not a reference
            c.observe_cycle(worker, cycle)
        await c.applied(0)
        blocked = asyncio.create_task(c.next(0, gens[0], {"applied": True}, 1))   # ssp:0: waits for 1 and 2
        await settle()
        now[0] = 101.5
        for m in (1, 2):
            await c.applied(m)
        grant = await asyncio.wait_for(blocked, 1)
        assert grant["go"] and grant["ref_cycle_s"] == pytest.approx(0.4) and grant["wait_s"] == 1.5
        for _ in range(rb.coordinator.REFERENCE_CYCLES):
            c.observe_cycle(1, 0.2)
        assert c.reference_cycle_s == pytest.approx(0.2)                  # the last REFERENCE_CYCLES only

    run_async(scenario())


def test_coordinator_grants_exactly_the_target_and_gives_back_a_dead_workers_grant():
    async def scenario():
        c = rb.Coordinator(2, "async", target_samples=3)
        g0, g1 = [(await c.worker_join(m))["generation"] for m in (0, 1)]
        assert (await c.next(0, g0, None, 2))["go"]          # 2 samples granted
        assert (await c.next(1, g1, None, 2))["go"]          # 4 >= 3: no more grants
        waiting = asyncio.create_task(c.next(0, g0, {"applied": True}, 2))
        await c.applied(0)
        await settle()
        assert not waiting.done()                            # worker 1's gradient may still reach the target
        assert await c.worker_failed(1) is True              # ... but worker 1 died before shard 0 had it
        grant = await asyncio.wait_for(waiting, 1)
        assert grant["go"]                                   # its grant went back to worker 0
        await c.applied(0)
        stop = await c.next(0, g0, {"applied": True}, 2)
        assert not stop["go"] and stop["reason"] == "target"
        assert c.applied_samples == 4 and c.applied_updates == 2
        assert await c.worker_failed(1) is False             # a second failure report changes nothing

    run_async(scenario())


def test_coordinator_counts_a_push_that_lands_after_its_worker_was_declared_dead():
    async def scenario():
        c = rb.Coordinator(2, "async", target_samples=4)
        g0, g1 = [(await c.worker_join(m))["generation"] for m in (0, 1)]
        assert (await c.next(0, g0, None, 2))["go"] and (await c.next(1, g1, None, 2))["go"]
        await c.worker_failed(1)                             # its grant goes back: counted as lost ...
        assert c.granted_samples == 2 and c.lost == [0, 1]
        await c.applied(1, 2)                                # ... until shard 0 applies the push it had sent
        assert c.granted_samples == 4 and c.lost == [0, 0] and c.applied_samples == 2
        await c.applied(0, 2)
        stop = await c.next(0, g0, {"applied": True}, 2)
        assert stop["reason"] == "target" and c.applied_updates == 2 and c.applied_samples == 4

    run_async(scenario())


def test_coordinator_marks_every_kth_async_grant_for_the_probe():
    async def scenario():
        c = rb.Coordinator(1, "async", target_samples=10**6, probe_every=2)
        g = (await c.worker_join(0))["generation"]
        flags, report = [], None
        for _ in range(4):
            flags.append((await c.next(0, g, report, 1))["probe"])
            await c.applied(0, 1)
            report = {"applied": True, "probe": {"version": len(flags)}} if flags[-1] else {"applied": True}
        await c.next(0, g, report, 1)
        assert flags == [False, True, False, True]
        status = c.status()
        assert [p["version"] for p in status["probes"]] == [2, 4] and status["probe_pushes"] == 5
        assert c.status()["probes"] == []                    # drained

    run_async(scenario())


def test_coordinator_sync_rounds_wait_for_every_live_worker():
    async def scenario():
        c = rb.Coordinator(2, "sync", target_samples=10**6, stop_after_updates=2)
        g0, g1 = [(await c.worker_join(m))["generation"] for m in (0, 1)]
        first = asyncio.create_task(c.next(0, g0, None, 1))
        await settle()
        assert not first.done()                              # the round waits for worker 1
        second = await c.next(1, g1, None, 1)
        assert (await first)["members"] == second["members"] == [0, 1]
        await c.applied(0)
        await c.applied(1)
        again = asyncio.create_task(c.next(0, g0, {"applied": True}, 1))
        await settle()
        assert not again.done() and c.applied_updates == 0  # round 1 ends when worker 1 reports too
        await c.worker_failed(1)                             # ... or dies
        assert c.applied_updates == 1
        assert (await asyncio.wait_for(again, 1))["members"] == [0]
        await c.applied(0)
        assert (await c.next(0, g0, {"applied": True}, 1))["reason"] == "stop_after_updates"

    run_async(scenario())


def test_moving_a_flat_model_keeps_parameters_and_buffers_as_views():
    """What --device cuda does, on the CPU: the views must follow the moved flat buffers."""
    from dcasgd.compute.flat import FlatModel
    from dcasgd.compute.models import build_model
    from dcasgd.compute.worker import compute_gradient

    flat = FlatModel(build_model("cnn", (1, 28, 28), 10, seed=0))
    weights, buffers = flat.params.clone(), flat.buffers.clone()
    old = flat.params.data_ptr()
    _flat_to_device(flat, torch.device("cpu"))            # copies: new flat buffers
    assert flat.params.data_ptr() != old
    for name, tensors, owner in (("params", list(flat.module.parameters()), flat.params),
                                 ("grads", [p.grad for p in flat.module.parameters()], flat.grads),
                                 ("buffers", [b for b in flat.module.buffers() if b.is_floating_point()],
                                  flat.buffers)):
        start, stop = owner.data_ptr(), owner.data_ptr() + 4 * owner.numel()
        assert all(start <= t.data_ptr() < stop for t in tensors), name
    x, y = torch.randn(8, 1, 28, 28), torch.randint(10, (8,))
    result = compute_gradient(flat, weights, buffers, x, y, key=1)
    assert result.grad.abs().sum() > 0 and not torch.equal(result.buffers, buffers)   # BatchNorm stats moved


# ---------------------------------------------------------------- the public API on Ray


def make_user_regressor():
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def mean_abs_error(output, target):
    return (output - target).abs().mean().item()


def test_a_user_regression_model_trains_on_ray_through_the_api(local_ray, tmp_path):
    import dcasgd
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 3, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.05 * torch.randn(512, 1, generator=gen)
    train, test = (x[:384], y[:384]), (x[384:], y[384:])
    result = dcasgd.train(make_user_regressor, train, eval_data=test, loss_fn=torch.nn.functional.mse_loss,
                          metric=mean_abs_error, backend="ray", workers=2, epochs=4, batch_size=16, lr=0.05,
                          progress=False)
    summary = result.summary
    assert summary["backend"] == "ray" and summary["updates"] == 4 * 384 // 16 and result.out is None
    assert summary["curve"][-1]["test_error"] < 0.5 * summary["curve"][0]["test_error"]
    with torch.no_grad():
        measured = mean_abs_error(result.model(test[0]), test[1])
    assert math.isclose(measured, summary["final_test_error"], rel_tol=1e-6)   # the weights it was measured on


def test_the_highway_example_runs_on_ray(local_ray):
    """examples/highway_fmnist.py --backend ray: the same script, real worker processes (its own Ray)."""
    import subprocess
    import sys
    script = Path(__file__).resolve().parent.parent / "examples" / "highway_fmnist.py"
    result = subprocess.run([sys.executable, str(script), "--backend", "ray", "--epochs", "0.03", "--workers", "2",
                             "--layers", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "highway network, 2 layers, 2 workers on ray: test error" in result.stdout


def test_workers_on_the_lead_node_use_shared_memory_files_that_go_away_with_the_run(local_ray, tmp_path):
    seen: set[str] = set()

    def look(run: rb.RayRun) -> None:
        seen.update(p.name for p in Path("/dev/shm").glob(f"{run.shm_prefix}-*"))

    summary = rb.run_ray(make_cfg(tmp_path / "shm", epochs=0.5), instrument=rb.Instrumentation(on_tick=look))
    assert summary["updates"] == 32 and summary["final_test_error"] < 60
    workers = {name.rsplit("-", 2)[-2] for name in seen if name.endswith(("-grad", "-weights", "-buffers"))}
    assert workers == {"w0", "w1"}                                            # one set of files per worker
    assert any(name.endswith("-step.sock") for name in seen)                  # and the run's step socket
    assert not list(Path("/dev/shm").glob("dcasgd-*"))                        # removed when the run ended
