"""The timing model and its traces: record and replay, the older trace format, empirical draws, fitting,
per-gradient cycle bookkeeping and the pacing of an emulated slow worker.  No Ray here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from dcasgd.backends.sim import run_sim
from dcasgd.cli import main as cli_main
from dcasgd.config import ConfigError, TrainConfig
from dcasgd.engine.fit import fit_run
from dcasgd.engine.speeds import SlowdownPacer, achieved_slowdowns
from dcasgd.engine.timing import CYCLE_PARTS, CycleClock, Timing, quantile_draw, read_trace
from dcasgd.presets import load_config_file


def config(tmp_path: Path, name: str = "run", **kw) -> TrainConfig:
    base = dict(dataset="synthetic", model="mlp", workers=4, epochs=2, batch_size=32, lr=0.1, rule="dc-asgd-a",
                consistency="async", lr_schedule="constant", out=str(tmp_path / name), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pushes(out: Path) -> list[tuple[int, int, float]]:
    """(worker, staleness, time_s) of every update line, in the order the server applied them."""
    return [(r["worker"], r["staleness"], r["time_s"]) for r in read_jsonl(out / "metrics.jsonl")
            if r["kind"] == "update"]


# ---------------------------------------------------------------- record and replay


@pytest.mark.parametrize("consistency, extra", [
    ("ssp:1", dict(jitter=0.4, hetero_sigma=0.5, comm_time=0.1)),
    ("async", dict(jitter=0.3, stragglers={2: 3.0}, failures=((1, 4.0, 9.0),))),
])
def test_a_replay_of_a_simulated_trace_reproduces_its_push_order_exactly(tmp_path, consistency, extra):
    recorded = config(tmp_path, "recorded", consistency=consistency, epochs=3, **extra)
    run_sim(recorded)
    trace = tmp_path / "recorded" / "trace.jsonl"
    lines = read_jsonl(trace)
    applied = [r for r in lines if r["version"] is not None]
    assert len(applied) == len(pushes(tmp_path / "recorded"))        # one line per applied gradient ...
    for r in lines:                                                    # ... each with its whole cycle
        assert set(CYCLE_PARTS) <= set(r) and r["duration_s"] == r["compute_s"]
        assert r["cycle_s"] == r["pull_s"] + r["compute_s"] + r["push_s"]
    # the replay takes the timing from the trace alone: none of the model's settings
    replayed = config(tmp_path, "replayed", consistency=consistency, epochs=3,
                      failures=extra.get("failures", ()), replay=str(trace))
    run_sim(replayed)
    original, replay = pushes(tmp_path / "recorded"), pushes(tmp_path / "replayed")
    assert len(original) > 100
    assert replay == original                          # same workers, staleness and times, push by push


def test_an_older_trace_of_compute_times_loads_with_one_warning(tmp_path, capsys):
    trace = tmp_path / "old.jsonl"
    trace.write_text("\n".join(json.dumps({"worker": m % 2, "seq": 1 + m // 2, "duration_s": 1.0 + m % 2})
                               for m in range(6)) + "\n")
    records, whole = read_trace(trace, 2)
    assert not whole and [[r["duration_s"] for r in rs] for rs in records] == [[1.0] * 3, [2.0] * 3]
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 1 and "warning" in warnings[0] and "compute times only" in warnings[0]
    run_sim(config(tmp_path, workers=2, rule="sgd", epochs=0.5, comm_time=0.25, replay=str(trace)))
    times = [t for w, _, t in pushes(tmp_path / "run") if w == 1]
    assert times[:2] == [2.5, 5.0]                     # comm + duration + comm, as the older replay did


# ---------------------------------------------------------------- the model's draws


def test_the_default_model_draws_what_it_always_drew():
    cfg = TrainConfig(workers=3, seed=7, hetero_sigma=0.5, jitter=0.2, comm_time=0.1, base_time=2.0)
    timing = Timing(cfg)
    rng = np.random.default_rng(7)
    speeds = np.exp(0.5 * rng.standard_normal(3))
    for k in range(12):
        m = k % 3
        expected = 0.1 + 2.0 * float(speeds[m]) * math.exp(0.2 * rng.standard_normal()) + 0.1
        assert timing.cycle(m)["cycle_s"] == expected      # the same floats, so the same event order


def test_per_worker_jitters_and_empirical_tables_are_drawn_from_the_seed():
    cfg = TrainConfig(workers=2, seed=3, timing="empirical", base_time=1.0,
                      timing_quantiles=((1.0, 1.0), (0.5, 1.0, 4.0)))
    a, b = Timing(cfg), Timing(cfg)
    draws = [a.compute_time(1) for _ in range(4000)]
    assert draws == [b.compute_time(1) for _ in range(4000)]
    assert a.compute_time(0) == 1.0                         # a degenerate table: always its value
    # inverse-CDF: P(draw <= Q(p)) = p at the table's probabilities 0, 1/2, 1
    assert np.mean(np.array(draws) <= 1.0) == pytest.approx(0.5, abs=0.03)
    assert min(draws) >= 0.5 and max(draws) <= 4.0
    assert quantile_draw((0.5, 1.0, 4.0), 0.75) == pytest.approx(2.5)
    per_worker = Timing(TrainConfig(workers=2, seed=3, jitters=(0.0, 0.5)))
    assert {per_worker.compute_time(0) for _ in range(5)} == {1.0}
    logs = np.log([per_worker.compute_time(1) for _ in range(4000)])
    assert logs.std() == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("settings, message", [
    (dict(jitters=(0.1,)), "jitters: 1 values given for 2 workers"),
    (dict(jitters=(0.1, 0.2), jitter=0.1), "jitter and jitters both given"),
    (dict(timing="empirical"), "needs timing_quantiles"),
    (dict(timing="empirical", timing_quantiles=((1.0, 2.0), (2.0, 1.0))), "worker 1's table"),
    (dict(timing_quantiles=((1.0, 2.0), (1.0, 2.0))), "only with timing 'empirical'"),
    (dict(timing="lognormal"), "timing: unknown value"),
])
def test_timing_settings_are_checked(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(workers=2, **settings).validate()


# ---------------------------------------------------------------- fit


def synthetic_trace(path: Path, speeds: list[float], sigmas: list[float], comm: float, n: int, seed: int) -> None:
    """A trace of whole cycles: 2 comm + 0.01 s * speed * exp(sigma z), in the Ray backend's format."""
    rng = np.random.default_rng(seed)
    lines = []
    for k in range(n):
        for m, (speed, sigma) in enumerate(zip(speeds, sigmas)):
            compute = 0.01 * speed * math.exp(sigma * rng.standard_normal())
            lines.append({"worker": m, "seq": k + 1, "duration_s": compute, "compute_s": compute, "pull_s": comm,
                          "push_s": comm, "slowdown_s": 0.0, "other_s": 0.0, "wait_s": 0.0, "held_s": 0.0,
                          "cycle_s": comm + compute + comm})
    path.write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_fit_recovers_the_parameters_of_a_trace_drawn_from_a_known_model(tmp_path):
    speeds, sigmas, comm, n = [1.0, 1.5, 4.0], [0.2, 0.4, 0.3], 0.002, 3000
    run = tmp_path / "run"
    run.mkdir()
    synthetic_trace(run / "trace.jsonl", speeds, sigmas, comm, n, seed=11)
    lognormal = fit_run(run, "lognormal").settings
    assert lognormal["comm_time"] == pytest.approx(comm)
    assert lognormal["timing"] == "model" and lognormal["workers"] == 3
    scale = 0.01 * np.array(speeds) / lognormal["base_time"]
    # sampling error: the mean of log x has sd sigma / sqrt(n); its sd, sigma / sqrt(2 n); allow 4 of each
    for m in range(3):
        assert math.log(lognormal["speeds"][m]) == pytest.approx(math.log(scale[m] / scale[0]),
                                                                 abs=4 * (sigmas[m] + sigmas[0]) / math.sqrt(n))
        assert lognormal["jitters"][m] == pytest.approx(sigmas[m], abs=4 * sigmas[m] / math.sqrt(2 * n))
    fit = fit_run(run, "empirical", quantiles=11)
    empirical = fit.settings
    assert empirical["timing"] == "empirical" and empirical["comm_time"] == pytest.approx(comm)
    z = np.array([-1.2816, -0.8416, -0.5244, -0.2533, 0.0, 0.2533, 0.5244, 0.8416, 1.2816])   # p = 0.1 .. 0.9
    for m in range(3):
        table = np.array(empirical["timing_quantiles"][m]) * empirical["speeds"][m] * empirical["base_time"]
        true = 0.01 * speeds[m] * np.exp(sigmas[m] * z)
        # a sample quantile's sd is about sigma * x_p * sqrt(p (1 - p) / n) / phi(z_p) < 2.2 sigma x_p / sqrt(n)
        assert table[1:-1] == pytest.approx(true, rel=4 * 2.2 * sigmas[m] / math.sqrt(n))
    for check in fit.checks:                                    # the fitted model draws the measured cycles
        assert check.fitted_mean == pytest.approx(check.measured_mean, rel=0.02)
        assert check.fitted_p90 == pytest.approx(check.measured_p90, rel=0.03)


def test_fit_writes_a_config_that_train_accepts_and_prints_measured_against_fitted(tmp_path, capsys):
    run_sim(config(tmp_path, "recorded", workers=3, epochs=3, hetero_sigma=0.5, jitter=0.3, seed=5))
    target = tmp_path / "fitted.toml"
    assert cli_main(["fit", str(tmp_path / "recorded"), "--to", str(target)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "measured / fitted" in printed[0] and [line.split()[0] for line in printed[1:4]] == ["0", "1", "2"]
    settings = load_config_file(str(target))
    cfg = TrainConfig(**{**settings, "out": str(tmp_path / "simulated")}).validate()
    assert (cfg.backend, cfg.timing, cfg.workers, cfg.seed, cfg.rule) == ("sim", "empirical", 3, 5, "dc-asgd-a")
    assert cfg.hetero_sigma == 0 and cfg.jitter == 0 and len(cfg.timing_quantiles) == 3
    assert cli_main(["train", "--config", str(target), "--out", str(tmp_path / "simulated"), "--epochs", "0.5",
                     "--no-progress"]) == 0


# ---------------------------------------------------------------- a Ray worker's cycle, on a fake clock


def test_the_cycle_clock_splits_a_cycle_into_parts_and_leaves_the_holds_out():
    now = [10.0]
    clock = CycleClock(timer=lambda: now[0])
    now[0] = 13.5                                            # the first grant came after 3 s held, 0.5 s exchange
    clock.granted(wait_s=2.0, held_s=1.0, pull_s=0.2)
    now[0] += 0.25
    clock.computed(0.25)
    assert clock.busy_s() == pytest.approx(0.75)
    now[0] += 1.0
    clock.slowed(1.0)
    now[0] += 0.05                                           # batch selection, the push message
    parts = clock.sent()
    assert parts["cycle_s"] == pytest.approx(1.8) and parts["wait_s"] == 2.0 and parts["held_s"] == 1.0
    assert parts["pull_s"] == pytest.approx(0.2) and parts["push_s"] == pytest.approx(0.3)
    assert parts["other_s"] == pytest.approx(0.05)
    assert sum(parts[k] for k in CYCLE_PARTS if k != "cycle_s") == pytest.approx(parts["cycle_s"])


def test_a_paced_worker_cycles_factor_times_the_reference_whatever_its_own_busy_time():
    """The old pause, (k - 1) x its own busy time, made a worker whose own work is inflated (a shared
    machine) slower than asked; the pacer aims at k x the reference, and makes up for sleeps that overshoot."""
    factor, reference = 4.0, 1.0
    pacer = SlowdownPacer(factor)
    rng = np.random.default_rng(0)
    cycles = []
    for _ in range(400):
        busy = 1.6 * reference * math.exp(0.3 * rng.standard_normal())      # inflated and noisy
        slept = 1.15 * pacer.pause(busy, reference)                          # sleeps overshoot by 15%
        cycles.append(busy + slept)
        pacer.record(cycles[-1], reference)
    assert np.mean(cycles) / reference == pytest.approx(factor, rel=0.01)
    assert pacer.pause(0.5, None) == pytest.approx(1.5)                     # no reference yet: (k - 1) x busy
    assert achieved_slowdowns([2.0, 2.2, 8.4, None], [1.0, 1.0, 4.0, 2.0]) == pytest.approx([0.952381, 1.047619,
                                                                                             4.0, None])
