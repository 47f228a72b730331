"""The time-optimal methods on a real local Ray: one tiny synthetic run per family.

Worker 1 sleeps after each gradient (a test hook), so worker 0's pushes move the weights while worker 1
computes: its jobs are dropped.  Only counts and outcomes are asserted, never durations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from dcasgd.backends import ray as rb  # noqa: E402
from dcasgd.config import TrainConfig  # noqa: E402

pytestmark = pytest.mark.ray


def staleness_of(out: Path) -> list[int]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["staleness"] for r in lines if r["kind"] == "update"]


# mode, which count worker 1's slow jobs land in, updates for the 32 gradients of half an epoch
CASES = [("ringmaster:1", "discarded", 32), ("ringmaster-stop:1", "cancelled", 32),
         ("msync:1", "cancelled", 32), ("rennala:2", "cancelled", 16)]


@pytest.mark.parametrize("mode, dropped, updates", CASES)
def test_each_family_runs_on_ray_and_drops_the_slow_workers_stale_jobs(local_ray, tmp_path, mode, dropped,
                                                                     updates):
    cfg = TrainConfig(backend="ray", dataset="synthetic", model="mlp", rule="sgd", consistency=mode, workers=2,
                      epochs=0.5, batch_size=32, lr=0.1, seed=0, progress=False, out=str(tmp_path / "run"))
    instrument = rb.Instrumentation(worker_hooks={1: {"compute_delay_s": 0.3}})
    summary = rb.run_ray(cfg.validate(), instrument=instrument)
    assert summary["outcome"] == "finished"
    assert summary["gradients"] == 32 and summary["updates"] == updates    # 1024 samples, dropped ones given back
    assert sum(summary[f"{dropped}_per_worker"]) >= 1                     # worker 1's jobs outlived their step
    other = "cancelled" if dropped == "discarded" else "discarded"
    assert summary[f"{other}_per_worker"] == [0, 0]
    assert max(staleness_of(tmp_path / "run")) == 0                        # R = 1, or one point per step
    assert summary["final_test_error"] < 75.0                              # (chance: 75%)
