"""Compensation probe (maths on a quadratic, no side effects, simulator hook), TensorBoard, plot."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from torch import nn

from dcasgd.config import ConfigError, TrainConfig
from dcasgd.compute.flat import FlatModel
from dcasgd.study.compensation import load_probe_records, plot_compensation, plot_run_compensation
from dcasgd.engine.probe import (RECORD_FIELDS, CompensationProbe, compensation_metrics, effective_lam,
                                 estimate_metrics, per_sample_fisher, percentiles, record_lamstar, taylor_terms)
from dcasgd.study.report import write_compensation
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


def centred_quadratic(d=7, seed=3):
    """f(w) = 0.5 (w - w*)^T A (w - w*): g(w) = A (w - w*), H = A (float64 numpy and torch)."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((d, d))
    a = q @ q.T + d * np.eye(d)
    w_star, w_bak = rng.standard_normal(d), rng.standard_normal(d)
    w_now = w_bak + 0.3 * rng.standard_normal(d)
    at = torch.from_numpy(a)
    ws = torch.from_numpy(w_star)
    return a, w_star, w_bak, w_now, (lambda w: 0.5 * (w - ws) @ at @ (w - ws))


def projection(g, g_now, h):
    """Least squares by hand: lam* = h.(g_now - g)/h.h and ||g + lam* h - g_now|| / ||g_now||."""
    lam = h @ (g_now - g) / (h @ h)
    return lam, np.linalg.norm(g + lam * h - g_now) / np.linalg.norm(g_now)


@pytest.mark.parametrize("vector_lam", [False, True])
def test_lamstar_and_errors_on_a_quadratic_match_closed_forms(vector_lam):
    a, w_star, wb, wn, f = centred_quadratic()
    g_bak, g_now, hvp = taylor_terms(f, torch.from_numpy(wb), torch.from_numpy(wn))
    lam = 0.7
    shape = np.linspace(0.2, 3.0, len(wb)) if vector_lam else np.ones(len(wb))   # lam_eff / lam
    lam_eff = torch.from_numpy(lam * shape) if vector_lam else lam
    m = estimate_metrics(g_bak, g_now, hvp, torch.from_numpy(wb), torch.from_numpy(wn), lam_eff, lam=lam)

    g, gn, v = a @ (wb - w_star), a @ (wn - w_star), wn - wb
    av = a @ v                                                    # = gn - g, the Hessian times the step
    gn_norm = np.linalg.norm(gn)
    # Taylor is exact on a quadratic: no error, best scale exactly 1
    assert m["relerr_taylor"] == pytest.approx(0.0, abs=1e-12)
    assert m["lamstar_taylor"] == pytest.approx(1.0, rel=1e-12)
    assert m["relerr_taylor_at_lamstar"] == pytest.approx(0.0, abs=1e-12)
    # diagonal: h = s*g*g*v; lam* and its error from the projection onto h
    h = shape * g * g * v
    lam_dc = (h @ av) / (h @ h)
    err_dc = math.sqrt(max(0.0, av @ av - (h @ av) ** 2 / (h @ h))) / gn_norm
    assert m["lamstar_dc"] == pytest.approx(lam_dc, rel=1e-10)
    assert m["lamscale_dc"] == pytest.approx(lam_dc / lam, rel=1e-10)
    assert m["relerr_dc_at_lamstar"] == pytest.approx(err_dc, rel=1e-9)
    assert (lam_dc, err_dc) == pytest.approx(projection(g, gn, h), rel=1e-9)
    # rank-1: h = s*g (g.v); with s = 1 the correction is along g, so the error at lam* is the part of
    # A v orthogonal to g and lam* = g.Av / ((g.v) ||g||^2)
    h1 = shape * g * (g @ v)
    if not vector_lam:
        assert m["lamstar_rank1"] == pytest.approx((g @ av) / ((g @ v) * (g @ g)), rel=1e-10)
        assert m["relerr_rank1_at_lamstar"] == pytest.approx(
            math.sqrt(av @ av - (g @ av) ** 2 / (g @ g)) / gn_norm, rel=1e-9)
    assert (m["lamstar_rank1"], m["relerr_rank1_at_lamstar"]) == pytest.approx(projection(g, gn, h1), rel=1e-9)
    rank1 = g + lam * shape * g * (g @ v)
    assert m["relerr_rank1"] == pytest.approx(np.linalg.norm(rank1 - gn) / gn_norm, rel=1e-12)
    assert m["cos_rank1"] == pytest.approx(rank1 @ gn / np.linalg.norm(rank1) / gn_norm, rel=1e-12)
    # the best scale never does worse than no compensation or the run's scale (both are candidates)
    for name in ("dc", "rank1"):
        assert m[f"relerr_{name}_at_lamstar"] <= min(m["relerr_delayed"], m[f"relerr_{name}"]) + 1e-12
    # no Fisher given: its fields are NaN
    assert all(math.isnan(m[k]) for k in ("relerr_fisher", "cos_fisher", "lamstar_fisher", "fisher_to_gg"))
    if vector_lam:     # a vector lam_eff without the run's lam: only the multiple of lam_eff is known
        bare = estimate_metrics(g_bak, g_now, hvp, torch.from_numpy(wb), torch.from_numpy(wn), lam_eff)
        assert math.isnan(bare["lamstar_dc"]) and bare["lamscale_dc"] == pytest.approx(lam_dc / lam, rel=1e-10)
        assert record_lamstar({**bare, "lam": lam}, "dc") == pytest.approx(lam_dc, rel=1e-10)
        assert record_lamstar({**bare, "lam": lam}, "rank1") == pytest.approx(m["lamstar_rank1"], rel=1e-10)


def test_the_diagonal_is_exact_when_the_hessian_is_lam_g_g():
    """A = diag(1/(k w_bak^2)) with w* = 0 gives g = 1/(k w_bak) and H = k g*g: lam*_dc = k, no error left."""
    k = 0.25
    w_bak = np.array([0.5, -1.0, 2.0, 0.8])
    a = np.diag(1.0 / (k * w_bak ** 2))
    w_now = w_bak + np.array([0.1, -0.2, 0.05, 0.3])
    at = torch.from_numpy(a)
    g_bak, g_now, hvp = taylor_terms(lambda w: 0.5 * w @ at @ w, torch.from_numpy(w_bak), torch.from_numpy(w_now))
    m = estimate_metrics(g_bak, g_now, hvp, torch.from_numpy(w_bak), torch.from_numpy(w_now), 0.04)
    assert m["lamstar_dc"] == pytest.approx(k, rel=1e-12) and m["lamscale_dc"] == pytest.approx(k / 0.04)
    assert m["relerr_dc_at_lamstar"] == pytest.approx(0.0, abs=1e-12)
    at_k = estimate_metrics(g_bak, g_now, hvp, torch.from_numpy(w_bak), torch.from_numpy(w_now), k)
    assert at_k["relerr_dc"] == pytest.approx(0.0, abs=1e-12) and at_k["lamscale_dc"] == pytest.approx(1.0)


def test_a_zero_step_has_no_best_scale():
    _, _, wb, _, f = centred_quadratic(seed=4)
    w = torch.from_numpy(wb)
    g_bak, g_now, hvp = taylor_terms(f, w, w)
    m = estimate_metrics(g_bak, g_now, hvp, w, w.clone(), 0.5, fisher=g_bak * g_bak, lam=0.5)
    assert m["relerr_delayed"] == 0.0 and m["delta_norm"] == 0.0
    for name in ("dc", "rank1", "fisher", "taylor"):
        assert math.isnan(m[f"lamstar_{name}"]) and math.isnan(m[f"relerr_{name}_at_lamstar"])


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
    flat.module[3].eval()                                   # mixed train/eval modes come back as they were
    modes = [m.training for m in flat.module.modules()]
    snapshot = {k: v.clone() for k, v in flat.module.state_dict().items()}
    args = [t.clone() for t in (w_bak, w_now, buffers, grad_bak)]
    rng = torch.random.get_rng_state()

    m = compensation_metrics(flat, w_bak, w_now, buffers, x, y, key, grad_bak, 0.5)

    assert torch.equal(torch.random.get_rng_state(), rng)
    assert all(torch.equal(v, snapshot[k]) for k, v in flat.module.state_dict().items())  # incl. num_batches_tracked
    assert torch.equal(flat.grads, torch.full_like(flat.grads, 3.0))
    assert [m.training for m in flat.module.modules()] == modes
    # BatchNorm: per-sample gradients on the running statistics; dropout: one mask per sample
    assert m["fisher_mode"] == "eval" and math.isfinite(m["fisher_to_gg"]) and m["fisher_to_gg"] > 0
    assert all(math.isfinite(m[k]) for k in ("relerr_fisher", "relerr_rank1", "lamstar_dc", "lamstar_fisher"))
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


# ---------------------------------------------------------------- the per-sample Fisher diagonal


def half_squared_error(output, target):
    """0.5 (x.w - y)^2, the mean over the batch (a batch of one: one sample's loss)."""
    return 0.5 * ((output.squeeze(-1) - target) ** 2).mean()


def least_squares(b, d, noise, seed, offset=0.3):
    """Linear least squares: a bias-free Linear(d, 1) at w_true + offset * e, y = X w_true + noise * eps."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=gen)
    w_true = torch.randn(d, generator=gen)
    y = x @ w_true + noise * torch.randn(b, generator=gen)
    flat = FlatModel(nn.Linear(d, 1, bias=False))
    w = w_true + offset * torch.randn(d, generator=gen)
    return flat, x, y, w


def test_fisher_diagonal_of_least_squares_matches_the_hand_formula():
    flat, x, y, w = least_squares(b=24, d=5, noise=0.5, seed=0)
    f, g_mean, mode = per_sample_fisher(flat, w, x, y, key=3, loss_fn=half_squared_error)
    xn, yn, wn = x.double().numpy(), y.double().numpy(), w.double().numpy()
    r = xn @ wn - yn                                       # residuals; per-sample gradient r_i x_i
    np.testing.assert_allclose(f.numpy(), np.mean((r[:, None] * xn) ** 2, axis=0), rtol=1e-5)
    np.testing.assert_allclose(g_mean.numpy(), xn.T @ r / len(r), rtol=1e-5, atol=1e-7)
    assert mode == "train" and f.dtype == torch.float64
    # in chunks of 5 samples: the same numbers
    chunked, _, _ = per_sample_fisher(flat, w, x, y, key=3, loss_fn=half_squared_error, max_elements=5 * 5)
    torch.testing.assert_close(chunked, f, rtol=1e-6, atol=1e-9)


def test_fisher_estimate_scale_and_ratio_on_least_squares():
    """Fisher fields of compensation_metrics against hand formulas; F / g*g tends to b for noisy residuals."""
    b, d = 16, 400
    flat, x, y, w_bak = least_squares(b, d, noise=3.0, seed=1, offset=0.0)     # residuals are pure noise
    w_now = w_bak + 0.05 * torch.randn(d, generator=torch.Generator().manual_seed(2))
    grad_bak = compute_gradient(flat, w_bak, flat.buffers.clone(), x, y, 0, loss_fn=half_squared_error).grad
    m = compensation_metrics(flat, w_bak, w_now, flat.buffers.clone(), x, y, 0, grad_bak, 0.04,
                             half_squared_error, lam=0.04)

    xn, yn = x.double().numpy(), y.double().numpy()
    wb, wn = w_bak.double().numpy(), w_now.double().numpy()
    r, v = xn @ wb - yn, wn - wb
    fisher = np.mean((r[:, None] * xn) ** 2, axis=0)
    g = xn.T @ r / b
    a = xn.T @ xn / b                                       # the Hessian: the Taylor estimate is exact
    gn = g + a @ v
    assert m["fisher_mode"] == "train" and m["fisher_grad_relerr"] < 1e-5
    assert m["relerr_taylor"] < 1e-4 and m["lamstar_taylor"] == pytest.approx(1.0, abs=1e-3)
    est = g + 0.04 * fisher * v
    assert m["relerr_fisher"] == pytest.approx(np.linalg.norm(est - gn) / np.linalg.norm(gn), rel=1e-4)
    lam_f, err_f = projection(g, gn, fisher * v)
    assert m["lamstar_fisher"] == pytest.approx(lam_f, rel=1e-3)
    assert m["relerr_fisher_at_lamstar"] == pytest.approx(err_f, rel=1e-3)
    # ||F|| / ||g*g|| is the hand value ...
    ratio = np.linalg.norm(fisher) / np.linalg.norm(g * g)
    assert m["fisher_to_gg"] == pytest.approx(ratio, rel=1e-4)
    # ... and near its closed form: with noise residuals r_i and x_ij ~ N(0, 1), given r,
    # E[F_j^2] = (S2^2 + 2 S4) / b^2 and E[g_j^4] = 3 S2^2 / b^4 (S2 = sum r^2, S4 = sum r^4), and
    # E[sum_j F_j] / E[sum_j g_j^2] = b exactly: the mini-batch g*g is about b times smaller than F
    s2, s4 = np.sum(r ** 2), np.sum(r ** 4)
    assert ratio == pytest.approx(b * math.sqrt((1 + 2 * s4 / s2 ** 2) / 3), rel=0.25)
    assert fisher.sum() / (g * g).sum() == pytest.approx(b, rel=0.25)
    assert ratio > b / 3
    # when every sample agrees (one x, one residual), the per-sample gradients are all g: F = g*g
    same_x, same_y = x[:1].repeat(b, 1), y[:1].repeat(b)
    agree = compensation_metrics(flat, w_bak, w_now, flat.buffers.clone(), same_x, same_y, 0,
                                 compute_gradient(flat, w_bak, None, same_x, same_y, 0,
                                                  loss_fn=half_squared_error).grad, 0.04, half_squared_error)
    assert agree["fisher_to_gg"] == pytest.approx(1.0, rel=1e-4)


def test_fisher_with_batchnorm_uses_running_statistics_like_a_per_sample_loop():
    torch.manual_seed(6)
    flat = FlatModel(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)))
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(10, 4, generator=gen), torch.randint(0, 3, (10,), generator=gen)
    flat.buffers.copy_(torch.rand(flat.buffers.numel(), generator=gen) + 0.5)   # running mean / var
    w = flat.params.clone()
    flat.module.train()
    f, _, mode = per_sample_fisher(flat, w, x, y, key=0)
    assert mode == "eval"
    assert all(m.training for m in flat.module.modules())        # modes restored
    # reference: one sample at a time, plain autograd, the BatchNorm layer on its running statistics
    flat.module.eval()
    squares = []
    for i in range(len(y)):
        flat.zero_grad()
        nn.functional.cross_entropy(flat.module(x[i:i + 1]), y[i:i + 1]).backward()
        squares.append(flat.grads.double() ** 2)
    flat.module.train()
    torch.testing.assert_close(f, torch.stack(squares).mean(0), rtol=1e-5, atol=1e-9)


def test_a_loss_vmap_cannot_run_leaves_only_the_fisher_fields_empty():
    def branching_loss(output, target):                  # data-dependent Python control flow: no vmap
        return (2.0 if float(output.detach().sum()) > 0 else 1.0) * nn.functional.cross_entropy(output, target)

    torch.manual_seed(0)
    flat = FlatModel(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    w = flat.params.clone()
    grad_bak = compute_gradient(flat, w, None, x, y, 1, loss_fn=branching_loss).grad
    m = compensation_metrics(flat, w, w + 0.01, None, x, y, 1, grad_bak, 0.1, branching_loss, lam=0.1)
    assert m["fisher_mode"] == "unavailable" and "vmap" in m["fisher_error"]
    assert math.isnan(m["relerr_fisher"]) and math.isnan(m["lamstar_fisher"]) and math.isnan(m["fisher_to_gg"])
    assert m["recompute_err"] < 1e-6 and math.isfinite(m["lamstar_dc"]) and math.isfinite(m["relerr_taylor"])


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
    assert {r["fisher_mode"] for r in probes} == {"train"}                 # the MLP has no BatchNorm
    summary = probe.summary()
    assert summary["count"] == 4 and summary["median_relerr_delayed"] > 0
    assert summary["median_ratio_dc_to_delayed"] == pytest.approx(
        summary["median_relerr_dc"] / summary["median_relerr_delayed"])
    assert set(summary) == set(CompensationProbe(5).summary()) | {"lam", "lam_form"}   # every key, always
    for name in ("rank1", "fisher"):
        assert summary[f"median_relerr_{name}"] > 0
        assert summary[f"median_ratio_{name}_to_delayed"] == pytest.approx(
            summary[f"median_relerr_{name}"] / summary["median_relerr_delayed"])
    for name in ("dc", "rank1", "fisher", "taylor"):
        dist = summary[f"lamstar_{name}"]
        assert dist["count"] == summary["count_stale"] and dist["p10"] <= dist["median"] <= dist["p90"]
        assert summary[f"median_relerr_{name}_at_lamstar"] <= summary["median_relerr_delayed"]
    assert summary["fisher_mode"] == "train" and summary["median_fisher_to_gg"] > 1
    json.dumps(summary)
    sim_summary = json.loads((tmp_path / "k" / "summary.json").read_text())["probe"]
    assert sim_summary == json.loads(json.dumps(summary))                    # the simulator's summary.json

    (tmp_path / "report").mkdir()
    written = write_compensation(tmp_path / "k", tmp_path / "report")
    text = (tmp_path / "report" / "compensation.md").read_text()
    assert [p.name for p in written] == ["compensation.png", "compensation.md"]
    assert f"{summary['median_relerr_rank1']:.4f}" in text and f"{summary['median_relerr_fisher']:.4f}" in text
    for name in ("dc", "rank1", "fisher", "taylor"):
        dist = summary[f"lamstar_{name}"]
        assert " | ".join(f"{dist[q]:.4g}" for q in ("p10", "p25", "median", "p75", "p90")) in text
        assert f"{summary[f'median_relerr_{name}_at_lamstar']:.4f}" in text
    assert f"{summary['median_fisher_to_gg']:.3g}" in text

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


def test_summary_percentiles_and_lamstar_from_lamscale():
    """lam* distributions against numpy; staleness-0 and NaN records skipped; lam* = lamscale * lam as fallback."""
    rng = np.random.default_rng(3)
    stars = rng.lognormal(1.0, 1.5, 13)
    records = [{"staleness": 1 + i % 3, "lam": 2.0, "lam_form": "dc-asgd-a", "relerr_delayed": 0.5,
                "relerr_dc": 0.4, "relerr_taylor": 0.1, "lamstar_dc": float(v),
                "relerr_dc_at_lamstar": 0.3 + 0.01 * i} for i, v in enumerate(stars)]
    records[4] = {**records[4], "lamstar_dc": math.nan, "lamscale_dc": stars[4] / 2.0}    # a Ray record
    records.append({**records[0], "staleness": 0, "lamstar_dc": 1e9, "relerr_dc_at_lamstar": math.nan})
    records.append({**records[0], "lamstar_dc": math.nan, "relerr_dc_at_lamstar": math.nan})   # dw = 0
    probe = CompensationProbe(1)
    probe.records = records
    summary = probe.summary()
    dist = summary["lamstar_dc"]
    assert dist["count"] == 13
    for key, q in (("p10", 10), ("p25", 25), ("median", 50), ("p75", 75), ("p90", 90)):
        assert dist[key] == pytest.approx(np.percentile(stars, q), rel=1e-12)
    assert summary["median_relerr_dc_at_lamstar"] == pytest.approx(0.36)
    assert summary["median_ratio_dc_at_lamstar_to_delayed"] == pytest.approx(0.72)
    assert summary["lamstar_rank1"] is None and summary["median_relerr_fisher"] is None   # fields not recorded
    assert percentiles([]) is None and percentiles([2.0])["p10"] == 2.0


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
    full = [{**r, "relerr_rank1": 0.08 * r["staleness"], "relerr_fisher": 0.04 * r["staleness"],
             "lam": 0.04, "lam_form": "dc-asgd-c",
             **{f"lamstar_{n}": float(rng.normal(s, 1.0)) if r["staleness"] else math.nan
                for n, s in (("dc", 2.0), ("rank1", -0.5), ("fisher", 8.0), ("taylor", 1.0))},
             **{f"relerr_{n}_at_lamstar": 0.01 * r["staleness"] for n in ("dc", "rank1", "fisher", "taylor")}}
            for r in records]
    assert plot_compensation(full, tmp_path / "full.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
