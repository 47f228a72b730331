"""Server update speed, server memory, and what bfloat16 backups cost in accuracy.

1. Per-push time of every rule on a flat float32 vector of P parameters,
   through ``ServerCore.push`` (validation included) and the bare
   ``Rule.apply_``, beside a same-run baseline of ``dst.copy_(src)`` moving
   the same number of bytes.  Bytes a push must touch, per parameter
   (defaults: no momentum, no weight decay):

       sgd, staleness,  w read+written, g read                  12 B
       delay-adaptive
       dc-asgd-c        + backup read                           16 B (14 B with bfloat16 backups)
       dc-asgd-a        + backup read, ms read+written          24 B (22 B)
       gap-aware        + backup read, v read+written           24 B
       adadelay         + S (sum of g*g) read+written           20 B
       dana             + own v_m and sum_k v_k read+written    28 B
       ServerCore.push  + the guard's read of g (g . g)        +4 B

   The four rules after dc-asgd-a (issue 14) run as eager op chains at every
   P; the targets are for dc-asgd-a.

   The guard: ``ServerCore.push`` proves, before applying an update, that it
   leaves finite weights (``g . g`` bounds the gradient, tracked norm bounds
   the rest; see ``dcasgd.core.server``).  Its cost is that one read of g plus a
   few scalar operations, reported as ``push - bare`` beside ``g . g`` alone
   and the plain finite check ``kernels.all_finite(g)`` it replaced.

   GB/s = those bytes / median time; the copy's bytes are read + written.
   Targets at P = 11M and 25M: dc-asgd-a at most 3x the time of sgd, and at
   least 50% of the copy's GB/s.
2. Compile time of the fused kernel (fresh process, empty and warm inductor cache).
3. Server bytes per parameter (``ServerCore.bytes_per_param``) per rule, M and backup dtype.
4. Final test error of the fmnist-mlp preset, 16 simulated workers, DC-ASGD-a with
   float32 vs bfloat16 backups.

Writes benchmarks/results/server_update.md.

    python benchmarks/server_update.py [--quick] [--sizes 0.27,2.7,11,25] [--repeats N] [--threads T]
                                       [--no-compile-time] [--no-accuracy] [--epochs E] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _bench import fmt, interleaved, median, set_threads, table, verdict  # noqa: E402
from _readme import assemble  # noqa: E402
from _report import write_section  # noqa: E402

from dcasgd.core import kernels  # noqa: E402
from dcasgd.core.rules import RULES, make_rule  # noqa: E402
from dcasgd.core.server import ServerCore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_RATIO, TARGET_COPY_SHARE = 3.0, 0.50
TARGET_SIZES = (11_000_000, 25_000_000)


def rule_bytes(rule: str, backup_bytes: int = 4, push: bool = False) -> int:
    """Bytes per parameter one update must touch (see the module docstring)."""
    base = {"sgd": 12, "staleness": 12, "delay-adaptive": 12, "dc-asgd-c": 12 + backup_bytes,
            "dc-asgd-a": 20 + backup_bytes, "gap-aware": 20 + backup_bytes, "adadelay": 20, "dana": 28}[rule]
    return base + (4 if push else 0)


def label(p: int) -> str:
    return f"{p / 1e6:g}M"


# ------------------------------------------------------------------ 1. per-push time


def time_size(p: int, repeats: int) -> dict:
    """Median seconds per call of every candidate at size p, interleaved."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(p, generator=gen) * 1e-3
    w0 = torch.randn(p, generator=gen) * 0.1
    lr = 1e-4
    cands: dict[str, object] = {}
    nbytes: dict[str, int] = {}

    def add_push(name: str, rule: str, backup_dtype: torch.dtype = torch.float32) -> None:
        server = ServerCore(w0, rule, num_workers=1, lr=lr, backup_dtype=backup_dtype)
        server.pull(0)
        cands[name] = lambda: server.push(0, g, server.version)
        nbytes[name] = rule_bytes(rule, 2 if backup_dtype == torch.bfloat16 else 4, push=True)

    def add_bare(name: str, rule: str, backup_dtype: torch.dtype = torch.float32, eager: bool = False) -> None:
        r = make_rule(rule).resolved(1)          # one worker (delay-adaptive: tau_c = 1)
        state, w = r.init(p, 1), w0.clone()
        backup = w0.to(backup_dtype) if r.needs_backup else None
        if eager:
            def call():
                os.environ["DCASGD_NO_COMPILE"] = "1"
                try:
                    r.apply_(w, g, backup, 1, lr, state, 0)
                finally:
                    del os.environ["DCASGD_NO_COMPILE"]
        else:
            def call():
                r.apply_(w, g, backup, 1, lr, state, 0)
        cands[name] = call
        nbytes[name] = rule_bytes(rule, 2 if backup_dtype == torch.bfloat16 else 4)

    for rule in RULES:
        add_push(f"push {rule}", rule)
    add_push("push dc-asgd-a bf16", "dc-asgd-a", torch.bfloat16)
    for rule in RULES:
        add_bare(f"bare {rule}", rule)
    add_bare("bare dc-asgd-a bf16", "dc-asgd-a", torch.bfloat16)
    add_bare("bare dc-asgd-a eager", "dc-asgd-a", eager=True)
    cands["isfinite(g).all()"] = lambda: bool(torch.isfinite(g).all())
    nbytes["isfinite(g).all()"] = 4
    cands["kernels.all_finite(g)"] = lambda: kernels.all_finite(g)
    nbytes["kernels.all_finite(g)"] = 4
    cands["g . g (the guard)"] = lambda: torch.dot(g, g).item()
    nbytes["g . g (the guard)"] = 4
    copies = {}
    for b in sorted(set(nbytes.values()) - {4}):
        n = b * p // 8                                   # n floats read + n written = b*p bytes
        src, dst = torch.ones(n), torch.empty(n)
        copies[b] = f"copy {b}B"
        cands[copies[b]] = lambda src=src, dst=dst: dst.copy_(src)
        nbytes[copies[b]] = b
    times = interleaved(cands, repeats)
    return {"times": {k: median(v) for k, v in times.items()}, "best": {k: min(v) for k, v in times.items()},
            "bytes": nbytes, "copies": copies}


def speed_section(sizes: list[int], repeats_of, threads_line: str) -> tuple[str, list[str], dict]:
    rows, checks, figures = [], [], {}
    for p in sizes:
        start = time.perf_counter()
        r = time_size(p, repeats_of(p))
        t, nb = r["times"], r["bytes"]
        print(f"  P={label(p)}: {time.perf_counter() - start:.0f}s", flush=True)
        gbs = {k: nb[k] * p / t[k] / 1e9 for k in t}
        for name in t:
            if name.startswith("copy"):
                continue
            copy = r["copies"].get(nb[name])
            base = "push sgd" if name.startswith("push") else "bare sgd" if name.startswith("bare") else None
            rows.append([label(p), name, nb[name], fmt(t[name] * 1e3, 3), fmt(r["best"][name] * 1e3, 3),
                         fmt(gbs[name], 1), fmt(gbs[copy], 1) if copy else "-",
                         f"{100 * gbs[name] / gbs[copy]:.0f}%" if copy else "-",
                         fmt(t[name] / t[base], 2) if base else "-"])
        fused = kernels.use_fused(p)
        for path in ("bare", "push"):
            ratio = t[f"{path} dc-asgd-a"] / t[f"{path} sgd"]
            share = gbs[f"{path} dc-asgd-a"] / gbs[r["copies"][nb[f"{path} dc-asgd-a"]]]
            eager_ratio = t["bare dc-asgd-a eager"] / t["bare sgd"]
            figures[(label(p), path)] = {"ratio": ratio, "copy_share": share, "eager_ratio": eager_ratio}
            if p in TARGET_SIZES:
                why_ratio = why_share = ""
                if ratio > TARGET_RATIO:
                    why_ratio = (f"{ratio / TARGET_RATIO:.2f}x over; dc-asgd-a must move "
                                 f"{nb[f'{path} dc-asgd-a'] / nb[f'{path} sgd']:.2f}x the bytes of sgd"
                                 + ("" if fused else "; the fused kernel is off here: "
                                    + str(kernels.compile_disabled_reason())))
                if share < TARGET_COPY_SHARE:
                    overhead = t["push dc-asgd-a"] - t["bare dc-asgd-a"]
                    why_share = (f"short by {100 * (TARGET_COPY_SHARE - share):.0f} points"
                                 + (f"; ServerCore.push adds {overhead * 1e3:.1f} ms "
                                    f"({100 * overhead / t['push dc-asgd-a']:.0f}% of the push) to the bare update: "
                                    "its validation (for scale: `torch.isfinite(g).all()` takes "
                                    f"{t['isfinite(g).all()'] * 1e3:.1f} ms, `kernels.all_finite(g)` "
                                    f"{t['kernels.all_finite(g)'] * 1e3:.1f} ms)" if path == "push" else "")
                                 + ("" if fused else "; fused kernel off: " + str(kernels.compile_disabled_reason())))
                r_txt = verdict(ratio <= TARGET_RATIO, f"dc-asgd-a / sgd time **{ratio:.2f}x**",
                                f"<= {TARGET_RATIO:g}x", why_ratio)
                s_txt = verdict(share >= TARGET_COPY_SHARE, f"dc-asgd-a at **{100 * share:.0f}%** of the copy's GB/s",
                                f">= {100 * TARGET_COPY_SHARE:.0f}%", why_share)
                checks.append(f"- P={label(p)}, {path}: {r_txt}; {s_txt}; eager op chain / sgd: {eager_ratio:.1f}x")
        checks.append(f"- P={label(p)}: finite check `torch.isfinite(g).all()` {fmt(t['isfinite(g).all()'] * 1e3, 2)} ms "
                      f"vs `kernels.all_finite(g)` {fmt(t['kernels.all_finite(g)'] * 1e3, 2)} ms "
                      f"(push sgd {fmt(t['push sgd'] * 1e3, 2)} ms, bare sgd {fmt(t['bare sgd'] * 1e3, 2)} ms)")
        guard = {rule: t[f"push {rule}"] - t[f"bare {rule}"] for rule in ("sgd", "dc-asgd-a")}
        checks.append(f"- P={label(p)}: the finite-weights guard (validation + proof) costs push - bare = "
                      f"{fmt(guard['sgd'] * 1e3, 3)} ms for sgd ({100 * guard['sgd'] / t['push sgd']:.0f}% of its push), "
                      f"{fmt(guard['dc-asgd-a'] * 1e3, 3)} ms for dc-asgd-a "
                      f"({100 * guard['dc-asgd-a'] / t['push dc-asgd-a']:.0f}%); its read `g . g` alone "
                      f"{fmt(t['g . g (the guard)'] * 1e3, 3)} ms, the old `kernels.all_finite(g)` "
                      f"{fmt(t['kernels.all_finite(g)'] * 1e3, 3)} ms")
    header = ["P", "what", "B/param", "median ms", "best ms", "GB/s", "copy GB/s (same bytes)", "% of copy",
              "x sgd (same path)"]
    body = (f"{threads_line}.  Fused kernel (torch.compile) used for P >= {label(kernels.compile_min_params())}"
            f"{'' if kernels.compile_disabled_reason() is None else ' -- OFF here: ' + str(kernels.compile_disabled_reason())}"
            "; below it the eager in-place chain.  `push` = `ServerCore.push` (validation included), "
            "`bare` = `Rule.apply_`; `eager` = the op-by-op chain at any P (DCASGD_NO_COMPILE=1).  Median over "
            "interleaved rounds; `best` = fastest round.  Copy baseline: `dst.copy_(src)` with "
            "src and dst each half the bytes (read + written = the rule's bytes); where it reaches fewer GB/s than "
            "sgd's in-place `add_` over the same bytes (memcpy's write stream pays a read-for-ownership that an "
            "in-place update does not), `% of copy` exceeds 100% and `x sgd` is the stricter yardstick.\n\n"
            + table(header, rows))
    return body, checks, figures


# ------------------------------------------------------------------ 2. compile time


COMPILE_PROBE = r"""
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
t0 = time.perf_counter()
from dcasgd.core import kernels
from dcasgd.core.server import ServerCore
p = int(sys.argv[1])
server = ServerCore(torch.zeros(p), "dc-asgd-a", num_workers=1, lr=0.1)
server.pull(0)
g = torch.full((p,), 1e-3)
t1 = time.perf_counter(); server.push(0, g, 0); first = time.perf_counter() - t1
steady = []
for _ in range(5):
    t1 = time.perf_counter(); server.push(0, g, server.version); steady.append(time.perf_counter() - t1)
print(json.dumps({"first_push_s": first, "steady_push_s": sorted(steady)[2],
                  "compile_s": sum(kernels.compile_seconds.values()), "fused": kernels.use_fused(p)}))
"""


def compile_section(threads: int) -> tuple[str, dict]:
    p = kernels.compile_min_params()
    results = {}
    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        env.pop("DCASGD_NO_COMPILE", None)
        for which in ("cold (empty inductor cache)", "warm (same cache, new process)"):
            proc = subprocess.run([sys.executable, "-c", COMPILE_PROBE, str(p), str(max(threads, 0))],
                                  capture_output=True, text=True, env=env, timeout=900)
            if proc.returncode != 0:
                results[which] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                results[which] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  compile {which}: {results[which]}", flush=True)
    rows = [[w, fmt(r.get("compile_s"), 1), fmt(r.get("first_push_s"), 2), fmt(1e3 * r["steady_push_s"], 2)
             if "steady_push_s" in r else "-", r.get("error", "")] for w, r in results.items()]
    body = (f"First push of dc-asgd-a at P = {label(p)} (the compile threshold) in a fresh process: the kernel is "
            "compiled and self-checked on the first push of each kernel structure (rule family, momentum, backup "
            "dtype), then cached for the process (any length: dynamic shape) and in inductor's on-disk cache.  "
            "Runs with P below the threshold never compile.\n\n"
            + table(["inductor cache", "compile + self-check s", "first push s", "later push ms", "error"], rows))
    return body, results


# ------------------------------------------------------------------ 3. memory


def memory_section() -> str:
    workers = (1, 4, 8, 16, 32)
    rows = []
    for rule in RULES:
        for dtype in (torch.float32, torch.bfloat16):
            if dtype == torch.bfloat16 and not make_rule(rule).needs_backup:
                continue
            cells = [fmt(ServerCore(torch.zeros(1000), rule, num_workers=m, backup_dtype=dtype).bytes_per_param(), 0)
                     for m in workers]
            rows.append([rule, str(dtype).replace("torch.", ""), *cells])
    return ("`ServerCore.bytes_per_param()` (weights, rule state, per-worker backups; defaults: no momentum, global "
            "ms).  The rule state includes a 4 B/param `scratch` buffer that only the eager path uses.\n\n"
            + table(["rule", "backups", *[f"M={m}" for m in workers]], rows))


# ------------------------------------------------------------------ 4. bfloat16 accuracy


def accuracy_section(epochs: float, seeds: list[int]) -> tuple[str, dict]:
    from dcasgd.config import TrainConfig
    from dcasgd.presets import load_preset
    from dcasgd.backends.sim import run_sim

    preset = load_preset("fmnist-mlp")
    errors: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bf16-acc-") as tmp:
        for seed in seeds:
            for dtype in errors:
                cfg = TrainConfig(**{**preset, "rule": "dc-asgd-a", "consistency": "async", "workers": 16,
                                     "epochs": epochs, "seed": seed, "backup_dtype": dtype, "progress": False,
                                     "out": f"{tmp}/{dtype}-{seed}"})
                errors[dtype].append(run_sim(cfg).summary["final_test_error"])
                print(f"  accuracy {dtype} seed {seed}: {errors[dtype][-1]:.2f}%", flush=True)
    spent = time.perf_counter() - start
    rows = [[dtype, *[fmt(e, 2) for e in errs], fmt(sum(errs) / len(errs), 2)] for dtype, errs in errors.items()]
    diff = [b - f for f, b in zip(errors["float32"], errors["bfloat16"])]
    body = (f"Preset `fmnist-mlp` (Fashion-MNIST, MLP 784-256-256-10, batch {preset['batch_size']}, "
            f"lr {preset['lr']:g} {preset['lr_schedule']} schedule), DC-ASGD-a async, 16 simulated workers, "
            f"{epochs:g} epochs (the preset runs {preset['epochs']:g}), seeds {seeds}; "
            f"`dcasgd.backends.sim.run_sim(TrainConfig(..., workers=16, backup_dtype=...))`; {spent:.0f} s in all.\n\n"
            + table(["backups", *[f"test error % seed {s}" for s in seeds], "mean"], rows)
            + f"\n\nbfloat16 - float32 final test error: {', '.join(f'{d:+.2f}' for d in diff)} points "
              f"(mean {sum(diff) / len(diff):+.2f}).  Backups hold weights the worker pulled; only the correction "
              "term g*g*(w - backup) reads them, so their rounding (8 mantissa bits) perturbs a small term.")
    return body, errors


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats; accuracy with 1 seed x 2 epochs")
    parser.add_argument("--sizes", default="0.27,2.7,11,25", help="millions of parameters (default 0.27,2.7,11,25)")
    parser.add_argument("--repeats", type=int, default=0, help="rounds per size (default 31/15, quick 11/5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 0 = torch's default (default 1: a Ray server actor "
                             "runs with one, and a shared 2-core box stalls OpenMP regions of 2)")
    parser.add_argument("--no-compile-time", action="store_true", help="skip the compile-time probe")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the bfloat16 accuracy runs")
    parser.add_argument("--epochs", type=float, default=0, help="accuracy epochs (default 3, quick 2)")
    parser.add_argument("--seeds", default="", help="accuracy seeds (default 0,1, quick 0)")
    args = parser.parse_args(argv)
    threads_line = set_threads(args.threads)
    sizes = [int(round(float(s) * 1e6)) for s in args.sizes.split(",")]

    def repeats_of(p: int) -> int:
        if args.repeats:
            return args.repeats
        small = p < 1_000_000
        return (11 if small else 5) if args.quick else (31 if small else 15)

    print("server update speed", flush=True)
    speed, checks, figures = speed_section(sizes, repeats_of, threads_line)
    parts = ["### Time per push\n\n" + speed, "### Targets and findings\n\n" + "\n".join(checks)]
    if not args.no_compile_time:
        print("compile time", flush=True)
        body, _ = compile_section(args.threads)
        parts.append("### Compile time of the fused kernel\n\n" + body)
    parts.append("### Server memory, bytes per parameter\n\n" + memory_section())
    if not args.no_accuracy:
        print("bfloat16 backups: accuracy", flush=True)
        epochs = args.epochs or (2.0 if args.quick else 3.0)
        seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
        body, _ = accuracy_section(epochs, seeds)
        parts.append("### What bfloat16 backups cost in accuracy\n\n" + body)
    path = write_section("server_update", "Server update (`benchmarks/server_update.py`)", "\n\n".join(parts),
                         sys.argv if argv is None else ["server_update.py", *argv])
    print("\n".join(checks))
    print(f"wrote {path} and {assemble()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
