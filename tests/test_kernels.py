"""Fused update kernels (dcasgd.kernels) and the eager chain, against the original eager implementation.

``reference_apply`` is the op-by-op chain ``Rule.apply_`` ran before the
kernels existed; both paths must match it to float32 rounding and repeat
themselves bit for bit.  The compiled tests force the kernel on small vectors
with ``DCASGD_COMPILE_MIN_PARAMS=0``; they are skipped where no C++ compiler
is present (or ``DCASGD_NO_COMPILE`` is set), and compile each kernel once
per session (seconds with inductor's on-disk cache, tens of seconds cold).
"""

import math
import warnings

import pytest
import torch

from dcasgd.core import kernels
from dcasgd.core.rules import make_rule
from dcasgd.core.server import PushRejected, ServerCore

P = 4099            # odd: the vector loop's tail is exercised
WORKERS = 3

NO_COMPILER = kernels.compile_disabled_reason()
needs_compiler = pytest.mark.skipif(NO_COMPILER is not None, reason=f"fused kernels off: {NO_COMPILER}")

CASES = [   # (rule, hyperparameters, backup dtype): one per kernel structure, plus the rule variants
    ("sgd", {}, torch.float32),
    ("staleness", {"momentum": 0.9, "wd": 1e-3}, torch.float32),
    ("dc-asgd-c", {"lam": 0.5, "wd": 1e-3}, torch.float32),
    ("dc-asgd-a", {}, torch.float32),
    ("dc-asgd-a", {"per_worker_ms": True, "momentum": 0.5, "wd": 1e-4}, torch.bfloat16),
]
IDS = [f"{r}-{'-'.join(f'{k}={v}' for k, v in h.items()) or 'plain'}-{str(d)[6:]}" for r, h, d in CASES]


def reference_apply(rule, w, g, backup, staleness, lr, state, worker):
    """The original eager implementation of Rule.apply_, kept verbatim as the oracle."""
    step_lr = lr / max(1, staleness) if rule.name == "staleness" else lr
    direction = g
    if rule.needs_backup:
        scratch = state["scratch"]
        torch.sub(w, backup, out=scratch)
        scratch.mul_(g).mul_(g)
        if rule.name == "dc-asgd-c":
            scratch.mul_(rule.lam)
        else:
            ms = state["mean_square"][worker if rule.per_worker_ms else 0]
            ms.mul_(rule.m).addcmul_(g, g, value=1.0 - rule.m)
            scratch.mul_(rule.lam0).div_(ms.add(rule.eps).sqrt_())
        direction = scratch.add_(g)
    if rule.wd:
        if direction is g:
            direction = state["scratch"].copy_(g)
        direction.add_(w, alpha=rule.wd)
    if rule.momentum > 0:
        buf = state["momentum_buffer"]
        if int(state["step"]) == 0:
            buf.copy_(direction)
        else:
            buf.mul_(rule.momentum).add_(direction)
        direction = buf
    w.add_(direction, alpha=-step_lr)
    state["step"] += 1


def program(seed=0, pushes=7):
    """A fixed interleaving of pulls and pushes by WORKERS workers: (worker, grad, staleness, lr)."""
    gen = torch.Generator().manual_seed(seed)
    return [(k % WORKERS, torch.randn(P, generator=gen), k % 4, 0.05 * (1 + 0.1 * k)) for k in range(pushes)]


def run(name, hyper, backup_dtype, apply_fn=None, seed=0):
    """Drive a rule through program(): worker m's backup is the weights at its last push."""
    rule = make_rule(name, **hyper)
    gen = torch.Generator().manual_seed(100 + seed)
    w = torch.randn(P, generator=gen)
    state = rule.init(P, WORKERS)
    backups = torch.stack([w.clone() for _ in range(WORKERS)]).to(backup_dtype)
    for worker, g, staleness, lr in program(seed):
        backup = backups[worker] if rule.needs_backup else None
        if apply_fn is None:
            rule.apply_(w, g, backup, staleness, lr, state, worker)
        else:
            apply_fn(rule, w, g, backup, staleness, lr, state, worker)
        backups[worker].copy_(w)                        # the worker pulls again
    return w, state


def assert_matches(got, want):
    (w, state), (w_ref, state_ref) = got, want
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    for key in state_ref:
        if key != "scratch":                            # scratch is workspace, not state the maths reads
            torch.testing.assert_close(state[key], state_ref[key], rtol=1e-5, atol=1e-6, msg=key)


def assert_identical(a, b):
    assert torch.equal(a[0], b[0])
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key


@pytest.fixture
def eager(monkeypatch):
    monkeypatch.setenv("DCASGD_NO_COMPILE", "1")


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.delenv("DCASGD_NO_COMPILE", raising=False)
    monkeypatch.setenv("DCASGD_COMPILE_MIN_PARAMS", "0")


# ------------------------------------------------------------------ eager chain


@pytest.mark.parametrize("name, hyper, backup_dtype", CASES, ids=IDS)
def test_eager_chain_matches_original_and_repeats_bit_for_bit(eager, name, hyper, backup_dtype):
    assert not kernels.use_fused(10**9)
    got = run(name, hyper, backup_dtype)
    assert_matches(got, run(name, hyper, backup_dtype, reference_apply))
    assert_identical(got, run(name, hyper, backup_dtype))


# ------------------------------------------------------------------ fused kernel


@needs_compiler
@pytest.mark.parametrize("name, hyper, backup_dtype", CASES, ids=IDS)
def test_fused_kernel_matches_original_and_repeats_bit_for_bit(fused, name, hyper, backup_dtype):
    assert kernels.use_fused(P)
    got = run(name, hyper, backup_dtype)
    family = name if name.startswith("dc-") else "sgd"
    key = (family, hyper.get("momentum", 0) > 0, backup_dtype if family != "sgd" else None)
    if family != "sgd" or hyper:                        # plain sgd is a single add_: never compiled
        assert kernels._kernels.get(key) is not None, f"kernel {key} fell back to eager"
    assert_matches(got, run(name, hyper, backup_dtype, reference_apply))
    assert_identical(got, run(name, hyper, backup_dtype))


@needs_compiler
def test_fused_kernel_keeps_exact_semantics(fused):
    """No delay (backup == w): the compensation is exactly zero, so dc-asgd-a and dc-asgd-c take the same
    step bit for bit (and sgd's, to the rounding of eager add_ vs the kernel); first momentum step: buf = d."""
    torch.manual_seed(2)
    w_a = torch.randn(P)
    w_c, w_sgd = w_a.clone(), w_a.clone()
    dc_a, dc_c, sgd = make_rule("dc-asgd-a"), make_rule("dc-asgd-c"), make_rule("sgd")
    s_a, s_c, s_sgd = dc_a.init(P, 1), dc_c.init(P, 1), sgd.init(P, 1)
    for _ in range(3):
        g = torch.randn(P)
        dc_a.apply_(w_a, g, w_a.clone(), 0, 0.1, s_a, 0)
        dc_c.apply_(w_c, g, w_c.clone(), 0, 0.1, s_c, 0)
        sgd.apply_(w_sgd, g, None, 0, 0.1, s_sgd, 0)            # plain sgd: one eager add_, never compiled
        assert torch.equal(w_a, w_c)
        torch.testing.assert_close(w_a, w_sgd, rtol=1e-6, atol=1e-7)
    rule = make_rule("sgd", momentum=0.9)
    w, state, g = torch.zeros(P), rule.init(P, 1), torch.randn(P)
    state["momentum_buffer"].fill_(123.0)              # ignored on the first step
    rule.apply_(w, g, None, 0, 1.0, state, 0)
    assert torch.equal(state["momentum_buffer"], g) and torch.equal(w, -g)


@needs_compiler
def test_server_push_fused_equals_eager_with_bfloat16_backups(monkeypatch):
    def server_run():
        server = ServerCore(torch.linspace(-1, 1, P), "dc-asgd-a", num_workers=2, lr=0.1,
                            backup_dtype=torch.bfloat16, momentum=0.5, per_worker_ms=True)
        gen = torch.Generator().manual_seed(5)
        versions = {m: server.pull(m)[1] for m in range(2)}
        for k in range(6):
            m = k % 2
            server.push(m, torch.randn(P, generator=gen), versions[m])
            versions[m] = server.pull(m)[1]
        with pytest.raises(PushRejected, match="NaN or Inf"):
            server.push(0, torch.full((P,), math.nan), versions[0])
        return server.weights, server.state

    monkeypatch.setenv("DCASGD_NO_COMPILE", "1")
    eager_result = server_run()
    monkeypatch.delenv("DCASGD_NO_COMPILE")
    monkeypatch.setenv("DCASGD_COMPILE_MIN_PARAMS", "0")
    assert_matches(server_run(), eager_result)


@needs_compiler
def test_warm_up_compiles_ahead_of_the_first_push(fused):
    assert kernels.warm_up("dc-asgd-a", momentum=False, backup_dtype=torch.float32)
    assert kernels._kernels[("dc-asgd-a", False, torch.float32)] is not None
    assert not kernels.warm_up("dc-asgd-a", num_params=-1)      # below the threshold: nothing to do


# ------------------------------------------------------------------ when the kernel is used


@needs_compiler
def test_a_server_warms_up_the_kernel_its_rule_uses(fused):
    def server(rule, **hyper):
        return ServerCore(torch.zeros(P), rule, WORKERS, 0.1, **hyper)

    assert server("dc-asgd-a").warm_up()                        # (a structure the cases above compile too)
    assert kernels._kernels[("dc-asgd-a", False, torch.float32)] is not None
    assert server("sgd", momentum=0.9).warm_up()                # momentum: the sgd kernel
    assert not server("sgd").warm_up()                          # plain sgd is one add_: no kernel
    assert not server("staleness").warm_up()


def test_threshold_and_switch(monkeypatch):
    monkeypatch.delenv("DCASGD_COMPILE_MIN_PARAMS", raising=False)
    monkeypatch.setenv("DCASGD_NO_COMPILE", "1")
    assert not kernels.use_fused(10**8)
    assert "DCASGD_NO_COMPILE" in kernels.compile_disabled_reason()
    monkeypatch.setenv("DCASGD_NO_COMPILE", "0")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    monkeypatch.setenv("PATH", "/nonexistent")
    assert "no C++ compiler" in kernels.compile_disabled_reason()
    assert not kernels.use_fused(10**8)
    monkeypatch.undo()
    monkeypatch.delenv("DCASGD_NO_COMPILE", raising=False)
    assert not kernels.use_fused(kernels.COMPILE_MIN_PARAMS - 1)     # small runs never compile
    monkeypatch.setenv("DCASGD_COMPILE_MIN_PARAMS", "2e6")
    assert kernels.compile_min_params() == 2_000_000
    monkeypatch.setenv("DCASGD_COMPILE_MIN_PARAMS", "lots")
    with pytest.raises(ValueError, match="DCASGD_COMPILE_MIN_PARAMS"):
        kernels.use_fused(10)


def test_compile_failure_warns_once_and_falls_back_to_eager(monkeypatch):
    monkeypatch.delenv("DCASGD_NO_COMPILE", raising=False)
    monkeypatch.setenv("DCASGD_COMPILE_MIN_PARAMS", "0")
    monkeypatch.setenv("CXX", "sh")                     # any program on PATH: the check passes
    calls = []

    def broken(key):
        calls.append(key)
        raise RuntimeError("C++ compile failed\ndetails")

    monkeypatch.setattr(kernels, "_compile", broken)
    monkeypatch.setattr(kernels, "_kernels", {})
    with pytest.warns(RuntimeWarning, match=r"C\+\+ compile failed.*using the eager update"):
        got = run("dc-asgd-a", {}, torch.float32)
    assert len(calls) == 1                              # tried once, remembered
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = run("dc-asgd-a", {}, torch.float32)
    assert_identical(got, again)
    monkeypatch.setenv("DCASGD_NO_COMPILE", "1")
    assert_identical(got, run("dc-asgd-a", {}, torch.float32))      # exactly the eager chain


# ------------------------------------------------------------------ all_finite


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", [0, 1, P // 2, P - 1])
def test_all_finite_catches_every_bad_value(bad, where):
    t = torch.randn(P)
    assert kernels.all_finite(t)
    t[where] = bad
    assert not kernels.all_finite(t)


def test_all_finite_is_exact_when_the_sum_overflows():
    t = torch.full((P,), 3e38)                          # finite, but the sum is inf
    assert not bool(torch.isfinite(t.sum()))
    assert kernels.all_finite(t)
    t[7] = -math.inf
    assert not kernels.all_finite(t)
    assert kernels.all_finite(torch.empty(0))

