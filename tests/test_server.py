"""ServerCore: validation, counters, state_dict round trips (property tests), sharding."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcasgd.core.server import PushRejected, ServerCore, StateMismatch, shard_ranges

P = 6


def make(rule="dc-asgd-a", workers=2, **kw):
    return ServerCore(torch.arange(P, dtype=torch.float32), rule, num_workers=workers, lr=0.1, **kw)


def snapshot(server):
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in server.state_dict().items()}


def assert_same_state(a, b, ignore=()):
    assert a.keys() == b.keys()
    for key in a:
        if key in ignore:
            continue
        x, y = a[key], b[key]
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                assert torch.equal(x[k], y[k]) if isinstance(x[k], torch.Tensor) else x[k] == y[k], key
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y), key
        else:
            assert x == y, key


def test_pull_records_backup_and_push_applies_rule():
    server = make("dc-asgd-c", lam=0.5)
    w0, v0 = server.pull(0)
    assert v0 == 0 and torch.equal(w0, torch.arange(P, dtype=torch.float32))
    server.pull(1)
    g = torch.ones(P)
    assert server.push(1, g, 0) == 1                    # no delay yet: plain sgd step
    assert torch.allclose(server.weights, w0 - 0.1)
    w1 = server.weights.clone()
    server.push(0, g, 0)                                # staleness 1; backup of worker 0 is w0
    expected = w1 - 0.1 * (g + 0.5 * g * g * (w1 - w0))
    torch.testing.assert_close(server.weights, expected)
    assert server.counters()["pushes"] == [1, 1]
    assert server.counters()["staleness_max"] == [1, 0]


def test_sgd_keeps_no_backups():
    server = make("sgd")
    assert server.backups is None
    server.pull(0)
    server.push(0, torch.ones(P), 0)
    assert server.bytes_per_param() == pytest.approx(4 + 8 / P)   # weights and the step counter


def test_bytes_per_param_counts_backups_and_state():
    server = make("dc-asgd-a", workers=4)
    # weights 4 + scratch 4 + mean square 4 + backups 4*4 bytes per parameter, plus the step counter
    assert server.bytes_per_param() == pytest.approx(4 + 4 + 4 + 16 + 8 / P)
    half = make("dc-asgd-a", workers=4, backup_dtype=torch.bfloat16)
    assert half.bytes_per_param() == pytest.approx(4 + 4 + 4 + 8 + 8 / P)


@pytest.mark.parametrize("grad, base, worker, message", [
    (torch.ones(P + 1), 0, 0, "shape"),
    (torch.ones(P, dtype=torch.float64), 0, 0, "dtype"),
    (torch.tensor([1, 2, math.nan, 4, 5, 6], dtype=torch.float32), 0, 0, "NaN or Inf"),
    (torch.tensor([1, 2, math.inf, 4, 5, 6], dtype=torch.float32), 0, 0, "NaN or Inf"),
    (torch.ones(P), 5, 0, "from the future"),
    (torch.ones(P), -1, 0, "negative"),
    ([1.0] * P, 0, 0, "torch.Tensor"),
    (torch.ones(P), 0, 7, "unknown worker 7"),
    (torch.ones(P), 0, -1, "unknown worker -1"),
])
def test_bad_push_is_refused_and_changes_nothing(grad, base, worker, message):
    server = make()
    server.pull(0)
    before = snapshot(server)
    with pytest.raises(PushRejected, match=message):
        server.push(worker, grad, base)
    assert_same_state(before, snapshot(server), ignore=("refused",))
    if 0 <= worker < 2:
        assert server.refused[worker] == 1


def test_dc_push_before_pull_is_refused():
    server = make("dc-asgd-c")
    with pytest.raises(PushRejected, match="before its first pull"):
        server.push(0, torch.ones(P), 0)


def test_state_dict_round_trip_and_mismatch():
    server = make("dc-asgd-a", workers=2, momentum=0.9)
    for k in range(4):
        server.pull(k % 2)
        server.push(k % 2, torch.full((P,), 0.1 * (k + 1)), server.version)
    sd = server.state_dict()
    other = make("dc-asgd-a", workers=2, momentum=0.9)
    other.load_state_dict(sd)
    assert_same_state(sd, other.state_dict())
    with pytest.raises(StateMismatch, match="rule"):
        make("sgd", workers=2).load_state_dict(sd)
    with pytest.raises(StateMismatch, match="num_workers"):
        make("dc-asgd-a", workers=3).load_state_dict(sd)
    with pytest.raises(StateMismatch, match="format"):
        other.load_state_dict({"weights": torch.zeros(P)})
    bigger = ServerCore(torch.zeros(P + 2), "dc-asgd-a", num_workers=2, momentum=0.9)
    with pytest.raises(StateMismatch, match="shape"):
        bigger.load_state_dict(sd)


ops = st.lists(st.tuples(
    st.sampled_from(["pull", "push", "bad_shape", "nan", "future", "bad_worker"]),
    st.integers(0, 2), st.floats(-2, 2, allow_nan=False, width=32)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(rule=st.sampled_from(["sgd", "staleness", "dc-asgd-c", "dc-asgd-a"]), program=ops)
def test_random_programs_keep_invariants(rule, program):
    server = ServerCore(torch.linspace(-1, 1, P), rule, num_workers=3, lr=0.05, momentum=0.5)
    pulled = {}
    versions = [server.version]
    for op, worker, value in program:
        before = snapshot(server)
        grad = torch.full((P,), value)
        if op == "pull":
            _, pulled[worker] = server.pull(worker)
            continue
        if op == "push" and worker in pulled:
            server.push(worker, grad, pulled[worker])
        else:
            bad = {"push": (worker, grad, 10**6), "bad_shape": (worker, torch.ones(P - 1), 0),
                   "nan": (worker, torch.full((P,), math.nan), 0), "future": (worker, grad, server.version + 1),
                   "bad_worker": (3 + worker, grad, 0)}[op]
            with pytest.raises(PushRejected):
                server.push(*bad)
            assert_same_state(before, snapshot(server), ignore=("refused",))
        versions.append(server.version)
        assert versions == sorted(versions)
    copy = ServerCore(torch.zeros(P), rule, num_workers=3, lr=0.05, momentum=0.5)
    copy.load_state_dict(server.state_dict())
    assert_same_state(server.state_dict(), copy.state_dict())


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 500), min_size=1, max_size=20), shards=st.integers(1, 12))
def test_shard_ranges_cover_and_only_cut_large_tensors(sizes, shards):
    total = sum(sizes)
    if shards > total:
        with pytest.raises(ValueError, match="shards"):
            shard_ranges(sizes, shards)
        return
    ranges = shard_ranges(sizes, shards)
    assert len(ranges) == shards
    assert ranges[0][0] == 0 and ranges[-1][1] == total
    assert all(a < b for a, b in ranges)
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(shards - 1))
    target = math.ceil(total / shards)
    starts = [0]
    for s in sizes:
        starts.append(starts[-1] + s)
    for _, end in ranges[:-1]:
        if end not in starts:                             # a cut inside a tensor ...
            k = max(i for i, s in enumerate(starts) if s < end)
            assert sizes[k] > target, (sizes, shards, ranges)   # ... only of one larger than a shard


def test_shard_ranges_balanced_on_equal_tensors():
    assert shard_ranges([10] * 8, 4) == [(0, 20), (20, 40), (40, 60), (60, 80)]
    assert shard_ranges([100], 3) == [(0, 33), (33, 67), (67, 100)]
