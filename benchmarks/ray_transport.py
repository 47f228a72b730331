"""Push + pull round trip through our Ray server shard versus a bare Ray actor call.

    python benchmarks/ray_transport.py [--quick] [--repeats N] [--warmups N]

For P in 0.27M, 2.7M and 11M float32 parameters, on a private loopback Ray:

- **ours**: one worker's round trip through a :class:`dcasgd.backends.ray.ServerShard`
  actor, exactly as a worker does it: ``pull_all`` (the shard's ServerCore.pull,
  the weights through the object store, copied into the worker's flat buffer)
  then ``push_all`` (the gradient ``ray.put`` once, the shard checks it and
  applies the update rule, exactly-once bookkeeping);
- **bare**: ``ray.get(actor.echo.remote(array))`` where ``echo`` receives the
  array and returns a preallocated array of the same size: one call, the same
  bytes in each direction, no copy into a buffer at the caller, no work.

Each cell is the median of ``--repeats`` round trips after ``--warmups``
warm-ups; a breakdown at 11M times each stage of one round trip.  The
table goes to stdout and, with the machine, date, git commit and command, to
benchmarks/results/ray_transport.md.  Rule ``sgd`` measures the transport (the update costs are
benchmarked elsewhere); ``dc-asgd-a`` adds the backup copy at the pull and
the compensated update at the push.

The shard replies to a pull with ``ServerCore.pull(worker, copy=False)`` (the
live weights go straight into the object store as the reply, one copy) and
ServerCore's one-pass
finiteness check (``isfinite(grad.sum())``); see docs/ray.md.  The target is
ours at most 1.5x bare at 11M parameters, rule sgd; the report says whether it
is met.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

from dcasgd.backends import ray as rb  # noqa: E402

SIZES = (270_000, 2_700_000, 11_000_000)
TARGET_RATIO = 1.5              # ours / bare at the largest size, rule sgd


@ray.remote(num_cpus=0)
class Echo:
    """A bare actor: receives an array, returns an array of the same size."""

    def __init__(self, size: int) -> None:
        self.reply = np.ones(size, dtype=np.float32)

    def echo(self, array: np.ndarray) -> np.ndarray:
        assert array.size == self.reply.size
        return self.reply


def start_shard(shard_class: type, size: int, rule: str):
    """A one-worker shard actor of ``size`` zero weights (lr 1e-6), on no CPU of its own."""
    return ray.remote(shard_class).options(num_cpus=0).remote(np.zeros(size, dtype=np.float32), rule, 1, 1e-6)


def ours_round_trip(size: int, rule: str):
    """A shard actor and a function doing one worker round trip through it (pull, then push)."""
    shard = start_shard(rb.ServerShard, size, rule)
    ranges = [(0, size)]
    weights = np.empty(size, dtype=np.float32)
    grad = np.full(size, 1e-3, dtype=np.float32)
    seq = iter(range(1, 10**9))

    def round_trip() -> None:
        versions, _ = rb.pull_all([shard], ranges, 0, weights)
        rb.push_all([shard], ranges, 0, next(seq), versions, grad, 1)

    return shard, round_trip


def bare_round_trip(size: int):
    actor = Echo.remote(size)
    array = np.full(size, 1e-3, dtype=np.float32)

    def round_trip() -> None:
        reply = ray.get(actor.echo.remote(array))
        del reply

    return actor, round_trip


class TimedShard(rb.ServerShard):
    """A ServerShard whose pull and push also return their own duration in the actor (seconds)."""

    def timed_pull(self, worker: int):
        start = time.perf_counter()
        result = self.pull(worker)
        return result, time.perf_counter() - start

    def timed_push(self, *args):
        start = time.perf_counter()
        version = self.push(*args)
        return version, time.perf_counter() - start


BREAKDOWN = ("server: ServerCore.pull", "pull call (the weights out through the object store, Ray task overhead)",
             "worker: copy into its flat buffer", "worker: ray.put of the gradient",
             "server: checks + update + seq bookkeeping", "push call (Ray task overhead)")


def breakdown(size: int, repeats: int, warmups: int) -> tuple[list[float], float]:
    """Median ms of each stage of one sgd round trip (``BREAKDOWN``), and of the bare echo, timed in turn."""
    shard = start_shard(TimedShard, size, "sgd")
    echo, bare = bare_round_trip(size)
    weights = np.empty(size, dtype=np.float32)
    grad = np.full(size, 1e-3, dtype=np.float32)
    stages: list[list[float]] = [[] for _ in BREAKDOWN]
    bare_ms: list[float] = []
    try:
        for i in range(repeats + warmups):
            t0 = time.perf_counter()
            (pulled, version, _), server_pull = ray.get(shard.timed_pull.remote(0))
            t1 = time.perf_counter()
            np.copyto(weights, pulled)
            t2 = time.perf_counter()
            del pulled
            grad_ref = ray.put(grad)
            t3 = time.perf_counter()
            _, server_push = ray.get(shard.timed_push.remote(0, i + 1, version, grad_ref, 1))
            t4 = time.perf_counter()
            del grad_ref
            b0 = time.perf_counter()
            bare()
            b1 = time.perf_counter()
            if i >= warmups:
                values = (server_pull, t1 - t0 - server_pull, t2 - t1, t3 - t2, server_push, t4 - t3 - server_push)
                for stage, value in zip(stages, values):
                    stage.append(value * 1e3)
                bare_ms.append((b1 - b0) * 1e3)
    finally:
        ray.kill(shard)
        ray.kill(echo)
    return [statistics.median(t) for t in stages], statistics.median(bare_ms)


def measure(size: int, rules: list[str], repeats: int, warmups: int) -> tuple[float, list[float]]:
    """Median ms of the bare call and of each rule's round trip, timed in turn so each sees the same load."""
    actors, trips = [], []
    actor, trip = bare_round_trip(size)
    actors.append(actor)
    trips.append(trip)
    for rule in rules:
        actor, trip = ours_round_trip(size, rule)
        actors.append(actor)
        trips.append(trip)
    times: list[list[float]] = [[] for _ in trips]
    try:
        for i in range(repeats + warmups):
            for k, trip in enumerate(trips):
                start = time.perf_counter()
                trip()
                if i >= warmups:
                    times[k].append(time.perf_counter() - start)
    finally:
        for actor in actors:
            ray.kill(actor)
    medians = [statistics.median(t) * 1e3 for t in times]
    return medians[0], medians[1:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11, help="timed round trips per cell (default 11)")
    parser.add_argument("--warmups", type=int, default=5,
                        help="untimed round trips first (default 5): each process's first writes into the "
                             "object store page-fault its shared memory in, which would time the kernel")
    parser.add_argument("--quick", action="store_true", help="5 repeats, rule sgd only")
    parser.add_argument("--rules", default="sgd,dc-asgd-a", help="comma-separated rules (default sgd,dc-asgd-a)")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats
    rules = ["sgd"] if args.quick else [r for r in args.rules.split(",") if r]

    rb.init_local_ray(num_cpus=2, object_store_memory=1024**3)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows = []
    try:
        for size in SIZES:
            bare, ours_ms = measure(size, rules, repeats, args.warmups)
            for rule, ours in zip(rules, ours_ms):
                rows.append((size, rule, ours, bare, ours / bare))
                print(f"P={size/1e6:.2f}M {rule}: ours {ours:.2f} ms, bare {bare:.2f} ms, "
                      f"ratio {ours/bare:.2f}", file=sys.stderr, flush=True)
        stages, bare_alone = breakdown(SIZES[-1], repeats, args.warmups)
    finally:
        ray.shutdown()

    parts = ["| stage (ours, rule sgd) | median ms |", "|---|---:|"]
    parts += [f"| {name} | {ms:.2f} |" for name, ms in zip(BREAKDOWN, stages)]
    parts += [f"| **sum of the stages** | **{sum(stages):.2f}** |",
              f"| bare echo, timed in turn with these | {bare_alone:.2f} |"]
    work = stages[0] + stages[2] + stages[4]
    breakdown_text = "\n".join(parts) + f"""

The bare echo does one call and two object-store writes (its argument, its reply). A round trip of ours
also does two writes (the weights in the pull's reply, the gradient at the push) but two calls, and real
work the echo has not: the copy of the weights into the model's buffer and, on the server, the finiteness
check and the update. Server pull, copy and server push together take {work:.2f} ms here, which is
{work / bare_alone:.2f}x the bare echo's time on their own."""

    table = ["| P | rule | ours ms | bare ms | ratio |", "|---:|---|---:|---:|---:|"]
    for size, rule, ours, bare, ratio in rows:
        table.append(f"| {size/1e6:.2f}M | {rule} | {ours:.2f} | {bare:.2f} | {ratio:.2f}x |")
    text = "\n".join(table)
    print(text)
    arguments = argv if argv is not None else sys.argv[1:]
    command = "python " + " ".join([os.path.relpath(__file__, Path.cwd()), *arguments])
    load_after = os.getloadavg()[0]
    row = [r for r in rows if r[0] == SIZES[-1] and r[1] == "sgd"]
    if not row:
        verdict = f"- target (ours at most {TARGET_RATIO}x bare at {SIZES[-1]/1e6:.0f}M, rule sgd): not measured"
    else:
        ratio = row[0][4]
        met = ratio <= TARGET_RATIO
        verdict = (f"- target (ours at most {TARGET_RATIO}x bare at {SIZES[-1]/1e6:.0f}M, rule sgd): "
                   f"{'met' if met else 'NOT met'} (**{ratio:.2f}x**)")
        if not met and max(load_before, load_after) > (os.cpu_count() or 1):
            verdict += (f"; the load average ({load_before:.1f} / {load_after:.1f}) exceeded the "
                        f"{os.cpu_count()} CPUs while it ran, so this figure is an upper bound: rerun on an idle "
                        f"machine before concluding")
    body = f"""python {platform.python_version()}, ray {ray.__version__}, numpy {np.__version__}; median of {repeats}
round trips after {args.warmups} warm-ups, the variants of one size timed in turn; local Ray on 127.0.0.1,
2 CPUs, 1 GiB object store; total benchmark time {time.perf_counter() - started:.0f} s; 1-min load average
{load_before:.1f} at the start, {load_after:.1f} at the end (absolute times are noisy; the variants of one size
are timed in turn so their ratios are comparable).

ours = `pull_all` + `push_all` through one `ServerShard` actor (ServerCore pull, object-store transfer,
copy into the worker's flat buffer; one `ray.put` of the gradient, shape/finite checks, update rule,
exactly-once seq bookkeeping). bare = one call of an actor method that receives the array and returns a
preallocated array of the same size. The shard (a plain actor) replies to a pull with its live weights
(`ServerCore.pull(worker, copy=False)`: one copy, straight into the object store; the asyncio shard 0 of a
real run clones them first) and ServerCore checks finiteness in one pass (`isfinite(grad.sum())`).

{text}

{verdict}

### Where the time goes at {SIZES[-1] / 1e6:.0f}M parameters

{breakdown_text}"""
    path = write_section("ray_transport", "Ray transport: push + pull round trip, ours vs bare Ray", body, [],
                         command=command)
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
