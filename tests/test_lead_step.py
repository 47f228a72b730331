"""LeadServer.step, the one call per gradient of a one-shard Ray run, driven without Ray (plain asyncio)."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import torch

from dcasgd.backends.ray import shm
from dcasgd.backends.ray.shard import LeadServer


def lead(rule: str = "sgd", workers: int = 1, target: int = 10**6, consistency: str = "async",
         prefix: str | None = None) -> LeadServer:
    shard = {"weights": np.arange(6, dtype=np.float32), "rule": rule, "num_workers": workers, "lr": 0.5,
             "consistency": consistency, "log_updates": True, "num_train": 100}
    coordinator = {"num_workers": workers, "consistency": consistency, "target_samples": target}
    return LeadServer(shard, coordinator, prefix)


def push(seq: int, base: int, grad) -> dict:
    return {"seq": seq, "base_version": base, "grad": grad, "num_samples": 10, "meta": {"loss": 1.5},
            "buffers": None, "members": None}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_one_call_pushes_reports_grants_and_pulls():
    async def scenario():
        server = lead()
        generation = (await server.worker_join(0))["generation"]
        first = await server.step(0, generation, None, 10)            # begin: a grant and the weights
        assert first["grant"]["go"] and first["report"] == {}
        weights, version, _ = first["pulled"]
        assert version == 0 and weights.tolist() == list(range(6))
        grad = np.ones(6, dtype=np.float32)
        second = await server.step(0, generation, push(1, version, grad), 10)
        assert second["report"] == {"loss": 1.5, "version": 1, "applied": True}
        weights, version, _ = second["pulled"]
        assert version == 1 and weights.tolist() == [x - 0.5 for x in range(6)]   # w - lr * g
        again = await server.step(0, generation, push(1, 0, grad), 10)     # the same seq: applied once
        assert again["report"]["version"] == 1 and server.shard.core.version == 1
        assert [r["seq"] for r in server.drain()] == [1]
    run(scenario())


def test_a_refused_or_nonfinite_push_is_reported_as_such():
    async def scenario():
        server = lead()
        generation = (await server.worker_join(0))["generation"]
        await server.step(0, generation, None, 10)
        bad = np.full(6, math.nan, dtype=np.float32)
        reply = await server.step(0, generation, push(1, 0, bad), 10)
        assert reply["report"]["applied"] is False and reply["report"]["nonfinite"] is True
        assert server.coordinator.diverged and not reply["grant"]["go"]
        assert server.shard.core.refused.tolist() == [1] and server.shard.core.version == 0
    run(scenario())


def test_the_last_grant_says_stop_and_pulls_nothing():
    async def scenario():
        server = lead(target=10)
        generation = (await server.worker_join(0))["generation"]
        await server.step(0, generation, None, 10)
        reply = await server.step(0, generation, push(1, 0, np.zeros(6, dtype=np.float32)), 10)
        assert reply["grant"] == {**reply["grant"], "go": False, "reason": "target"} and reply["pulled"] is None
    run(scenario())


def test_shared_memory_files_carry_the_gradient_and_the_weights(tmp_path, monkeypatch):
    """A worker on the lead's node: the gradient is read from its file, the weights written into its other."""
    monkeypatch.setattr(shm, "SHM_DIR", tmp_path)
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    async def scenario():
        server = lead(prefix="test-run")
        server_node = None                                          # Ray off: the lead's node reads as None
        files = await server.attach(0, server_node)
        assert files is not None and sorted(files) == ["buffers", "grad", "socket", "weights"]
        grad_file, weight_file = shm.mapped(files["grad"], 6), shm.mapped(files["weights"], 6)
        generation = (await server.worker_join(0))["generation"]
        first = await server.step(0, generation, None, 10)
        assert first["pulled"][0] is None and weight_file.tolist() == list(range(6))   # written in place
        grad_file.copy_(torch.full((6,), 2.0))                      # backward writes here
        second = await server.step(0, generation, push(1, 0, None), 10)
        assert second["report"]["applied"] and weight_file.tolist() == [x - 1.0 for x in range(6)]
        assert await server.attach(0, server_node) == files         # a restarted worker gets the same files
        channel = await asyncio.to_thread(shm.Channel, files["socket"], 5.0)   # the step over the socket
        grad_file.copy_(torch.full((6,), 1.0))
        await asyncio.to_thread(channel.send, {"step": [0, generation, push(2, 1, None), 10]})
        reply = await asyncio.to_thread(channel.receive)
        assert reply["report"] == {"loss": 1.5, "version": 2, "applied": True}
        assert reply["pulled"] == [None, 2, None] and weight_file.tolist() == [x - 1.5 for x in range(6)]
        channel.close()
        server._channel.close()
    run(scenario())
    shm.remove("test-run")
    assert not list(tmp_path.iterdir())
