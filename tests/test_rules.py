"""Update rules against independently computed references (plain loops over floats, torch.optim.SGD)."""

import math

import pytest
import torch

from dcasgd.core.rules import LRSchedule, Rule, RuleError, make_rule


def vec(*values):
    return torch.tensor(values, dtype=torch.float32)


def apply(rule, w, g, backup=None, staleness=0, lr=0.1, state=None, worker=0):
    state = rule.init(w.numel(), 2) if state is None else state
    rule.apply_(w, g, backup, staleness, lr, state, worker)
    return state


def test_sgd_plain_loop_with_weight_decay():
    w, g = vec(1.0, -2.0, 0.5), vec(0.3, 0.1, -4.0)
    expected = [wi - 0.1 * (gi + 0.01 * wi) for wi, gi in zip(w.tolist(), g.tolist())]
    apply(make_rule("sgd", wd=0.01), w, g, lr=0.1)
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_sgd_momentum_matches_torch_optim_sgd():
    torch.manual_seed(0)
    w0 = torch.randn(50)
    grads = [torch.randn(50) for _ in range(6)]
    ref = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([ref], lr=0.05, momentum=0.9, weight_decay=1e-3)
    for g in grads:
        opt.zero_grad()
        ref.grad = g.clone()
        opt.step()
    rule = make_rule("sgd", momentum=0.9, wd=1e-3)
    w, state = w0.clone(), rule.init(50, 1)
    for g in grads:
        rule.apply_(w, g, None, 0, 0.05, state, 0)
    torch.testing.assert_close(w, ref.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tau, factor", [(0, 1.0), (1, 1.0), (4, 0.25), (10, 0.1)])
def test_staleness_rule_divides_lr_by_tau(tau, factor):
    w, g = vec(1.0, 2.0), vec(0.5, -1.0)
    expected = [wi - 0.2 * factor * gi for wi, gi in zip(w.tolist(), g.tolist())]
    apply(make_rule("staleness"), w, g, staleness=tau, lr=0.2)
    assert w.tolist() == pytest.approx(expected, rel=1e-6)


def test_dc_c_with_zero_lambda_equals_sgd():
    torch.manual_seed(1)
    w0, g, backup = torch.randn(100), torch.randn(100), torch.randn(100)
    w_dc, w_sgd = w0.clone(), w0.clone()
    apply(make_rule("dc-asgd-c", lam=0.0), w_dc, g, backup)
    apply(make_rule("sgd"), w_sgd, g)
    assert torch.equal(w_dc, w_sgd)


@pytest.mark.parametrize("name", ["dc-asgd-c", "dc-asgd-a"])
def test_dc_rules_without_delay_equal_sgd_exactly(name):
    """One worker, no delay: backup == w, so the compensation term is exactly zero."""
    torch.manual_seed(2)
    w_dc = torch.randn(64)
    w_sgd = w_dc.clone()
    dc, sgd = make_rule(name), make_rule("sgd")
    s_dc, s_sgd = dc.init(64, 1), sgd.init(64, 1)
    for _ in range(5):
        g = torch.randn(64)
        backup = w_dc.clone()                  # the worker pulled the current weights
        dc.apply_(w_dc, g, backup, 0, 0.1, s_dc, 0)
        sgd.apply_(w_sgd, g, None, 0, 0.1, s_sgd, 0)
        assert torch.equal(w_dc, w_sgd)


def test_dc_c_two_worker_interleaving_matches_algorithm_2():
    """Algorithm 2 of Zheng et al.: pull stores backup[m]; push applies g + lam*g*g*(w - backup[m])."""
    lam, lr = 0.5, 0.1
    w = [1.0, -1.0, 2.0]
    grads = {0: [[0.4, -0.2, 1.0], [0.1, 0.3, -0.5]], 1: [[-0.6, 0.8, 0.2], [0.7, -0.1, 0.0]]}
    # schedule: pull0, pull1, push0, pull0, push1, pull1, push0, push1
    schedule = [("pull", 0), ("pull", 1), ("push", 0), ("pull", 0), ("push", 1), ("pull", 1), ("push", 0),
                ("push", 1)]
    # reference with Python floats
    ref_w, ref_backup, used = list(w), {}, {0: 0, 1: 0}
    for op, m in schedule:
        if op == "pull":
            ref_backup[m] = list(ref_w)
        else:
            g = grads[m][used[m]]
            used[m] += 1
            ref_w = [wi - lr * (gi + lam * gi * gi * (wi - bi)) for wi, gi, bi in zip(ref_w, g, ref_backup[m])]
    # the rule, driven the same way
    rule = make_rule("dc-asgd-c", lam=lam)
    tw, state, backup, used = vec(*w), rule.init(3, 2), {}, {0: 0, 1: 0}
    for op, m in schedule:
        if op == "pull":
            backup[m] = tw.clone()
        else:
            rule.apply_(tw, vec(*grads[m][used[m]]), backup[m], 1, lr, state, m)
            used[m] += 1
    assert tw.tolist() == pytest.approx(ref_w, rel=1e-6)


@pytest.mark.parametrize("per_worker", [False, True])
def test_dc_a_mean_square_matches_reference_loop(per_worker):
    lam0, mom, eps, lr = 2.0, 0.95, 1e-7, 0.05
    torch.manual_seed(3)
    n = 5
    w0 = torch.randn(n)
    pushes = [(k % 2, torch.randn(n), torch.randn(n)) for k in range(6)]   # (worker, g, backup)
    ref_w = w0.tolist()
    ref_ms = {0: [0.0] * n, 1: [0.0] * n}
    for m, g, b in pushes:
        key = m if per_worker else 0
        ms = [mom * s + (1 - mom) * gi * gi for s, gi in zip(ref_ms[key], g.tolist())]
        ref_ms[key] = ms
        ref_w = [wi - lr * (gi + lam0 / math.sqrt(si + eps) * gi * gi * (wi - bi))
                 for wi, gi, bi, si in zip(ref_w, g.tolist(), b.tolist(), ms)]
    rule = make_rule("dc-asgd-a", lam0=lam0, m=mom, eps=eps, per_worker_ms=per_worker)
    w, state = w0.clone(), rule.init(n, 2)
    for m, g, b in pushes:
        rule.apply_(w, g, b, 1, lr, state, m)
    assert w.tolist() == pytest.approx(ref_w, rel=1e-5, abs=1e-6)
    rows = [0, 1] if per_worker else [0]
    for row in rows:
        assert state["mean_square"][row].tolist() == pytest.approx(ref_ms[row], rel=1e-5)


def test_dc_momentum_applies_to_compensated_gradient():
    lam, lr, mu = 0.1, 0.1, 0.5
    w, backup = [1.0, 2.0], [0.0, 1.0]
    gs = [[1.0, -1.0], [0.5, 0.5]]
    buf = None
    for g in gs:
        d = [gi + lam * gi * gi * (wi - bi) for gi, wi, bi in zip(g, w, backup)]
        buf = d if buf is None else [mu * b + di for b, di in zip(buf, d)]
        w = [wi - lr * b for wi, b in zip(w, buf)]
    rule = make_rule("dc-asgd-c", lam=lam, momentum=mu)
    tw, state = vec(1.0, 2.0), rule.init(2, 1)
    for g in gs:
        rule.apply_(tw, vec(*g), vec(*backup), 1, lr, state, 0)
    assert tw.tolist() == pytest.approx(w, rel=1e-6)


def test_bad_rule_and_hyperparameters_are_refused():
    with pytest.raises(RuleError, match="unknown rule 'adam'"):
        make_rule("adam")
    with pytest.raises(RuleError, match="momentum"):
        make_rule("sgd", momentum=1.0)
    with pytest.raises(RuleError, match="eps"):
        make_rule("dc-asgd-a", eps=0.0)
    with pytest.raises(RuleError, match="unknown hyperparameter"):
        make_rule("sgd", beta=0.9)
    with pytest.raises(RuleError, match="backup"):
        apply(Rule("dc-asgd-c"), vec(1.0), vec(1.0), backup=None)


def test_schedules():
    assert LRSchedule(0.5)(100.0) == 0.5
    step = LRSchedule(0.5, "step", (80, 120), 0.1, 160)
    assert [step(e) for e in (0, 79.9, 80, 119, 120, 159)] == pytest.approx([0.5, 0.5, 0.05, 0.05, 0.005, 0.005])
    cosine = LRSchedule(1.0, "cosine", total_epochs=10)
    assert cosine(0) == pytest.approx(1.0) and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)
    warm = LRSchedule(0.4, "constant", warmup_epochs=2)
    assert warm(0.5) == pytest.approx(0.1) and warm(2) == pytest.approx(0.4)
    with pytest.raises(RuleError, match="lr must be > 0"):
        LRSchedule(0.0)
    with pytest.raises(RuleError, match="schedule"):
        LRSchedule(0.1, "linear")
