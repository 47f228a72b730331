"""The time-optimal methods and their baselines as consistency modes: m-sync SGD, Rennala SGD (Tyurin and
Richtarik 2023) and Ringmaster ASGD with and without stops (Maranjyan, Tyurin and Richtarik 2025).

Each is checked against an independent reference: a mode that reduces to an existing one must give its
bytes, and a small cluster's event sequence is computed by hand below (not by the code under test).
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from dcasgd.backends.ray.shard import LeadServer
from dcasgd.backends.sim import run_sim
from dcasgd.config import ConfigError, TrainConfig
from dcasgd.core.consistency import ConsistencyError, parse_consistency
from dcasgd.study.compare import method_of, method_settings


def config(tmp_path, name, **kw):
    base = dict(dataset="synthetic", model="mlp", workers=4, epochs=1, batch_size=32, lr=0.1, rule="dc-asgd-a",
                consistency="async", out=str(tmp_path / name), progress=False)
    base.update(kw)
    return TrainConfig(**base).validate()


def metrics(tmp_path, name) -> bytes:
    return (tmp_path / name / "metrics.jsonl").read_bytes()


def updates(tmp_path, name) -> list[dict]:
    lines = [json.loads(line) for line in metrics(tmp_path, name).decode().splitlines()]
    return [r for r in lines if r["kind"] == "update"]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, mode, bound", [("msync:3", "msync", 3), ("rennala:6", "rennala", 6),
                                               ("ringmaster:1", "ringmaster", 1),
                                               ("ringmaster-stop:12", "ringmaster-stop", 12)])
def test_the_new_modes_parse_and_name_themselves(text, mode, bound):
    parsed = parse_consistency(text)
    assert (parsed.mode, parsed.bound, parsed.name) == (mode, bound, text)
    assert parsed.drops_jobs


@pytest.mark.parametrize("text, says", [("rennala", "rennala needs a batch size S, e.g. rennala:6"),
                                        ("rennala:0", "the rennala batch size S must be >= 1"),
                                        ("msync:-1", "the msync number of gradients m per step must be >= 1"),
                                        ("ringmaster:x", "the ringmaster delay threshold R must be an integer"),
                                        ("ringmaster-stop:", "ringmaster-stop needs a delay threshold R"),
                                        ("ringmasterstop:2", "ringmaster:R or ringmaster-stop:R")])
def test_a_bad_bound_or_name_is_a_clear_error(text, says):
    with pytest.raises(ConsistencyError, match=says.replace("(", r"\(")):
        parse_consistency(text)
    with pytest.raises(ConfigError, match=f"consistency: .*{says}"):
        TrainConfig(consistency=text).validate()


def test_on_ray_the_modes_that_drop_jobs_need_one_shard():
    with pytest.raises(ConfigError, match="one server shard"):
        TrainConfig(backend="ray", consistency="rennala:4", servers=2).validate()
    TrainConfig(backend="ray", consistency="ssp:2", servers=2).validate()          # the others need not


@pytest.mark.parametrize("method, consistency", [("rennala", "rennala:6"), ("msync", "msync:8"),
                                                 ("ringmaster", "ringmaster:6"),
                                                 ("ringmaster-stop", "ringmaster-stop:6")])
def test_compare_builds_the_methods_from_their_own_setting(method, consistency):
    settings = method_settings(method, 2, int(consistency.split(":")[1]))   # S, m or R
    assert settings == {"rule": "sgd", "consistency": consistency}
    assert method_of({**settings, "workers": 16}) == method


# ---------------------------------------------------------------- reductions to existing modes, bit for bit


@pytest.mark.parametrize("mode", ["rennala:4", "msync:4", "msync:9"])
def test_rennala_with_s_equal_n_and_msync_with_m_n_are_sync_bit_for_bit(tmp_path, mode):
    """Equal speeds, no jitter: the first 4 gradients at x^k are one from each worker, so the step is sync's."""
    sync = run_sim(config(tmp_path, "sync", consistency="sync"))
    other = run_sim(config(tmp_path, "other", consistency=mode))
    assert torch.equal(sync.weights, other.weights)
    assert metrics(tmp_path, "sync") == metrics(tmp_path, "other")     # every update, eval and staleness line
    assert other.summary["discarded_per_worker"] == [0] * 4


def test_msync_with_m_n_is_sync_bit_for_bit_with_jitter_speeds_and_a_failure(tmp_path):
    kw = dict(hetero_sigma=0.5, jitter=0.3, failures=((2, 5.0, 12.0),), rule="sgd")
    sync = run_sim(config(tmp_path, "sync", consistency="sync", **kw))
    msync = run_sim(config(tmp_path, "msync", consistency="msync:4", **kw))
    assert torch.equal(sync.weights, msync.weights)
    assert metrics(tmp_path, "sync") == metrics(tmp_path, "msync")
    assert msync.summary["cancelled_per_worker"] == [0] * 4


@pytest.mark.parametrize("mode", ["ringmaster:64", "ringmaster-stop:64"])
def test_ringmaster_with_r_above_every_delay_is_async_bit_for_bit(tmp_path, mode):
    kw = dict(hetero_sigma=0.5, jitter=0.3, momentum=0.9)
    asgd = run_sim(config(tmp_path, "async", **kw))
    ring = run_sim(config(tmp_path, "ring", consistency=mode, **kw))
    assert asgd.summary["max_staleness"] < 64
    assert torch.equal(asgd.weights, ring.weights)
    assert metrics(tmp_path, "async") == metrics(tmp_path, "ring")
    assert ring.summary["discarded_per_worker"] == ring.summary["cancelled_per_worker"] == [0] * 4


# ---------------------------------------------------------------- a hand-computed event sequence
#
# 3 workers, compute times 1, 2 and 5 simulated seconds (speeds 1, 2, 5, base_time 1, no jitter, no
# communication time); events at the same time go in the order they were scheduled.  Each expected list
# holds (time_s, worker, staleness, version) of the update lines; the derivation is in the comments.

HAND = dict(workers=3, speeds=(1.0, 2.0, 5.0), base_time=1.0, rule="sgd")


def sequence(tmp_path, name):
    return [(r["time_s"], r["worker"], r["staleness"], r["version"]) for r in updates(tmp_path, name)]


def test_ringmaster_discards_a_gradient_with_delay_r_or_more_on_arrival(tmp_path):
    # R = 2.  t=1 w0 applies (v1), restarts at v1.  t=2 w1 (taken at v0, delay 1) applies (v2), restarts at v2;
    # then w0 (v1, delay 1) applies (v3).  t=3 w0 applies (v4).  t=4 w1 (v2, delay 2) is discarded, it spent
    # 2 s, restarts at v4; w0 applies (v5).  t=5 w2 (v0, delay 5) is discarded after 5 s, restarts at v5; w0 v6.
    # t=6 w1 (v4, delay 2) discarded again (2 s), w0 v7.  t=7 w0 v8: the stop.
    result = run_sim(config(tmp_path, "ring", consistency="ringmaster:2", stop_after_updates=8, **HAND))
    assert sequence(tmp_path, "ring") == [(1.0, 0, 0, 1), (2.0, 1, 1, 2), (2.0, 0, 1, 3), (3.0, 0, 0, 4),
                                          (4.0, 0, 0, 5), (5.0, 0, 0, 6), (6.0, 0, 0, 7), (7.0, 0, 0, 8)]
    s = result.summary
    assert s["discarded_per_worker"] == [0, 2, 1] and s["cancelled_per_worker"] == [0, 0, 0]
    assert s["wasted_s_per_worker"] == [0.0, 4.0, 5.0]
    assert s["gradients"] == 8                              # a discarded job computes nothing


def test_ringmaster_with_stops_cancels_a_job_when_its_delay_reaches_r(tmp_path):
    # R = 2.  t=1 w0 v1.  t=2 w1 (delay 1) v2: w2's job (taken at v0) now has delay 2: cancelled after 2 s,
    # restarts at v2; w0 (delay 1) v3.  t=3 w0 v4: w1 and w2 (taken at v2) reach delay 2: both cancelled
    # after 1 s and restarted at v4 (w1 due at 5, w2 at 8).  t=4 w0 v5.  t=5 w1 (v4, delay 1) v6: w2 (v4)
    # reaches 2, cancelled after 2 s, restarts at v6; w0 (v5, delay 1) v7.  t=6 w0 v8: w1 and w2 (both at
    # v6) reach 2, cancelled after 1 s each.
    result = run_sim(config(tmp_path, "stop", consistency="ringmaster-stop:2", stop_after_updates=8, **HAND))
    assert sequence(tmp_path, "stop") == [(1.0, 0, 0, 1), (2.0, 1, 1, 2), (2.0, 0, 1, 3), (3.0, 0, 0, 4),
                                          (4.0, 0, 0, 5), (5.0, 1, 1, 6), (5.0, 0, 1, 7), (6.0, 0, 0, 8)]
    s = result.summary
    assert s["cancelled_per_worker"] == [0, 2, 4] and s["discarded_per_worker"] == [0, 0, 0]
    assert s["wasted_s_per_worker"] == [0.0, 2.0, 6.0]
    assert s["max_staleness"] == 1                           # no applied delay exceeds R - 1


def test_rennala_averages_the_first_s_gradients_at_one_point_and_restarts_everyone(tmp_path):
    # S = 3.  t=1 w0 gives 1 of 3 at v0 and computes again at v0.  t=2 w1 gives 2 of 3 and starts again at v0;
    # w0 gives 3 of 3: the step (v1) cancels w1's new job (0 s spent) and w2's (2 s), and restarts all at v1.
    # t=3 w0 1 of 3.  t=4 w1 2 of 3, restarts; w0 3 of 3: step v2, w1 cancelled (0 s), w2 cancelled (2 s).
    result = run_sim(config(tmp_path, "ren", consistency="rennala:3", stop_after_updates=2, **HAND))
    assert sequence(tmp_path, "ren") == [(1.0, 0, 0, 1), (2.0, 1, 0, 1), (2.0, 0, 0, 1),
                                         (3.0, 0, 0, 2), (4.0, 1, 0, 2), (4.0, 0, 0, 2)]
    s = result.summary
    assert s["cancelled_per_worker"] == [0, 2, 2] and s["wasted_s_per_worker"] == [0.0, 0.0, 4.0]
    assert s["updates"] == 2 and s["pushes_per_worker"] == [4, 2, 0]


def test_msync_takes_one_gradient_from_each_of_the_first_m_workers(tmp_path):
    # m = 2.  t=1 w0 is in and waits; t=2 w1 is in: the step (v1) cancels w2 after 2 s and every worker starts
    # again at v1.  t=3 w0 waits; t=4 w1: step v2, w2 cancelled after 2 s.  w0 waited 1 s per step.
    result = run_sim(config(tmp_path, "msync", consistency="msync:2", stop_after_updates=2, **HAND))
    assert sequence(tmp_path, "msync") == [(1.0, 0, 0, 1), (2.0, 1, 0, 1), (3.0, 0, 0, 2), (4.0, 1, 0, 2)]
    s = result.summary
    assert s["cancelled_per_worker"] == [0, 0, 2] and s["wasted_s_per_worker"] == [0.0, 0.0, 4.0]
    assert s["staleness"]["wait_s_per_worker"] == [2.0, 0.0, 0.0]


def test_a_rennala_run_resumed_from_a_checkpoint_is_bit_identical(tmp_path):
    kw = dict(consistency="rennala:3", hetero_sigma=0.5, jitter=0.3, epochs=1, checkpoint_every=5)
    whole = run_sim(config(tmp_path, "whole", **kw))
    run_sim(config(tmp_path, "part", stop_after_updates=10, **kw))
    resumed = run_sim(config(tmp_path, "part", resume=str(tmp_path / "part"), **kw))
    assert torch.equal(whole.weights, resumed.weights)
    assert metrics(tmp_path, "whole") == metrics(tmp_path, "part")
    for key in ("cancelled_per_worker", "wasted_s_per_worker"):
        assert whole.summary[key] == resumed.summary[key]


# ---------------------------------------------------------------- the Ray lead server, without Ray


def lead(consistency: str, workers: int = 2) -> LeadServer:
    shard = {"weights": np.zeros(4, dtype=np.float32), "rule": "sgd", "num_workers": workers, "lr": 1.0,
             "consistency": consistency, "log_updates": True, "num_train": 100}
    return LeadServer(shard, {"num_workers": workers, "consistency": consistency, "target_samples": 10**6})


def push(seq: int, base: int, value: float) -> dict:
    return {"seq": seq, "base_version": base, "grad": np.full(4, value, dtype=np.float32), "num_samples": 10,
            "meta": {"loss": 1.0}, "buffers": None, "members": None}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_the_lead_discards_a_push_with_delay_r_and_the_worker_pulls_the_current_weights():
    async def scenario():
        server = lead("ringmaster:2")
        g0, g1 = [(await server.worker_join(m))["generation"] for m in (0, 1)]
        await server.step(1, g1, None, 10)                          # worker 1 takes v0
        await server.step(0, g0, None, 10)
        await server.step(0, g0, push(1, 0, 1.0), 10)              # v1
        await server.step(0, g0, push(2, 1, 1.0), 10)              # v2
        reply = await server.step(1, g1, push(1, 0, 5.0), 10)      # delay 2: discarded
        assert reply["report"] == {"loss": 1.0, "applied": False, "discarded": True}
        assert reply["grant"]["go"] and reply["pulled"][1] == 2    # it pulls v2 and goes on
        assert server.shard.core.weights.tolist() == [-2.0] * 4     # the 5s never landed
        assert server.coordinator.status()["discarded"] == [0, 1]
        c = server.coordinator                                     # 2 applied + 2 in flight; the dropped one's
        assert (c.applied_samples, c.granted_samples, c.refused) == (20, 40, [0, 0])   # grant went back
    run(scenario())


def test_the_lead_applies_the_mean_of_the_first_s_gradients_at_one_version():
    async def scenario():
        server = lead("rennala:3")
        g0, g1 = [(await server.worker_join(m))["generation"] for m in (0, 1)]
        await server.step(0, g0, None, 10)
        await server.step(1, g1, None, 10)
        await server.step(0, g0, push(1, 0, 1.0), 10)             # 1 of 3 at v0
        reply = await server.step(0, g0, push(2, 0, 2.0), 10)     # 2 of 3, the same worker again
        assert reply["grant"]["go"] and reply["pulled"][1] == 0 and server.shard.core.version == 0
        await server.step(1, g1, push(1, 0, 6.0), 10)             # 3 of 3: the mean (1 + 2 + 6) / 3 = 3
        assert server.shard.core.version == 1 and server.shard.core.weights.tolist() == [-3.0] * 4
        assert server.coordinator.applied_updates == 1
        late = await server.step(0, g0, push(3, 0, 9.0), 10)      # taken at v0, its step is over
        assert late["report"]["cancelled"] and server.coordinator.status()["cancelled"] == [1, 0]
        assert [r["version"] for r in server.drain()] == [1, 1, 1]
    run(scenario())


def test_an_msync_worker_waits_for_the_step_its_gradient_is_in():
    async def scenario():
        server = lead("msync:2", workers=3)
        gens = [(await server.worker_join(m))["generation"] for m in range(3)]
        for m in range(3):
            await server.step(m, gens[m], None, 10)
        waiting = asyncio.create_task(server.step(0, gens[0], push(1, 0, 1.0), 10))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()                                  # one gradient per worker per step
        await server.step(1, gens[1], push(1, 0, 3.0), 10)         # the second: the step applies the mean
        assert (await asyncio.wait_for(waiting, 1))["pulled"][1] == 1
        assert server.shard.core.weights.tolist() == [-2.0] * 4
        late = await server.step(2, gens[2], push(1, 0, 7.0), 10)  # the third was not waited for
        assert late["report"]["cancelled"] and late["grant"]["go"] and late["pulled"][1] == 1
    run(scenario())
