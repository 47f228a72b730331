"""Soak test of the Ray backend (``make soak``): a long async run must not leak or slow down.

Four workers and two server shards train the synthetic task for
``DCASGD_SOAK_SECONDS`` seconds of wall clock (default 600; the run is given
far more epochs than it can finish and stopped by a time limit).  Every
``SAMPLE_S`` seconds (30, or a twelfth of a shorter run) the driver samples
the resident memory of every server actor and the update rate since the last
sample.  After a warm-up (the first 2 minutes, or a fifth of a shorter run):

- server RSS grows by less than 5% (last sample vs the first one after warm-up);
- updates/s stays steady: the median of the last third of the samples is within
  30% of the median of the middle third.

The figures go to ``benchmarks/results/soak.md`` (machine, date, commit,
command) before the assertions, so a failing soak still leaves its numbers.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from dcasgd.backends import ray as rb  # noqa: E402
from dcasgd.config import TrainConfig  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from _report import write_section  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]

DURATION_S = float(os.environ.get("DCASGD_SOAK_SECONDS", "600"))
SAMPLE_S = min(30.0, DURATION_S / 12)
WARMUP_S = min(120.0, DURATION_S / 5)
RSS_GROWTH_MAX = 0.05
RATE_DRIFT_MAX = 0.30


def test_a_long_async_run_keeps_server_memory_and_update_rate_steady(local_ray, tmp_path):
    samples: list[dict] = []          # t (s since training started), updates, server RSS per actor (bytes)
    last = [-float("inf")]

    def sample(run: rb.RayRun) -> None:
        now = time.perf_counter() - run.loop_start
        if now - last[0] < SAMPLE_S:
            return
        last[0] = now
        rss = ray.get([s.rss.remote() for s in run.actors.shards], timeout=60)
        samples.append({"t": now, "updates": run.version, "rss": rss})

    cfg = TrainConfig(backend="ray", dataset="synthetic", model="mlp", rule="dc-asgd-a", consistency="async",
                      workers=4, servers=2, epochs=1e6, eval_every=25.0, lr=0.05, lr_schedule="constant",
                      batch_size=32, seed=0, progress=False, out=str(tmp_path / "soak"))
    started = time.perf_counter()
    summary = rb.run_ray(cfg, instrument=rb.Instrumentation(on_tick=sample, time_limit_s=DURATION_S))
    wall = time.perf_counter() - started

    rates = [(b["updates"] - a["updates"]) / (b["t"] - a["t"]) for a, b in zip(samples, samples[1:])]
    rate_t = [b["t"] for b in samples[1:]]
    steady = [r for r, t in zip(rates, rate_t) if t > WARMUP_S]
    after = [s for s in samples if s["t"] >= WARMUP_S]
    base, end = (sum(after[0]["rss"]), sum(after[-1]["rss"])) if after else (0, 0)
    growth = end / base - 1 if base else float("nan")
    third = len(steady) // 3
    middle = statistics.median(steady[third:2 * third]) if third else float("nan")
    final = statistics.median(steady[2 * third:]) if third else float("nan")
    drift = abs(final / middle - 1) if third and middle else float("nan")

    rows = ["| t (s) | updates | updates/s since last | server RSS (MiB, per shard) |", "|---:|---:|---:|---|"]
    for i, s in enumerate(samples):
        rate = f"{rates[i - 1]:.1f}" if i else ""
        rows.append(f"| {s['t']:.0f} | {s['updates']} | {rate} | "
                    f"{', '.join(f'{r / 2**20:.1f}' for r in s['rss'])} |")
    verdict_rss = "met" if growth < RSS_GROWTH_MAX else "NOT met"
    verdict_rate = "met" if drift <= RATE_DRIFT_MAX else "NOT met"
    body = f"""Ray backend, async, dc-asgd-a, 4 workers, 2 server shards, synthetic task (MLP), batch 32, local Ray
(2 CPUs); stopped by a {DURATION_S:.0f} s time limit (`DCASGD_SOAK_SECONDS`); wall time {wall:.0f} s including
start-up; {summary['updates']} updates, {summary['updates_per_s']:.1f} updates/s overall; final test error
{summary['final_test_error']:.2f}%; stop reason `{summary['stop_reason']}`. Samples every {SAMPLE_S:.0f} s;
warm-up {WARMUP_S:.0f} s. 1-min load average at the end {os.getloadavg()[0]:.1f} (the soak's own workers, shards and driver on {os.cpu_count()} cores, plus any other job).
{"" if DURATION_S >= 600 else f"**A {DURATION_S:.0f} s mechanics check, not the 10-minute soak** (`make soak`)."}

- server RSS growth after warm-up: **{growth * 100:+.2f}%** (target < {RSS_GROWTH_MAX * 100:.0f}%): {verdict_rss}
- updates/s, median of the last third vs the middle third of the post-warm-up samples: {final:.1f} vs
  {middle:.1f} (**{drift * 100:.1f}%** apart, target <= {RATE_DRIFT_MAX * 100:.0f}%): {verdict_rate}

{chr(10).join(rows)}
"""
    command = f"DCASGD_SOAK_SECONDS={DURATION_S:g} make soak"
    write_section("soak", f"Ray soak ({dt.date.today().isoformat()})", body, [], command=command)

    assert summary["stop_reason"] == "time_limit" and not summary["diverged"]
    assert len(steady) >= 3 and len(after) >= 2, f"too few samples after warm-up: {samples}"
    assert growth < RSS_GROWTH_MAX, f"server RSS grew {growth * 100:.1f}% after warm-up: {samples}"
    assert drift <= RATE_DRIFT_MAX, f"updates/s drifted: middle third {middle:.1f}, last third {final:.1f}"
