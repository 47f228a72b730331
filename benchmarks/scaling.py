"""Scaling sketch: when one server shard saturates, and what S shards buy.

Model (async, every worker cycle is one pull and one push at the server)::

    t_server(P/S) = t_pull(P/S) + t_push(P/S)    measured here: ServerCore on P/S parameters
    T_cycle       = compute_s + 2 * comm_s        a worker's pull-compute-push cycle
    updates/s     = min(M / (T_cycle + t_server), 1 / t_server(P/S))
    M*(S)         = (T_cycle + t_server) / t_server(P/S)   workers one shard group feeds before it saturates

(The worker waits for its own push and pull, hence T_cycle + t_server; with
t_server << T_cycle this is the plain min(M / T_cycle, 1 / t_server).)

With S shards each holds a contiguous slice of P/S parameters and they work
in parallel (separate processes or machines), so a push costs the time of
its slowest slice.  Two checks of the shape:

- the simulator (``dcasgd.backends.sim.run_sim``, synthetic task, tiny MLP,
  ``comm_time``) for M up to 256: it gives M / T_cycle, the worker-bound
  branch (it has no server service time, so it cannot saturate);
- a FIFO queue model (this file, a few lines of heapq) with the measured
  t_server: it gives the knee at M*.

Writes benchmarks/results/scaling.md.

    python benchmarks/scaling.py [--quick] [--params 11] [--rule dc-asgd-a] [--compute-s 0.1]
                                 [--comm-s 0.005] [--shards 1,2,4,8,16] [--threads T]
"""

from __future__ import annotations

import argparse
import heapq
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import fmt, interleaved, median, set_threads, table  # noqa: E402
from _readme import assemble  # noqa: E402
from _report import write_section  # noqa: E402

from dcasgd.core import kernels  # noqa: E402
from dcasgd.config import TrainConfig  # noqa: E402
from dcasgd.core.rules import make_rule  # noqa: E402
from dcasgd.core.server import ServerCore  # noqa: E402
from dcasgd.backends.sim import run_sim  # noqa: E402

WORKERS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def measure_server(p: int, shards: list[int], rule: str, repeats: int) -> dict[int, dict[str, float]]:
    """Median seconds over P/S parameters, for every S (interleaved): ServerCore pull and push, and the
    work any server must do per update (the rule's update and, for DC rules, the backup copy at the pull)."""
    gen = torch.Generator().manual_seed(0)
    cands = {}
    for s in shards:
        n = -(-p // s)                                       # the largest slice: a push waits for it
        server = ServerCore(torch.randn(n, generator=gen) * 0.1, rule, num_workers=2, lr=1e-4)
        grad = torch.randn(n, generator=gen) * 1e-3
        server.pull(0)
        cands[f"pull {s}"] = lambda server=server: server.pull(1)
        cands[f"push {s}"] = lambda server=server, grad=grad: server.push(0, grad, server.version)
        r, w = make_rule(rule), server.weights.clone()
        state, backup = r.init(n, 1), w.clone() if r.needs_backup else None

        def work(r=r, w=w, grad=grad, backup=backup, state=state):
            if backup is not None:
                backup.copy_(w)
            r.apply_(w, grad, backup, 1, 1e-4, state, 0)
        cands[f"work {s}"] = work
    times = interleaved(cands, repeats)
    return {s: {k: median(times[f"{k} {s}"]) for k in ("pull", "push", "work")} for s in shards}


def queue_model(m: int, cycle: float, service: float, updates: int) -> float:
    """Updates per second of M workers (cycle seconds each) sharing one FIFO server (service seconds)."""
    events = [(cycle, w) for w in range(m)]                  # (time a push reaches the server, worker)
    heapq.heapify(events)
    server_free, done, start_at = 0.0, 0, None
    while done < updates:
        arrive, w = heapq.heappop(events)
        begin = max(arrive, server_free)
        server_free = begin + service
        done += 1
        if done == updates // 5:                            # skip the warm-up fifth
            start_at, start_done = server_free, done
        heapq.heappush(events, (server_free + cycle, w))    # the worker goes on once its push is served
    return (done - start_done) / (server_free - start_at)


def sim_check(comm_s: float, workers: list[int], cycles: int) -> list[list[object]]:
    """The simulator's async updates/s for M workers, against M / T_cycle (compute time 1 s)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        for m in workers:
            cfg = TrainConfig(dataset="synthetic", model="mlp", rule="dc-asgd-a", consistency="async", workers=m,
                              batch_size=8, epochs=1e6, stop_after_updates=cycles * m, base_time=1.0, jitter=0.0,
                              comm_time=comm_s, eval_every=1e6, lr=0.01, progress=False, out=f"{tmp}/{m}")
            start = time.perf_counter()
            s = run_sim(cfg).summary
            measured = s["updates"] / s["sim_time_s"]
            predicted = m / (1.0 + 2 * comm_s)
            rows.append([m, s["updates"], fmt(s["sim_time_s"], 2), fmt(measured, 2), fmt(predicted, 2),
                         fmt(measured / predicted, 3), fmt(time.perf_counter() - start, 1)])
            print(f"  sim M={m}: {measured:.2f} updates/s (model {predicted:.2f})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and simulator sizes")
    parser.add_argument("--params", type=float, default=11.0, help="model size in millions of parameters (default 11)")
    parser.add_argument("--rule", default="dc-asgd-a")
    parser.add_argument("--compute-s", type=float, default=0.1,
                        help="a worker's gradient time in seconds (default 0.1: an 11M-parameter CNN on one "
                             "accelerator; M* scales with it)")
    parser.add_argument("--comm-s", type=float, default=0.005, help="one-way transfer time per message (default 0.005)")
    parser.add_argument("--shards", default="1,2,4,8,16")
    parser.add_argument("--repeats", type=int, default=0, help="timing rounds (default 11, quick 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a Ray server actor)")
    args = parser.parse_args(argv)
    threads_line = set_threads(args.threads)
    p = int(round(args.params * 1e6))
    shards = [int(s) for s in args.shards.split(",")]
    cycle = args.compute_s + 2 * args.comm_s

    print(f"server time per update, P={args.params:g}M", flush=True)
    server = measure_server(p, shards, args.rule, args.repeats or (5 if args.quick else 11))
    t_server = {s: v["pull"] + v["push"] for s, v in server.items()}
    t_work = {s: v["work"] for s, v in server.items()}

    def rate(m: int, t: float) -> float:
        return min(m / (cycle + t), 1 / t)
    bpp = {m: ServerCore(torch.zeros(1000), args.rule, num_workers=m).bytes_per_param() for m in WORKERS}

    srows = []
    for s in shards:
        n = -(-p // s)
        srows.append([s, f"{n / 1e6:.3g}M", "fused" if kernels.use_fused(n) else "eager",
                      fmt(server[s]["pull"] * 1e3, 2), fmt(server[s]["push"] * 1e3, 2), fmt(t_server[s] * 1e3, 2),
                      fmt(1 / t_server[s], 0), fmt((cycle + t_server[s]) / t_server[s], 1),
                      fmt(t_work[s] * 1e3, 2), fmt((cycle + t_work[s]) / t_work[s], 1)])
    grid = []
    for m in WORKERS:
        row = [m]
        for s in shards:
            saturated = m * t_server[s] > cycle + t_server[s]
            row.append(f"{rate(m, t_server[s]):.0f}" + (" *" if saturated else ""))
        row.append(f"{bpp[m] * p / 1e9:.1f} / {bpp[m] * p / 1e9 / max(shards):.2f}")
        grid.append(row)
    qrows = []
    s0 = max(shards)                                         # the largest knee: the most informative check
    for m in WORKERS:
        measured = queue_model(m, cycle, t_server[s0], updates=max(2000, 20 * m))
        predicted = rate(m, t_server[s0])
        qrows.append([m, fmt(measured, 1), fmt(predicted, 1), fmt(measured / predicted, 3)])
    print("simulator check", flush=True)
    sim_rows = sim_check(args.comm_s, [1, 4, 16, 64] if args.quick else [1, 4, 16, 64, 256], 3)

    knee = {s: (cycle + t_server[s]) / t_server[s] for s in shards}
    knee_work = {s: (cycle + t_work[s]) / t_work[s] for s in shards}
    body = "\n\n".join([
        f"P = {args.params:g}M parameters, rule `{args.rule}`, T_cycle = compute {args.compute_s:g} s + 2 x comm "
        f"{args.comm_s:g} s = {cycle:g} s; {threads_line}.  Server time per update = pull + push of one "
        "`ServerCore` over the largest slice, median of interleaved rounds (push includes the finite check; "
        "slices under the fused-kernel threshold use the eager chain).",
        table(["S", "P/S", "update path", "pull ms", "push ms", "t_server ms", "max updates/s (1/t_server)",
               "M*", "update + backup copy only, ms", "M* if only that"], srows),
        "The last two columns are the work any server must do per update (the rule's update, and the backup "
        "copy for DC rules); the gap to `t_server` is ServerCore's own overhead: mostly the copy of the weights "
        "handed out at the pull (`weights.clone()`, a fresh P-sized allocation that page-faults here; a Ray shard "
        "serialises the weights instead), then the push's validation.  A slice below the fused-kernel threshold "
        "takes the eager chain, which costs more per parameter.",
        "Predicted updates/s, min(M / (T_cycle + t_server), 1 / t_server(P/S)); `*` = server-bound (saturated).  "
        "Last column: "
        f"server memory in GB for M workers (`bytes_per_param` x P), all in one shard / per shard at S={max(shards)}.",
        table(["M", *[f"S={s}" for s in shards], f"memory GB (S=1 / S={max(shards)})"], grid),
        f"Queue-model check of the knee at S={s0} (FIFO server, service time t_server, deterministic cycles):",
        table(["M", "queue model updates/s", "min() formula", "ratio"], qrows),
        "Simulator check of the worker-bound branch (synthetic task, tiny MLP, compute 1 s, comm "
        f"{args.comm_s:g} s, no jitter, 3 cycles per worker; the simulator charges no server time):",
        table(["M", "updates", "sim s", "sim updates/s", "M / T_cycle", "ratio", "wall s"], sim_rows),
        "- Saturation point M* (P = " + f"{args.params:g}M, T_cycle {cycle:g} s): "
        + ", ".join(f"**{knee[s]:.1f}** (S={s})" for s in shards)
        + " workers with ServerCore as it is; " + ", ".join(f"{knee_work[s]:.1f} (S={s})" for s in shards)
        + " if a push cost only the update and the backup copy.\n"
        + f"- Checks: queue model / formula within {max(abs(float(r[3]) - 1) for r in qrows):.1%} for M up to "
        + f"{WORKERS[-1]}; simulator / (M / T_cycle) within "
        + f"{max(abs(float(r[5]) - 1) for r in sim_rows):.1%} for M up to {sim_rows[-1][0]} (worker-bound branch: "
        + "the simulator charges no server time; the knee comes from the queue model).",
    ])
    path = write_section("scaling", "Scaling sketch (`benchmarks/scaling.py`)", body,
                         sys.argv if argv is None else ["scaling.py", *argv])
    print(body.split("\n\n")[-1])
    print(f"wrote {path} and {assemble()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
