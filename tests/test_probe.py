"""Compensation probe (maths on a quadratic, no side effects, simulator hook), TensorBoard, plot."""

import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dcasgd.config import ConfigError, TrainConfig
from dcasgd.compute.flat import FlatModel
from dcasgd.study.compensation import load_probe_records, plot_compensation, plot_run_compensation
from dcasgd.engine.probe import (RECORD_FIELDS, CompensationProbe, compensation_metrics, effective_lam,
                          estimate_metrics, taylor_terms)
from dcasgd.core.rules import make_rule
from dcasgd.engine.context import prepare_run
from dcasgd.backends.sim import Simulator
from dcasgd.io.tensorboard import TensorBoardLogger, TensorBoardMissing, open_metrics
from dcasgd.compute.worker import compute_gradient


# ---------------------------------------------------------------- maths on a quadratic


def quadratic(d=6, seed=0):
    """f(w) = 0.5 w^T A w - b^T w with A symmetric positive definite: g(w) = A w - b, H = A."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(d, d, generator=gen, dtype=torch.float64)
    a = q @ q.T + d * torch.eye(d, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    w_bak = torch.randn(d, generator=gen, dtype=torch.float64)
    w_now = w_bak + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    return a, b, w_bak, w_now, (lambda w: 0.5 * w @ a @ w - b @ w)


def test_taylor_terms_on_a_quadratic_are_exact():
    a, b, w_bak, w_now, f = quadratic()
    before = (w_bak.clone(), w_now.clone())
    g_bak, g_now, hvp = taylor_terms(f, w_bak, w_now)
    torch.testing.assert_close(g_bak, a @ w_bak - b)
    torch.testing.assert_close(g_now, a @ w_now - b)
    torch.testing.assert_close(hvp, a @ (w_now - w_bak))
    torch.testing.assert_close(g_bak + hvp, g_now)           # exact Taylor: the quadratic has no 2nd-order rest
    assert torch.equal(w_bak, before[0]) and torch.equal(w_now, before[1])


@pytest.mark.parametrize("vector_lam", [False, True])
def test_estimate_metrics_match_hand_computation(vector_lam):
    a, b, w_bak, w_now, f = quadratic(seed=1)
    g_bak, g_now, hvp = taylor_terms(f, w_bak, w_now)
    lam_eff = torch.linspace(0.1, 2.0, 6, dtype=torch.float64) if vector_lam else 0.7
    m = estimate_metrics(g_bak, g_now, hvp, w_bak, w_now, lam_eff)

    gb, gn = (a @ w_bak - b).numpy(), (a @ w_now - b).numpy()
    lam = lam_eff.numpy() if vector_lam else lam_eff
    dc = gb + lam * gb * gb * (w_now - w_bak).numpy()

    def cos(x, y):
        return x @ y / np.linalg.norm(x) / np.linalg.norm(y)

    def relerr(x, y):
        return np.linalg.norm(x - y) / np.linalg.norm(y)

    assert m["cos_delayed"] == pytest.approx(cos(gb, gn), rel=1e-12)
    assert m["relerr_delayed"] == pytest.approx(relerr(gb, gn), rel=1e-12)
    assert m["cos_dc"] == pytest.approx(cos(dc, gn), rel=1e-12)
    assert m["relerr_dc"] == pytest.approx(relerr(dc, gn), rel=1e-12)
    assert m["cos_taylor"] == pytest.approx(1.0, abs=1e-12)
    assert m["relerr_taylor"] == pytest.approx(0.0, abs=1e-12)
    assert m["delta_norm"] == pytest.approx(np.linalg.norm((w_now - w_bak).numpy()))


def test_effective_lam_reads_a_copy_of_mean_square():
    g = torch.tensor([1.0, -2.0, 0.5])
    rule_a = make_rule("dc-asgd-a", lam0=2.0, m=0.9, eps=1e-7)
    state = rule_a.init(3, num_workers=2)
    state["mean_square"][0] = torch.tensor([0.5, 1.0, 2.0])
    before = state["mean_square"].clone()
    lam_eff, lam, form = effective_lam(rule_a, state, g, worker=1)
    expected = 2.0 / torch.sqrt(0.9 * before[0] + 0.1 * g * g + 1e-7)
    torch.testing.assert_close(lam_eff, expected)
    assert (lam, form) == (2.0, "dc-asgd-a")
    assert torch.equal(state["mean_square"], before)       # server state untouched
    for name in ("dc-asgd-c", "sgd", "staleness"):
        rule = make_rule(name, lam=0.3)
        assert effective_lam(rule, rule.init(3, 1), g, 0) == (0.3, 0.3, "dc-asgd-c")


# ---------------------------------------------------------------- on a real model


def tiny_flat(activation=nn.ReLU):
    torch.manual_seed(5)
    module = nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), activation(), nn.Dropout(0.3), nn.Linear(16, 3))
    return FlatModel(module)


def test_compensation_metrics_uses_same_batch_key_buffers_and_leaves_no_trace():
    flat = tiny_flat()
    gen = torch.Generator().manual_seed(1)
    x, y, key = torch.randn(12, 5, generator=gen), torch.randint(0, 3, (12,), generator=gen), 1234
    w_bak = flat.params.clone()
    buffers = torch.rand(flat.buffers.numel(), generator=gen) + 0.5
    w_now = w_bak + 0.05 * torch.randn(w_bak.numel(), generator=gen)
    grad_bak = compute_gradient(flat, w_bak, buffers, x, y, key).grad
    g_now = compute_gradient(flat, w_now, buffers, x, y, key).grad

    torch.manual_seed(99)
    flat.load(torch.full_like(w_bak, 0.25), torch.ones_like(buffers))
    flat.grads.fill_(3.0)
    snapshot = {k: v.clone() for k, v in flat.module.state_dict().items()}
    args = [t.clone() for t in (w_bak, w_now, buffers, grad_bak)]
    rng = torch.random.get_rng_state()

    m = compensation_metrics(flat, w_bak, w_now, buffers, x, y, key, grad_bak, 0.5)

    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, snapshot[k]) for k, v in flat.module.state_dict().items())  # incl. num_batches_tracked
    assert torch.equal(flat.grads, torch.full_like(flat.grads, 3.0))
    assert all(torch.equal(a, b) for a, b in zip(args, (w_bak, w_now, buffers, grad_bak)))
    # the probe's g(w_now) is the gradient compute_gradient gives there (same dropout mask, same BN)
    assert m["recompute_err"] < 1e-5
    expected = estimate_metrics(grad_bak, g_now, torch.zeros_like(g_now), w_bak, w_now, 0.5)
    for name in ("cos_delayed", "relerr_delayed", "cos_dc", "relerr_dc", "delta_norm"):
        assert m[name] == pytest.approx(expected[name], rel=1e-4, abs=1e-6)
    same = compensation_metrics(flat, w_bak, w_bak, buffers, x, y, key, grad_bak, 0.5)
    assert same["relerr_delayed"] < 1e-5 and same["delta_norm"] == 0.0


def test_taylor_beats_delayed_for_a_small_step_on_a_smooth_model():
    flat = tiny_flat(nn.Tanh)
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    w_bak = flat.params.clone()
    w_now = w_bak + 1e-2 * torch.randn(w_bak.numel(), generator=gen)
    grad_bak = compute_gradient(flat, w_bak, flat.buffers.clone(), x, y, 7).grad
    m = compensation_metrics(flat, w_bak, w_now, flat.buffers.clone(), x, y, 7, grad_bak, 0.04)
    assert m["relerr_taylor"] < 0.2 * m["relerr_delayed"]
    assert m["cos_taylor"] > m["cos_delayed"]


# ---------------------------------------------------------------- in the simulator


def sim_config(tmp_path, name, **kw):
    base = dict(dataset="synthetic", model="mlp", workers=3, epochs=1, batch_size=32, lr=0.1, rule="dc-asgd-a",
                consistency="async", lr_schedule="constant", hetero_sigma=0.5, jitter=0.3,
                stop_after_updates=24, out=str(tmp_path / name), progress=False)
    base.update(kw)
    return TrainConfig(**base)


def read_lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rule", ["dc-asgd-a", "sgd"])
def test_probe_does_not_change_the_trajectory_and_writes_every_kth_push(tmp_path, rule):
    off = Simulator(prepare_run(sim_config(tmp_path, "off", rule=rule)), probe=None).run()
    every_push = CompensationProbe(1)
    on = Simulator(prepare_run(sim_config(tmp_path, "on", rule=rule)), probe=every_push).run()
    assert torch.equal(off.weights, on.weights) and torch.equal(off.buffers, on.buffers)
    assert len(every_push.records) == on.summary["updates"]

    probe = CompensationProbe(5)
    Simulator(prepare_run(sim_config(tmp_path, "k", rule=rule)), probe=probe).run()
    lines = read_lines(tmp_path / "k")
    updates = {r["version"]: r for r in lines if r["kind"] == "update"}
    probes = [r for r in lines if r["kind"] == "probe"]
    assert [r["version"] for r in probes] == [5, 10, 15, 20]
    assert probes == [{"kind": "probe", **r} for r in probe.records]
    assert load_probe_records(tmp_path / "k") == probes
    for r in probes:
        assert set(RECORD_FIELDS) <= set(r)
        assert (r["staleness"], r["worker"]) == (updates[r["version"]]["staleness"], updates[r["version"]]["worker"])
        assert r["lam_form"] == ("dc-asgd-a" if rule == "dc-asgd-a" else "dc-asgd-c")
        assert -1 <= r["cos_delayed"] <= 1 and r["relerr_delayed"] >= 0
    assert any(r["staleness"] > 0 and r["delta_norm"] > 0 for r in probes)
    summary = probe.summary()
    assert summary["count"] == 4 and summary["median_relerr_delayed"] > 0
    assert summary["median_ratio_dc_to_delayed"] == pytest.approx(
        summary["median_relerr_dc"] / summary["median_relerr_delayed"])
    json.dumps(summary)

    png = plot_run_compensation(tmp_path / "k")
    assert png == tmp_path / "k" / "compensation.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_run_compensation(tmp_path / "off") is None


def test_probe_state_dict_round_trip():
    probe = CompensationProbe(3)
    probe.pushes, probe.records = 7, [{"staleness": 2, "relerr_delayed": 0.5, "relerr_dc": 0.4,
                                       "relerr_taylor": 0.1, "lam": 0.04, "lam_form": "dc-asgd-c"}]
    resumed = CompensationProbe(3)
    resumed.load_state_dict(probe.state_dict())
    assert (resumed.pushes, resumed.records) == (7, probe.records)
    assert resumed.summary() == probe.summary()


def test_probe_every_must_be_positive_and_from_config():
    with pytest.raises(ValueError):
        CompensationProbe(0)
    assert CompensationProbe.from_config(TrainConfig(probe_every=0)) is None
    assert CompensationProbe.from_config(TrainConfig(probe_every=4)).every == 4


# ---------------------------------------------------------------- plot


def test_plot_compensation_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    records = [{"staleness": int(t), "epoch": i / 50, "relerr_delayed": 0.1 * t + 0.01, "relerr_dc": 0.05 * t,
                "relerr_taylor": 0.001 * t * t, "version": i} for i, t in enumerate(rng.integers(0, 8, 100))]
    path = plot_compensation(records, tmp_path / "compensation.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    with pytest.raises(ValueError):
        plot_compensation([], tmp_path / "empty.png")


def test_load_probe_records_skips_other_and_broken_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"kind": "update", "version": 1}\n{"kind": "probe", "version": 2}\n'
                                            '{"kind": "probe", "vers')
    assert load_probe_records(tmp_path) == [{"kind": "probe", "version": 2}]
    assert load_probe_records(tmp_path / "nowhere") == []


# ---------------------------------------------------------------- TensorBoard


def event_tags(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc.Tags()


def test_tensorboard_logger_writes_events(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.update(1, loss=2.3, lr=0.1, staleness=2)
    logger.evaluation(1, epoch=0.5, test_error=40.0, test_loss=1.1, train_loss=None)
    logger.staleness_histogram(1, {0: 3, 2: 5, 7: 1})
    logger.staleness_histogram(2, {})
    logger.probe(1, {"relerr_delayed": 0.5, "relerr_dc": 0.4, "relerr_taylor": 0.1, "staleness": 2})
    logger.close()
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert files and files[0].stat().st_size > 0
    tags = event_tags(tmp_path / "tb")
    assert {"train/loss", "train/lr", "train/staleness", "eval/test_error_pct", "probe/relerr_dc"} <= set(tags["scalars"])
    assert "staleness/histogram" in tags["histograms"]


def test_open_metrics_tees_lines_into_tensorboard(tmp_path):
    metrics = open_metrics(tmp_path / "metrics.jsonl", tmp_path / "tb", lr=lambda: 0.05)
    metrics.write("update", version=1, worker=0, staleness=1, loss=1.5, epoch=0.1)
    metrics.write("eval", version=1, epoch=0.1, test_error=50.0, test_loss=1.2, train_loss=1.4, lr=0.05)
    metrics.write("staleness", version=1, overall={"histogram": {"1": 4}})
    metrics.write("probe", version=1, relerr_delayed=0.3, relerr_dc=0.2, relerr_taylor=0.05, staleness=1)
    assert metrics.path == tmp_path / "metrics.jsonl" and metrics.tell() > 0   # the rest is the MetricsWriter's
    metrics.close()
    assert [json.loads(line)["kind"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        "update", "eval", "staleness", "probe"]
    tags = event_tags(tmp_path / "tb")
    assert {"train/loss", "train/lr", "eval/test_loss", "probe/relerr_taylor"} <= set(tags["scalars"])
    plain = open_metrics(tmp_path / "plain.jsonl")
    assert not hasattr(plain, "logger")
    plain.close()


def test_tensorboard_missing_gives_a_clear_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import now raises ImportError
    with pytest.raises(TensorBoardMissing, match=r"pip install 'dcasgd\[tensorboard\]'") as info:
        open_metrics(tmp_path / "metrics.jsonl", tmp_path / "tb")
    assert isinstance(info.value, (ConfigError, ValueError))
    assert not (tmp_path / "metrics.jsonl").exists()                      # failed before touching the run
