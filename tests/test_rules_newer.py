"""The newer rules (delay-adaptive, gap-aware, adadelay, dana) against independent references:
hand-computed values on tiny vectors (worked out in the comments) and plain loops over floats."""

from __future__ import annotations

import math

import pytest
import torch

from dcasgd.core.rules import make_rule
from dcasgd.core.server import ServerCore


def vec(*values):
    return torch.tensor(values, dtype=torch.float32)


G1, G2 = vec(1.0, -2.0, 0.5), vec(1.0, 2.0, -0.5)


# ---------------------------------------------------------------- delay-adaptive (Koloskova et al. 2022)


@pytest.mark.parametrize("tau, drop, expected", [
    (2, False, [-0.1, 0.2, -0.05]),          # tau <= tau_c = 4: the full lr 0.1
    (4, False, [-0.1, 0.2, -0.05]),          # tau = tau_c: still the full lr
    (8, False, [-0.05, 0.1, -0.025]),        # lr * tau_c / tau = 0.1 * 4 / 8 = 0.05
    (8, True, [0.0, 0.0, 0.0]),              # dropped
])
def test_delay_adaptive_by_hand(tau, drop, expected):
    rule = make_rule("delay-adaptive", tau_c=4, delay_drop=drop)
    w, state = torch.zeros(3), rule.init(3, 4)
    rule.apply_(w, G1, None, tau, 0.1, state)
    assert w.tolist() == pytest.approx(expected, abs=1e-7)
    assert int(state["step"]) == 1


def test_delay_adaptive_with_every_tau_within_the_concurrency_is_sgd_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(200, generator=gen)
    grads = [torch.randn(200, generator=gen) for _ in range(12)]
    for hyper in ({}, {"momentum": 0.9, "wd": 1e-3}):
        adaptive, sgd = ServerCore(w0, "delay-adaptive", 4, 0.05, **hyper), ServerCore(w0, "sgd", 4, 0.05, **hyper)
        for k, g in enumerate(grads):
            for server in (adaptive, sgd):
                base = max(0, server.version - (k % 5))          # staleness 0..4 <= tau_c = 4 workers
                server.push(k % 4, g, base)
        assert torch.equal(adaptive.weights, sgd.weights)


def test_delay_adaptive_concurrency_defaults_to_the_number_of_workers():
    server = ServerCore(torch.zeros(3), "delay-adaptive", num_workers=6, lr=0.1)
    assert server.rule.tau_c == 6 and server.rule.step_lr(0.1, 12) == pytest.approx(0.05)


# ---------------------------------------------------------------- gap-aware (Barkai et al. 2020)


def test_gap_aware_by_hand():
    """Workers A and B pull w0 = 0; A pushes [1,-2,0.5] at staleness 0 (no gap: plain step), then B pushes
    [1,2,-0.5] at staleness 1.  After A: v = 0.001 g^2, bias-corrected v/(1-0.999) = g^2, so the typical step
    C = 0.1 |g_A| = [0.1, 0.2, 0.05]; B's gradient also has |g_B| = |g_A|, so v stays g^2 after correction and
    C is unchanged.  B's gap |w - w0| = [0.1, 0.2, 0.05] = C: penalty 2, w = [-0.1,0.2,-0.05] - 0.1*g_B/2."""
    server = ServerCore(torch.zeros(3), "gap-aware", num_workers=2, lr=0.1)
    _, va = server.pull(0)
    _, vb = server.pull(1)
    server.push(0, G1, va)
    assert server.weights.tolist() == pytest.approx([-0.1, 0.2, -0.05], abs=1e-6)
    server.push(1, G2, vb)
    assert server.weights.tolist() == pytest.approx([-0.15, 0.1, -0.025], abs=1e-6)


def gap_aware_loop(w, pushes, lr, beta=0.999, momentum=0.0, wd=0.0):
    """Gap-Aware, one float at a time: pushes are (gradient, backup) lists of floats."""
    v, buf, lr_max = [0.0] * len(w), [0.0] * len(w), 0.0
    for t, (g, backup) in enumerate(pushes, 1):
        lr_max = max(lr_max, lr)
        for j in range(len(w)):
            u = buf[j] if momentum and t > 1 else g[j]
            v[j] = beta * v[j] + (1 - beta) * u * u
            c = lr_max * (math.sqrt(v[j] / (1 - beta ** t)) + 1e-8)
            d = (g[j] + wd * w[j]) / (1 + abs(w[j] - backup[j]) / c)
            buf[j] = d if t == 1 else momentum * buf[j] + d
            w[j] -= lr * (buf[j] if momentum else d)
    return w


@pytest.mark.parametrize("momentum, wd", [(0.0, 0.0), (0.9, 1e-2)])
def test_gap_aware_matches_a_plain_loop(momentum, wd):
    gen = torch.Generator().manual_seed(1)
    w0 = torch.randn(7, generator=gen)
    rule = make_rule("gap-aware", momentum=momentum, wd=wd)
    w, state = w0.clone(), rule.init(7, 1)
    pushes = []
    for _ in range(6):
        g = torch.randn(7, generator=gen)
        backup = w - 0.05 * torch.randn(7, generator=gen)          # as if pulled a few updates ago
        pushes.append((g.tolist(), backup.tolist()))
        rule.apply_(w, g, backup, 2, 0.1, state)
    assert w.tolist() == pytest.approx(gap_aware_loop(w0.tolist(), pushes, 0.1, momentum=momentum, wd=wd),
                                       rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------- adadelay (Sra et al. 2016)


def test_adadelay_by_hand():
    """lr = 1 (L = 1), c = 1.  Push 1 (tau 0): S = [1,4,0.25], t = 1, alpha = 1/(1 + sqrt(S)) = [1/2, 1/3, 2/3],
    w = [-0.5, 2/3, -1/3].  Push 2 (tau 3): S = [2,8,0.5], t = 2, sqrt(S/2) = [1,2,0.5], sqrt(t + tau) = sqrt(5),
    alpha = 1/(1 + sqrt(5)*[1,2,0.5]) = [0.309017, 0.182744, 0.472136]."""
    rule = make_rule("adadelay", adadelay_c=1.0)
    w, state = torch.zeros(3), rule.init(3, 1)
    rule.apply_(w, G1, None, 0, 1.0, state)
    assert w.tolist() == pytest.approx([-0.5, 2 / 3, -1 / 3], rel=1e-6)
    rule.apply_(w, G2, None, 3, 1.0, state)
    assert w.tolist() == pytest.approx([-0.809017, 0.301179, -0.097265], abs=1e-6)


def test_adadelay_matches_a_plain_loop_with_momentum():
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(5, generator=gen)
    rule = make_rule("adadelay", momentum=0.5, adadelay_c=0.3)
    w, state = w0.clone(), rule.init(5, 1)
    ref, total, buf = w0.tolist(), [0.0] * 5, [0.0] * 5
    for t in range(1, 7):
        g, tau, lr = torch.randn(5, generator=gen), t % 3, 0.05
        rule.apply_(w, g, None, tau, lr, state)
        for j, gj in enumerate(g.tolist()):
            total[j] += gj * gj
            alpha = lr / (1 + lr * 0.3 * math.sqrt(total[j] / t) * math.sqrt(t + tau))
            buf[j] = gj if t == 1 else 0.5 * buf[j] + gj
            ref[j] -= alpha * buf[j]
    assert w.tolist() == pytest.approx(ref, rel=1e-5)


# ---------------------------------------------------------------- dana (Hakimi et al. 2019)


def test_dana_look_ahead_by_hand():
    """DANA-Zero, momentum 0.9, lr 0.1, two workers from 0.  Push A [1,-2,0.5]: v_A = g, w = [-0.1,0.2,-0.05],
    A's look-ahead w - 0.09*(v_A + v_B) = [-0.19, 0.38, -0.095].  Push B [1,2,-0.5]: w = [-0.2,0,0], sum = [2,0,0],
    look-ahead [-0.38,0,0].  Push A [0.5,0.5,0.5]: v_A = 0.9*[1,-2,0.5] + 0.5 = [1.4,-1.3,0.95],
    w = [-0.34, 0.13, -0.095], sum = [2.4, 0.7, 0.45], look-ahead [-0.556, 0.067, -0.1355]."""
    server = ServerCore(torch.zeros(3), "dana", num_workers=2, lr=0.1, momentum=0.9)
    _, va = server.pull(0)
    _, vb = server.pull(1)
    server.push(0, G1, va)
    ahead, va = server.pull(0)
    assert ahead.tolist() == pytest.approx([-0.19, 0.38, -0.095], abs=1e-6)
    server.push(1, G2, vb)
    ahead, _ = server.pull(1)
    assert ahead.tolist() == pytest.approx([-0.38, 0.0, 0.0], abs=1e-6)
    server.push(0, vec(0.5, 0.5, 0.5), va)
    assert server.weights.tolist() == pytest.approx([-0.34, 0.13, -0.095], abs=1e-6)
    ahead, _ = server.pull(0)
    assert ahead.tolist() == pytest.approx([-0.556, 0.067, -0.1355], abs=1e-6)
    assert server.weights.tolist() == pytest.approx([-0.34, 0.13, -0.095], abs=1e-6)   # a pull changes nothing


def test_dana_without_momentum_is_sgd_and_pulls_the_weights():
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(20, generator=gen)
    dana, sgd = ServerCore(w0, "dana", 3, 0.1, wd=0.01), ServerCore(w0, "sgd", 3, 0.1, wd=0.01)
    for k in range(9):
        g = torch.randn(20, generator=gen)
        for server in (dana, sgd):
            pulled, version = server.pull(k % 3)
            assert torch.equal(pulled, server.weights)
            server.push(k % 3, g, version)
    assert torch.equal(dana.weights, sgd.weights)


# ---------------------------------------------------------------- every rule


@pytest.mark.parametrize("name", ["delay-adaptive", "gap-aware", "adadelay", "dana"])
def test_momentum_means_the_same_for_every_rule(name):
    """With no delay and one worker, each newer rule is sgd (gap-aware: no gap; adadelay: c = 0;
    dana: one worker's own momentum is the shared one), momentum included."""
    gen = torch.Generator().manual_seed(4)
    w0 = torch.randn(30, generator=gen)
    extra = {"adadelay_c": 0.0} if name == "adadelay" else {}
    rule, sgd = make_rule(name, momentum=0.9, **extra).resolved(1), make_rule("sgd", momentum=0.9)
    w, state, ref, ref_state = w0.clone(), rule.init(30, 1), w0.clone(), sgd.init(30, 1)
    for _ in range(5):
        g = torch.randn(30, generator=gen)
        rule.apply_(w, g, w.clone(), 0, 0.05, state)
        sgd.apply_(ref, g, None, 0, 0.05, ref_state)
    assert torch.allclose(w, ref, rtol=1e-6, atol=1e-7)


def test_state_round_trips_through_a_checkpoint_for_every_rule():
    for name in ("delay-adaptive", "gap-aware", "adadelay", "dana"):
        a = ServerCore(torch.ones(8), name, 2, 0.1, momentum=0.5)
        for k in range(4):
            _, v = a.pull(k % 2)
            a.push(k % 2, torch.full((8,), 0.1 * (k + 1)), v)
        b = ServerCore(torch.ones(8), name, 2, 0.1, momentum=0.5)
        b.load_state_dict(a.state_dict())
        for server in (a, b):
            _, v = server.pull(1)
            server.push(1, torch.full((8,), 0.3), v)
        assert torch.equal(a.weights, b.weights), name
