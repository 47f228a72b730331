"""Push + pull round trip through our Ray server shard versus a bare Ray actor call.

    python benchmarks/ray_transport.py [--quick] [--repeats N] [--out benchmarks/results/ray_transport.md]

For P in 0.27M, 2.7M and 11M float32 parameters, on a private loopback Ray:

- **ours**: one worker's round trip through a :class:`dcasgd.ray_backend.ServerShard`
  actor, exactly as a worker does it: ``pull_all`` (the shard's ServerCore.pull,
  the weights through the object store, copied into the worker's flat buffer)
  then ``push_all`` (the gradient ``ray.put`` once, the shard checks it and
  applies the update rule, exactly-once bookkeeping);
- **bare**: ``ray.get(actor.echo.remote(array))`` where ``echo`` receives the
  array and returns a preallocated array of the same size: one call, the same
  bytes in each direction, no copy into a buffer at the caller, no work.

Each cell is the median of ``--repeats`` round trips after two warm-ups.  The
table goes to stdout and, with the machine, date, git commit and command, to
``--out``.  Rule ``sgd`` measures the transport (the update costs are
benchmarked elsewhere); ``dc-asgd-a`` adds the backup copy at the pull and
the compensated update at the push.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import ray

from dcasgd import ray_backend as rb

SIZES = (270_000, 2_700_000, 11_000_000)


@ray.remote(num_cpus=0)
class Echo:
    """A bare actor: receives an array, returns an array of the same size."""

    def __init__(self, size: int) -> None:
        self.reply = np.ones(size, dtype=np.float32)

    def echo(self, array: np.ndarray) -> np.ndarray:
        assert array.size == self.reply.size
        return self.reply


def time_ours(size: int, rule: str, repeats: int) -> float:
    shard = ray.remote(rb.ServerShard).options(num_cpus=0).remote(
        np.zeros(size, dtype=np.float32), rule, 1, 1e-6)
    ranges = [(0, size)]
    weights = np.empty(size, dtype=np.float32)
    grad = np.full(size, 1e-3, dtype=np.float32)
    times = []
    try:
        for seq in range(1, repeats + 3):
            start = time.perf_counter()
            versions, _ = rb.pull_all([shard], ranges, 0, weights)
            rb.push_all([shard], ranges, 0, seq, versions, grad, 1)
            times.append(time.perf_counter() - start)
    finally:
        ray.kill(shard)
    return statistics.median(times[2:]) * 1e3


def time_bare(size: int, repeats: int) -> float:
    actor = Echo.remote(size)
    array = np.full(size, 1e-3, dtype=np.float32)
    times = []
    try:
        for _ in range(repeats + 2):
            start = time.perf_counter()
            reply = ray.get(actor.echo.remote(array))
            times.append(time.perf_counter() - start)
            del reply
    finally:
        ray.kill(actor)
    return statistics.median(times[2:]) * 1e3


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed round trips per cell (default 15)")
    parser.add_argument("--quick", action="store_true", help="5 repeats, rule sgd only")
    parser.add_argument("--rules", default="sgd,dc-asgd-a", help="comma-separated rules (default sgd,dc-asgd-a)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "ray_transport.md"))
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else args.repeats
    rules = ["sgd"] if args.quick else [r for r in args.rules.split(",") if r]

    rb.init_local_ray(num_cpus=2, object_store_memory=1024**3)
    started = time.perf_counter()
    rows = []
    try:
        for size in SIZES:
            bare = time_bare(size, repeats)
            for rule in rules:
                ours = time_ours(size, rule, repeats)
                rows.append((size, rule, ours, bare, ours / bare))
                print(f"P={size/1e6:.2f}M {rule}: ours {ours:.2f} ms, bare {bare:.2f} ms, ratio {ours/bare:.2f}",
                      file=sys.stderr, flush=True)
    finally:
        ray.shutdown()

    table = ["| P | rule | ours ms | bare ms | ratio |", "|---:|---|---:|---:|---:|"]
    for size, rule, ours, bare, ratio in rows:
        table.append(f"| {size/1e6:.2f}M | {rule} | {ours:.2f} | {bare:.2f} | {ratio:.2f}x |")
    text = "\n".join(table)
    print(text)
    command = "python " + " ".join([os.path.relpath(__file__, Path.cwd())] + (argv if argv is not None else sys.argv[1:]))
    target = [r for r in rows if r[0] == SIZES[-1] and r[1] == "sgd"]
    verdict = (f"Target (ours at most 1.5x bare at 11M, rule sgd): {'met' if target[0][4] <= 1.5 else 'NOT met'} "
               f"({target[0][4]:.2f}x)." if target else "")
    report = f"""# Ray transport: push + pull round trip, ours vs bare Ray

- machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs
- python {platform.python_version()}, ray {ray.__version__}, numpy {np.__version__}
- date: {dt.datetime.now().isoformat(timespec="seconds")}
- git commit: {git_commit()}
- command: `{command}`
- median of {repeats} round trips after 2 warm-ups; local Ray on 127.0.0.1, 2 CPUs, 1 GiB object store;
  total benchmark time {time.perf_counter() - started:.0f} s

ours = `pull_all` + `push_all` through one `ServerShard` actor (ServerCore pull, object-store transfer,
copy into the worker's flat buffer; one `ray.put` of the gradient, shape/finite checks, update rule,
exactly-once seq bookkeeping). bare = one call of an actor method that receives the array and returns a
preallocated array of the same size.

{text}

{verdict}
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report, encoding="utf-8")
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
