"""Where asynchrony wins: throughput and time to a target error with slow workers.

On the simulator (``dcasgd.backends.sim.run_sim``; time is simulated, so the figures
do not depend on this machine's speed), 4 workers, preset fmnist-mlp
(Fashion-MNIST, MLP, batch 128, lr 0.1, jitter 0.1), for

- SSGD (``sgd`` + ``sync``), ASGD (``sgd`` + ``async``), DC-ASGD-a (``dc-asgd-a`` + ``async``),
- (a) equal workers, (b) one worker 4x slower (``stragglers={3: 4.0}``),
  (c) speeds drawn from a lognormal (``hetero_sigma=0.5``),

it reports gradients per simulated second (every worker gradient the server
consumes: samples throughput), server updates per second (``updates /
sim_time_s``; a sync round is one update of M gradients) and the simulated
time of the first evaluation with test error <= ``--target`` (from
metrics.jsonl), with the async/sync ratios per case.  With one worker 4x
slower of 4, a sync round waits 4 time units for 4 gradients while async
consumes 3 + 1/4 gradients per unit: 3.25x the gradients (13x the updates).

With Ray present (``dcasgd.backends.ray.run_ray``; skip with ``--no-ray``) it
runs the same three cases on a local Ray with 2 workers, in wall-clock
seconds, the slow workers emulated by the Ray backend (a worker k times
slower sleeps so that its cycle is k times the unslowed workers'; see docs/ray.md).

Writes benchmarks/results/stragglers.md.

    python benchmarks/stragglers.py [--quick] [--epochs E] [--target PCT] [--no-ray] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bench import fmt, set_threads, table, verdict  # noqa: E402
from _readme import assemble  # noqa: E402
from _report import write_section  # noqa: E402

from dcasgd.config import TrainConfig  # noqa: E402
from dcasgd.compute.data import find_dataset_dir  # noqa: E402
from dcasgd.presets import load_preset  # noqa: E402
from dcasgd.backends.sim import run_sim  # noqa: E402

WORKERS = 4
METHODS = {"SSGD": ("sgd", "sync"), "ASGD": ("sgd", "async"), "DC-ASGD-a": ("dc-asgd-a", "async")}
CASES = {"(a) equal": {}, "(b) one 4x slower": {"stragglers": {3: 4.0}}, "(c) lognormal sigma 0.5": {"hetero_sigma": 0.5}}
REQUIRED_RATIO = 2.0


def time_to_target(run_dir: Path, target: float) -> float | None:
    """Simulated (or wall, on Ray) seconds of the first eval with test_error <= target."""
    for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("kind") == "eval" and record["test_error"] <= target:
            return float(record["time_s"])
    return None


def base_settings(epochs: float, seed: int) -> dict:
    settings = load_preset("fmnist-mlp")
    if not find_dataset_dir("fashion-mnist"):
        settings["dataset"] = "synthetic"
    settings.update(workers=WORKERS, epochs=epochs, seed=seed, eval_every=0.125, progress=False)
    return settings


def sim_part(epochs: float, target: float, seed: int) -> tuple[str, list[str], dict]:
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="stragglers-") as tmp:
        for case, extra in CASES.items():
            for method, (rule, consistency) in METHODS.items():
                out = Path(tmp) / f"{case[:3]}-{method}"
                cfg = TrainConfig(**{**base_settings(epochs, seed), **extra, "rule": rule,
                                     "consistency": consistency, "out": str(out)})
                start = time.perf_counter()
                s = run_sim(cfg).summary
                results[(case, method)] = {
                    "updates": s["updates"], "gradients": s["gradients"], "sim_time_s": s["sim_time_s"],
                    "updates_per_s": s["updates"] / s["sim_time_s"], "gradients_per_s": s["gradients"] / s["sim_time_s"],
                    "mean_staleness": s["mean_staleness"], "final_test_error": s["final_test_error"],
                    "time_to_target_s": time_to_target(out, target), "speeds": s["speeds"]}
                print(f"  {case} {method}: {time.perf_counter() - start:.0f}s wall, "
                      f"{results[(case, method)]['gradients_per_s']:.3f} gradients/s, "
                      f"error {s['final_test_error']:.2f}%", flush=True)
    rows, checks = [], []
    for (case, method), r in results.items():
        rows.append([case, method, r["updates"], r["gradients"], fmt(r["sim_time_s"], 1), fmt(r["updates_per_s"], 3),
                     fmt(r["gradients_per_s"], 3), fmt(r["mean_staleness"], 2), fmt(r["final_test_error"], 2),
                     fmt(r["time_to_target_s"], 1) if r["time_to_target_s"] is not None else "not reached"])
    for case in CASES:
        sync = results[(case, "SSGD")]
        parts, ttts = [], []
        for method in ("ASGD", "DC-ASGD-a"):
            r = results[(case, method)]
            grad_ratio = r["gradients_per_s"] / sync["gradients_per_s"]
            upd_ratio = r["updates_per_s"] / sync["updates_per_s"]
            parts.append(f"{method}/SSGD gradients/s **{grad_ratio:.2f}x** (updates/s {upd_ratio:.1f}x)")
            if sync["time_to_target_s"] and r["time_to_target_s"]:
                ttts.append(f"SSGD/{method} {sync['time_to_target_s'] / r['time_to_target_s']:.2f}x")
            else:
                ttts.append(f"{method} {fmt(r['time_to_target_s'], 1)} s vs SSGD {fmt(sync['time_to_target_s'], 1)} s "
                            "('-' = not reached)")
        checks.append(f"- {case}: " + "; ".join(parts) + f"; time to {target:g}% error " + ", ".join(ttts))
    b_ratio = results[("(b) one 4x slower", "ASGD")]["gradients_per_s"] / results[("(b) one 4x slower", "SSGD")]["gradients_per_s"]
    checks.append("- Required: ASGD/SSGD gradients/s with one worker 4x slower of 4 "
                  + verdict(b_ratio > REQUIRED_RATIO, f"**{b_ratio:.2f}x**", f"> {REQUIRED_RATIO:g}x, ideal 3.25x",
                            f"short by {REQUIRED_RATIO - b_ratio:.2f}"))
    speeds = results[("(c) lognormal sigma 0.5", "SSGD")]["speeds"]
    header = ["case", "method", "updates", "gradients", "sim s", "updates/s", "gradients/s", "mean staleness",
              "final test error %", f"sim s to <= {target:g}% error"]
    body = (f"Simulator, {WORKERS} workers, preset fmnist-mlp ({base_settings(epochs, seed)['dataset']}, mlp, batch 128, "
            f"lr 0.1, jitter 0.1), {epochs:g} epochs, seed {seed}, evaluation every 1/8 epoch.  Case (c) speeds "
            f"(time multipliers): {', '.join(f'{x:.2f}' for x in speeds)}.\n\n" + table(header, rows))
    return body, checks, results


RAY_WORKERS = 2
RAY_CASES = {"(a) equal": {}, "(b) one 4x slower": {"stragglers": {1: 4.0}},
             "(c) lognormal sigma 0.5": {"hetero_sigma": 0.5}}


def ray_part(epochs: float, target: float, seed: int) -> str:
    """The three cases on a local Ray, slow workers emulated (``summary["emulated_slowdown"]``), wall clock."""
    try:
        from dcasgd.backends import ray as rb
        run_ray = rb.run_ray
    except (ImportError, AttributeError) as exc:
        return f"Ray part skipped: `dcasgd.backends.ray.run_ray` unavailable ({exc})."
    import ray
    rows, results, slowdowns = [], {}, {}
    try:
        if ray.is_initialized():
            ray.shutdown()
        rb.init_local_ray(num_cpus=2, object_store_memory=300 * 1024**2)
        with tempfile.TemporaryDirectory(prefix="stragglers-ray-") as tmp:
            for case, extra in RAY_CASES.items():
                for method in ("SSGD", "ASGD", "DC-ASGD-a"):
                    rule, consistency = METHODS[method]
                    out = Path(tmp) / f"{case[:3]}-{method}"
                    settings = {**base_settings(epochs, seed), **extra, "workers": RAY_WORKERS, "backend": "ray",
                                "jitter": 0.0,   # the simulator's timing noise; Ray has real noise
                                "rule": rule, "consistency": consistency, "out": str(out)}
                    start = time.perf_counter()
                    s = run_ray(TrainConfig(**settings))
                    train_s = s.get("training_s") or s["wall_time_s"]
                    r = results[(case, method)] = {"grad_per_s": s["gradients"] / train_s,
                                                   "upd_per_s": s["updates_per_s"], "ttt": time_to_target(out, target)}
                    slowdowns[case] = s["emulated_slowdown"]
                    rows.append([case, method, s["updates"], s["gradients"], fmt(train_s, 1),
                                 fmt(s["updates_per_s"], 2), fmt(r["grad_per_s"], 2), fmt(s["final_test_error"], 2),
                                 fmt(r["ttt"], 1) if r["ttt"] is not None else "not reached"])
                    print(f"  ray {case} {method}: {time.perf_counter() - start:.0f}s wall, "
                          f"{r['grad_per_s']:.1f} gradients/s", flush=True)
    except Exception as exc:  # noqa: BLE001 - the Ray part is optional: report, don't fail the benchmark
        traceback.print_exc()
        return (f"Ray part FAILED ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "simulator figures above stand.")
    finally:
        if ray.is_initialized():
            ray.shutdown()
    lines = []
    for case in RAY_CASES:
        sync, asgd = results[(case, "SSGD")], results[(case, "ASGD")]
        dc = results[(case, "DC-ASGD-a")]
        lines.append(f"- Ray, {case} (slowdowns {', '.join(f'{k:.2f}' for k in slowdowns[case])}): ASGD/SSGD "
                     f"gradients/s **{asgd['grad_per_s'] / sync['grad_per_s']:.2f}x** (updates/s "
                     f"{asgd['upd_per_s'] / sync['upd_per_s']:.2f}x); DC-ASGD-a/SSGD gradients/s "
                     f"**{dc['grad_per_s'] / sync['grad_per_s']:.2f}x**")
    return (f"Local Ray, {RAY_WORKERS} workers, {epochs:g} epochs; wall-clock seconds of the training loop on this "
            "machine.  Slow workers are emulated (docs/ray.md): worker m sleeps so that its cycle is k_m times the "
            "unslowed workers' running mean cycle, k_m = its time factor over the fastest's (case (c): the "
            "simulator's lognormal draw for 2 workers).  With 2 workers, one 4x slower, the ideal ASGD/SSGD gradients/s is (1 + 1/4) / (2/4) = "
            "2.5x.\n\n"
            + table(["case", "method", "updates", "gradients", "training s", "updates/s", "gradients/s",
                     "final test error %", f"wall s to <= {target:g}% error"], rows)
            + "\n\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch on the simulator, 0.25 on Ray")
    parser.add_argument("--epochs", type=float, default=0, help="simulator epochs per run (default 2, quick 1)")
    parser.add_argument("--ray-epochs", type=float, default=0, help="Ray epochs per run (default 0.5, quick 0.25)")
    parser.add_argument("--target", type=float, default=30.0, help="target test error, percent (default 30: reached by all three methods within the default epochs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ray", action="store_true", help="simulator only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the gradients (default 1; "
                                                               "simulated time does not depend on it)")
    args = parser.parse_args(argv)
    threads_line = set_threads(args.threads)
    epochs = args.epochs or (1.0 if args.quick else 2.0)
    print("simulator", flush=True)
    sim_body, checks, _ = sim_part(epochs, args.target, args.seed)
    parts = ["### Simulator\n\n" + sim_body, "### Ratios and targets\n\n" + "\n".join(checks)]
    if args.no_ray:
        parts.append("### Ray\n\nNot run (`--no-ray`).")
    else:
        print("ray", flush=True)
        parts.append("### Ray\n\n" + ray_part(args.ray_epochs or (0.25 if args.quick else 0.5), args.target, args.seed))
    parts.append(f"_{threads_line}._")
    path = write_section("stragglers", "Where asynchrony wins (`benchmarks/stragglers.py`)", "\n\n".join(parts),
                         sys.argv if argv is None else ["stragglers.py", *argv])
    print("\n".join(checks))
    print("\n".join(parts[2].splitlines()[-3:]))
    print(f"wrote {path} and {assemble()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
