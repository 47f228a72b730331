"""The simulated cluster: determinism, schedules, consistency modes, stragglers, failures, replay."""

import json
from collections import defaultdict

import numpy as np
import pytest
import torch

from dcasgd.config import TrainConfig
from dcasgd.compute.data import load_dataset
from dcasgd.compute.models import build_model
from dcasgd.backends.sim import TraceError, load_trace, run_sim
from dcasgd.engine.speeds import worker_speeds
from dcasgd.compute.worker import BatchStream


def config(tmp_path, name="run", **kw):
    base = dict(dataset="synthetic", model="mlp", workers=4, epochs=2, batch_size=32, lr=0.1,
                rule="dc-asgd-a", consistency="async", lr_schedule="constant", out=str(tmp_path / name),
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def updates(out):
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r["kind"] == "update"]


def test_same_seed_same_bits_different_seed_different(tmp_path):
    kw = dict(jitter=0.3, hetero_sigma=0.5)
    a = run_sim(config(tmp_path, "a", seed=3, **kw))
    b = run_sim(config(tmp_path, "b", seed=3, **kw))
    c = run_sim(config(tmp_path, "c", seed=4, **kw))
    assert torch.equal(a.weights, b.weights)
    assert (tmp_path / "a/metrics.jsonl").read_bytes() == (tmp_path / "b/metrics.jsonl").read_bytes()
    assert not torch.equal(a.weights, c.weights)
    assert (tmp_path / "a/metrics.jsonl").read_bytes() != (tmp_path / "c/metrics.jsonl").read_bytes()


def test_the_summary_records_the_torch_threads_the_bits_depend_on(tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_sim(config(tmp_path, "one", epochs=0.5))
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "one/summary.json").read_text())["torch_threads"] == 1


@pytest.mark.parametrize("workers", [2, 4, 7])
def test_equal_workers_run_round_robin_with_staleness_m_minus_1(tmp_path, workers):
    run_sim(config(tmp_path, workers=workers, rule="sgd"))
    records = updates(tmp_path / "run")
    warm_up = records[:workers]
    assert [r["staleness"] for r in warm_up] == list(range(workers))
    assert all(r["staleness"] == workers - 1 for r in records[workers:])
    assert [r["worker"] for r in records[:3 * workers]] == list(range(workers)) * 3


def test_sync_equals_sequential_sgd_with_m_times_the_batch(tmp_path):
    """M workers with batch b in sync == one SGD step on the union of their M batches (mean loss)."""
    workers, b, rounds, lr = 4, 16, 6, 0.2
    result = run_sim(config(tmp_path, workers=workers, batch_size=b, consistency="sync", rule="sgd", lr=lr,
                            stop_after_updates=rounds))
    data = load_dataset("synthetic", seed=0)
    model = build_model("mlp", data.input_shape, data.num_classes, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    streams = [BatchStream(len(data.train_y), m, workers, b, seed=0) for m in range(workers)]
    for _ in range(rounds):
        batch = torch.cat([s.next() for s in streams])
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.train_x[batch]), data.train_y[batch]).backward()
        opt.step()
    expected = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(result.weights, expected, rtol=1e-5, atol=1e-6)
    assert result.summary["updates"] == rounds
    assert result.summary["pushes_per_worker"] == [rounds] * workers


@pytest.mark.parametrize("rule", ["dc-asgd-c", "dc-asgd-a"])
def test_sync_with_dc_rule_behaves_as_sgd(tmp_path, rule):
    sgd = run_sim(config(tmp_path, "sgd", consistency="sync", rule="sgd", stop_after_updates=5))
    dc = run_sim(config(tmp_path, "dc", consistency="sync", rule=rule, stop_after_updates=5))
    assert torch.equal(sgd.weights, dc.weights)


def test_ssp0_is_a_barrier_in_time(tmp_path):
    run_sim(config(tmp_path, workers=4, consistency="ssp:0", jitter=0.5, epochs=2))
    by_clock = defaultdict(list)
    for r in updates(tmp_path / "run"):
        assert r["clock_gap"] == 0
        by_clock[r["clock"]].append(r["time_s"])
    clocks = sorted(by_clock)
    assert len(clocks) > 5
    for k in clocks[1:]:
        assert len(by_clock[k - 1]) == 4
        assert min(by_clock[k]) > max(by_clock[k - 1])      # round k starts after round k-1 ended


@pytest.mark.parametrize("bound", [1, 3])
def test_ssp_bound_holds_over_a_long_run_with_stragglers(tmp_path, bound):
    result = run_sim(config(tmp_path, workers=6, consistency=f"ssp:{bound}", jitter=0.8, epochs=6,
                            batch_size=16, stragglers={1: 3.0, 4: 2.0}, seed=11))
    gaps = [r["clock_gap"] for r in updates(tmp_path / "run")]
    assert len(gaps) > 700
    assert max(gaps) == bound                               # reached, never exceeded
    waits = result.summary["staleness"]["wait_s_per_worker"]
    assert sum(waits) > 0 and waits[1] < max(waits)         # fast workers waited, the straggler barely


def test_async_hides_a_straggler_and_sync_does_not(tmp_path):
    def sim_time(name, **kw):
        return run_sim(config(tmp_path, name, workers=4, rule="sgd", epochs=3, **kw)).summary["sim_time_s"]

    async_base, async_slow = sim_time("a0"), sim_time("a1", stragglers={3: 4.0})
    sync_base, sync_slow = sim_time("s0", consistency="sync"), sim_time("s1", consistency="sync", stragglers={3: 4.0})
    assert async_slow <= 1.3 * async_base
    assert sync_slow >= 3.0 * sync_base


def test_worker_speeds_are_the_given_or_seeded_lognormal_factors_times_the_stragglers(tmp_path):
    assert worker_speeds(config(tmp_path)) == [1.0] * 4
    assert worker_speeds(config(tmp_path, speeds=(1.0, 2.0, 0.5, 1.5), stragglers={2: 4.0})) == [1.0, 2.0, 2.0, 1.5]
    z = np.random.default_rng(7).standard_normal(4)
    expected = [float(np.exp(0.5 * v)) for v in z]
    expected[3] *= 3.0
    assert worker_speeds(config(tmp_path, seed=7, hetero_sigma=0.5, stragglers={3: 3.0})) == expected
    # the simulator reports the factors it used
    summary = run_sim(config(tmp_path, seed=7, hetero_sigma=0.5, stragglers={3: 3.0}, epochs=0.1)).summary
    assert summary["speeds"] == expected


def test_workers_compute_at_exactly_the_weights_they_pulled(tmp_path):
    seen = []

    class Spy:
        def maybe_record(self, sim, w, result, batch):
            backup = sim.server.backups[w.index]
            seen.append((torch.equal(w.weights, backup), w.base_version <= sim.server.version,
                         int(sim.server.backup_version[w.index]) == w.base_version))

    from dcasgd.engine.context import prepare_run
    from dcasgd.backends.sim import Simulator
    Simulator(prepare_run(config(tmp_path, jitter=0.5, rule="dc-asgd-c")), probe=Spy()).run()
    assert seen and all(all(flags) for flags in seen)


def test_failure_and_rejoin(tmp_path):
    result = run_sim(config(tmp_path, workers=3, rule="sgd", epochs=3, failures=((1, 5.0, 20.0),)))
    events = result.summary["worker_events"]
    assert [(e["event"], e["worker"], e["time_s"]) for e in events] == [
        ("worker_failed", 1, 5.0), ("worker_rejoined", 1, 20.0)]
    pushes = result.summary["pushes_per_worker"]
    assert pushes[1] < pushes[0] - 10
    times = [r["time_s"] for r in updates(tmp_path / "run") if r["worker"] == 1]
    assert not any(5.0 < t <= 20.0 for t in times)          # nothing pushed while dead


def test_sync_round_drops_a_dead_worker(tmp_path):
    result = run_sim(config(tmp_path, workers=3, consistency="sync", rule="sgd", epochs=2,
                            failures=((2, 3.5, None),)))
    assert result.summary["pushes_per_worker"][2] == 3
    assert result.summary["epochs_done"] >= 2


def test_replay_trace_drives_the_schedule(tmp_path):
    trace = tmp_path / "trace.jsonl"
    lines = [{"worker": 0, "duration_s": 1.0}, {"worker": 1, "duration_s": 3.0}, {"worker": 1, "duration_s": 1.0},
             {"note": "ignored", "worker": 5, "duration_s": 2.0}]
    trace.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    run_sim(config(tmp_path, workers=2, rule="sgd", epochs=1, replay=str(trace)))
    records = updates(tmp_path / "run")
    w1 = [r["time_s"] for r in records if r["worker"] == 1]
    assert w1[:4] == [3.0, 4.0, 7.0, 8.0]                   # 3, 1, 3, 1 cycling
    w0 = [r["time_s"] for r in records if r["worker"] == 0]
    assert w0[:3] == [1.0, 2.0, 3.0]
    assert load_trace(trace, 2) == [[1.0], [3.0, 1.0]]
    with pytest.raises(TraceError, match="no durations for worker"):
        load_trace(trace, 3)
    trace.write_text("{not json\n")
    with pytest.raises(TraceError, match="line 1"):
        load_trace(trace, 1)


def test_divergence_is_reported_not_raised(tmp_path):
    result = run_sim(config(tmp_path, rule="sgd", lr=1e6, epochs=1))
    assert result.summary["diverged"] is True
    assert result.summary["final_test_error"] == pytest.approx(75.0)   # chance for 4 classes


def test_the_last_progress_line_shows_the_train_loss_of_the_window_the_final_evaluation_closed(tmp_path, capsys):
    run_sim(config(tmp_path, "progress", epochs=1, progress=True))
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch")]
    evals = [json.loads(line) for line in (tmp_path / "progress/metrics.jsonl").read_text().splitlines()]
    last_train_loss = [r for r in evals if r["kind"] == "eval"][-1]["train_loss"]
    assert lines and "nan" not in lines[-1]
    assert f"loss {last_train_loss:.4f}" in lines[-1]
