"""Simulator fidelity: does a simulated cluster behave like the real (Ray) run it stands for?

    python benchmarks/fidelity.py [--quick] [--setups straggler,ssp] [--epochs E] [--seeds N]
                                  [--dataset D] [--batch-size B] [--results-dir DIR]

**Setups** (the MLP, Fashion-MNIST, 1 epoch, batch 128, lr 0.05 cosine, seed 0, evaluated every 1/2 epoch):

==============  ==============================================================
homogeneous     ``--rule sgd``, M = 4
straggler       ``--rule sgd``, M = 4, ``--straggler 3:4``
lognormal       ``--rule sgd``, M = 6, ``--hetero-sigma 0.5``
ssp-straggler   ``--rule sgd --consistency ssp:2``, M = 4, ``--straggler 3:4``
dc-asgd-a       ``--rule dc-asgd-a``, M = 4, ``--straggler 3:4``
gap-aware       ``--rule gap-aware``, M = 4, ``--straggler 3:4``
==============  ==============================================================

Each setup runs once on a local Ray (``dcasgd train --backend ray``, the
stragglers and speeds emulated), then in the simulator three ways, each with
the same training settings:

- **replay**: ``--replay RAY/trace.jsonl`` (each worker's recorded cycles);
- **fit**: ``dcasgd fit RAY --to fit.toml`` then ``dcasgd train --config
  fit.toml`` with seeds 0..N-1 (default N = 3; the figures of seed 0, the
  final error over all N);
- **plain**: the same flags as the Ray run on the simulator's default model
  (every cycle 1 simulated second times the worker's factor, no jitter).

**Reported**, per run: each worker's share of the pushes; its staleness p50,
p90 and p99 (``summary.json``); the total-variation distance between the
run's staleness histogram (all pushes) and the Ray run's, ``TV = 1/2 sum |p -
q|``, and the largest per-worker TV; the final test error.  Error against
time: ``fidelity.png`` (Ray's training clock, the simulated clock of replay
and fit in the same seconds; plain's simulated clock times the Ray run's mean
cycle of its unslowed workers).

**Targets** (a ``target`` line each, met or missed):

- replay and fit (seed 0): every worker's push share within 5% (relative) of
  Ray's; every worker's staleness p50 and p90 within 1 of Ray's;
- the Ray run's final error within the fitted simulator's own spread over
  its N seeds: ``|ray - mean| <= max - min``;
- straggler setup: Ray's push ratio (the unslowed workers' mean over the
  straggler's) within 5% of 4, and the replay's within 5% of Ray's.

``--quick``: the homogeneous and straggler setups, 0.25 epochs, 2 fit seeds
(a smoke run of a few minutes; its figures are not the benchmark's).  Writes
``DIR/fidelity.md`` (default benchmarks/results/, which ``run_all.py``
assembles into benchmarks/README.md) and ``DIR/fidelity.png``; with the
default DIR it also fills the measured section of docs/timing-model.md.
Exit status 1 if a run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import _report  # noqa: E402

from dcasgd.cli import main as dcasgd_main  # noqa: E402
from dcasgd.compute.data import find_dataset_dir  # noqa: E402

# Evaluations every 1/2 epoch, no more: on Ray each evaluation mark holds training until every granted gradient is
# in (the driver shares the cores), a barrier the simulator does not have (docs/timing-model.md).
EVAL_EVERY = "0.5"
TRAINING = ["--model", "mlp", "--lr", "0.05", "--seed", "0", "--eval-every", EVAL_EVERY, "--no-progress"]
SETUPS = {   # name: (training flags, cluster flags: emulated on Ray, modelled by the plain simulator)
    "homogeneous": (["--rule", "sgd", "--workers", "4"], []),
    "straggler": (["--rule", "sgd", "--workers", "4"], ["--straggler", "3:4"]),
    "lognormal": (["--rule", "sgd", "--workers", "6"], ["--hetero-sigma", "0.5"]),
    "ssp-straggler": (["--rule", "sgd", "--consistency", "ssp:2", "--workers", "4"], ["--straggler", "3:4"]),
    "dc-asgd-a": (["--rule", "dc-asgd-a", "--workers", "4"], ["--straggler", "3:4"]),
    "gap-aware": (["--rule", "gap-aware", "--workers", "4"], ["--straggler", "3:4"]),
}
QUICK_SETUPS = ("homogeneous", "straggler")
SHARE_TOLERANCE = 0.05           # relative
STALENESS_TOLERANCE = 1          # versions
STRAGGLER_FACTOR = 4.0
RAY_TIMEOUT_S = 900


@dataclass
class Run:
    """What one run reports: from its summary.json."""

    name: str
    summary: dict

    @property
    def pushes(self) -> list[int]:
        return self.summary["pushes_per_worker"]

    @property
    def shares(self) -> list[float]:
        total = sum(self.pushes)
        return [p / total for p in self.pushes]

    def staleness(self, q: str) -> list[int]:
        return [w[q] for w in self.summary["staleness"]["per_worker"]]

    def histogram(self, worker: int | None = None) -> dict[int, float]:
        s = self.summary["staleness"]
        h = (s["overall"] if worker is None else s["per_worker"][worker])["histogram"]
        total = sum(h.values()) or 1
        return {int(k): v / total for k, v in h.items()}

    @property
    def error(self) -> float:
        return self.summary["final_test_error"]

    @property
    def curve(self) -> list[dict]:
        return self.summary["curve"]


def total_variation(p: dict[int, float], q: dict[int, float]) -> float:
    """1/2 sum |p - q| over the union of their supports."""
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def read_summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text(encoding="utf-8"))


def dcasgd(args: list[str]) -> str:
    """``dcasgd ARGS`` in this process (the simulator, ``fit``); returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = dcasgd_main(args)
    if status != 0:
        raise RuntimeError(f"dcasgd {' '.join(args)} exited with status {status}")
    return printed.getvalue()


def ray_run(args: list[str]) -> None:
    """``python -m dcasgd train --backend ray ARGS`` in its own process (its own local Ray)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-m", "dcasgd", "train", "--backend", "ray", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=RAY_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"the Ray run failed: {proc.stderr.strip().splitlines()[-1:]}")


def run_setup(name: str, common: list[str], seeds: int, tmp: Path) -> dict:
    """The Ray run and its three simulations."""
    training, cluster = SETUPS[name]
    base = [*TRAINING, *common, *training]
    out = tmp / name
    started = time.perf_counter()
    ray_run([*base, *cluster, "--out", str(out / "ray")])
    ray_s = time.perf_counter() - started
    runs = {"ray": Run("ray", read_summary(out / "ray"))}
    dcasgd(["train", *base, "--replay", str(out / "ray" / "trace.jsonl"), "--out", str(out / "replay")])
    runs["replay"] = Run("replay", read_summary(out / "replay"))
    fit_text = dcasgd(["fit", str(out / "ray"), "--to", str(out / "fit.toml")])
    fits = []
    for seed in range(seeds):
        dcasgd(["train", "--config", str(out / "fit.toml"), *common, "--seed", str(seed), "--eval-every", EVAL_EVERY,
                "--no-progress", "--out", str(out / f"fit-s{seed}")])
        fits.append(Run(f"fit seed {seed}", read_summary(out / f"fit-s{seed}")))
    runs["fit"] = fits[0]
    dcasgd(["train", *base, *cluster, "--out", str(out / "plain")])
    runs["plain"] = Run("plain", read_summary(out / "plain"))
    print(f"{name}: Ray {ray_s:.0f} s, all {time.perf_counter() - started:.0f} s; pushes "
          + "; ".join(f"{k} {r.pushes}" for k, r in runs.items()), file=sys.stderr, flush=True)
    table = "\n".join(line for line in fit_text.splitlines() if not line.startswith("wrote "))   # (a temporary path)
    return {"runs": runs, "fits": fits, "fit_text": table}


# ---------------------------------------------------------------- the report


def per_worker(values: list, digits: int = 0) -> str:
    return ", ".join(f"{v:.{digits}f}" if isinstance(v, float) else str(v) for v in values)


def setup_table(result: dict) -> str:
    runs = result["runs"]
    ray = runs["ray"]
    header = ("| run | pushes per worker | push share % | staleness p50 / p90 / p99 per worker | TV vs Ray "
              "(all / worst worker) | final error % |\n|---|---|---|---|---|---|")
    rows = []
    for key, run in runs.items():
        p50, p90, p99 = run.staleness("p50"), run.staleness("p90"), run.staleness("p99")
        if key == "ray":
            tv = "-"
        else:
            worst = max(total_variation(run.histogram(m), ray.histogram(m)) for m in range(len(run.pushes)))
            tv = f"{total_variation(run.histogram(), ray.histogram()):.3f} / {worst:.3f}"
        label = {"fit": "fit (seed 0)", "plain": "plain flags"}.get(key, key)
        rows.append(f"| {label} | {per_worker(run.pushes)} | {per_worker([100 * s for s in run.shares], 1)} | "
                    + ", ".join(f"{a}/{b}/{c}" for a, b, c in zip(p50, p90, p99)) + f" | {tv} | {run.error:.2f} |")
    errors = [f.error for f in result["fits"]]
    rows.append(f"| fit, {len(errors)} seeds | | | | | {statistics.mean(errors):.2f} "
                f"(min {min(errors):.2f}, max {max(errors):.2f}) |")
    return header + "\n" + "\n".join(rows)


def share_deviation(run: Run, ray: Run) -> float:
    return max(abs(s - r) / r for s, r in zip(run.shares, ray.shares))


def staleness_deviation(run: Run, ray: Run) -> int:
    return max(abs(a - b) for q in ("p50", "p90") for a, b in zip(run.staleness(q), ray.staleness(q)))


def push_ratio(run: Run, straggler: int) -> float:
    others = [p for m, p in enumerate(run.pushes) if m != straggler]
    return (sum(others) / len(others)) / run.pushes[straggler]


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def target_lines(name: str, result: dict) -> list[str]:
    runs = result["runs"]
    ray = runs["ray"]
    lines = []
    for key in ("replay", "fit"):
        dev = share_deviation(runs[key], ray)
        lines.append(f"- target, {name}, {key}: push shares within {100 * SHARE_TOLERANCE:.0f}% of Ray's: largest "
                     f"deviation {100 * dev:.1f}%, {verdict(dev <= SHARE_TOLERANCE)}")
        dev = staleness_deviation(runs[key], ray)
        lines.append(f"- target, {name}, {key}: staleness p50 and p90 within {STALENESS_TOLERANCE} of Ray's (every "
                     f"worker): largest difference {dev}, {verdict(dev <= STALENESS_TOLERANCE)}")
    errors = [f.error for f in result["fits"]]
    centre, spread = statistics.mean(errors), max(errors) - min(errors)
    lines.append(f"- target, {name}: Ray's final error {ray.error:.2f}% within the fitted simulator's spread over "
                 f"{len(errors)} seeds ({centre:.2f}% +- {spread:.2f}): off by {abs(ray.error - centre):.2f}, "
                 f"{verdict(abs(ray.error - centre) <= spread)}")
    if name == "straggler":
        straggler = len(ray.pushes) - 1
        r_ray, r_replay = push_ratio(ray, straggler), push_ratio(runs["replay"], straggler)
        lines.append(f"- target, straggler: Ray's push ratio (unslowed mean / straggler) within 5% of "
                     f"{STRAGGLER_FACTOR:g}: {r_ray:.2f}, {verdict(abs(r_ray / STRAGGLER_FACTOR - 1) <= 0.05)}")
        lines.append(f"- target, straggler: the replay's push ratio within 5% of Ray's: {r_replay:.2f} vs {r_ray:.2f}, "
                     f"{verdict(abs(r_replay / r_ray - 1) <= 0.05)}")
    return lines


def plot(results: dict, path: Path) -> Path | None:
    """Error against time per setup: Ray's training clock, replay and fit in simulated seconds, plain scaled."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.4), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        runs = result["runs"]
        ray = runs["ray"].summary
        slowdowns = ray.get("emulated_slowdown") or [1.0] * len(ray["pushes_per_worker"])
        cycles = [c for c, k in zip(ray.get("cycle_s_per_gradient") or [], slowdowns) if c and k == 1.0]
        unit = statistics.mean(cycles) if cycles else 1.0
        for key, run in runs.items():
            scale = unit if key == "plain" else 1.0
            ax.plot([scale * p["time_s"] for p in run.curve], [p["test_error"] for p in run.curve], marker="o",
                    label={"plain": "plain (x mean cycle)"}.get(key, key))
        ax.set_title(name)
        ax.set_xlabel("seconds (Ray: training clock)")
        ax.set_ylabel("test error %")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def report(results: dict, args: argparse.Namespace, started: float) -> tuple[str, list[str]]:
    targets = [line for name, result in results.items() for line in target_lines(name, result)]
    met = sum("**met**" in line for line in targets)
    summary = [f"- targets met: **{met} of {len(targets)}** ({', '.join(results)})"]
    sections = []
    for name, result in results.items():
        training, cluster = SETUPS[name]
        sections.append(f"### {name}: `{' '.join(training + cluster)}`\n\n{setup_table(result)}\n\n"
                        f"`dcasgd fit` of the Ray run (cycle per worker, ms):\n\n```\n{result['fit_text']}\n```")
    intro = (f"Each setup: one Ray run (local Ray on this machine, slow workers emulated), then the simulator "
             f"replaying its trace, with the model `dcasgd fit` fitted to that trace ({args.seeds} seeds), and with "
             f"the plain flags.  {args.epochs:g} epoch(s) of {args.dataset}, MLP, batch {args.batch_size}.  "
             f"TV: total-variation distance between staleness histograms (0 = the same, 1 = disjoint).  Error "
             f"against time: `fidelity.png`.  Total time {time.perf_counter() - started:.0f} s; 1-min load average "
             f"at the end {os.getloadavg()[0]:.1f}.")
    body = "\n\n".join([intro, *sections, "\n".join(summary + targets)])
    return body, summary + targets


def departures_block(results: dict, command: str) -> str:
    """The measured section of docs/timing-model.md: where each way of simulating departs from Ray."""
    rows = []
    for name, result in results.items():
        runs = result["runs"]
        ray = runs["ray"]
        cells = []
        for key in ("replay", "fit", "plain"):
            run = runs[key]
            cells.append(f"{100 * share_deviation(run, ray):.1f}% / {staleness_deviation(run, ray)} / "
                         f"{total_variation(run.histogram(), ray.histogram()):.2f}")
        errors = [f.error for f in result["fits"]]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {ray.error:.2f} / {statistics.mean(errors):.2f} "
                    f"+- {max(errors) - min(errors):.2f} |")
    return (f"Generated by `{command}` on {_report.machine()}, commit {_report.git_commit()}.  Each cell: largest "
            f"push-share deviation from the Ray run / largest difference in a worker's staleness p50 or p90 / "
            f"total-variation distance of the staleness histograms.\n\n"
            "| setup | replay | fit | plain flags | final error % Ray / fit mean +- spread |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


DOC = REPO / "docs" / "timing-model.md"
DOC_BEGIN, DOC_END = "<!-- fidelity:begin -->", "<!-- fidelity:end -->"


def fill_doc(block: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(DOC_BEGIN) + ".*?" + re.escape(DOC_END), re.S)
    DOC.write_text(pattern.sub(lambda _: f"{DOC_BEGIN}\n{block}\n{DOC_END}", text), encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"setups {', '.join(QUICK_SETUPS)}, 0.25 epochs, "
                                                             "2 fit seeds")
    parser.add_argument("--setups", default=None, help=f"comma-separated, of {', '.join(SETUPS)} (default all)")
    parser.add_argument("--epochs", type=float, default=None, help="epochs of every run (default 1; quick 0.25)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the fitted simulator (default 3; quick 2)")
    parser.add_argument("--dataset", default=None, help="default fashion-mnist (synthetic where it is missing)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--results-dir", default=str(_report.RESULTS), help="where fidelity.md and fidelity.png go")
    args = parser.parse_args(argv)
    names = args.setups.split(",") if args.setups else list(QUICK_SETUPS if args.quick else SETUPS)
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        parser.error(f"--setups: unknown {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
    args.names = names
    args.epochs = args.epochs or (0.25 if args.quick else 1.0)
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.dataset = args.dataset or ("fashion-mnist" if find_dataset_dir("fashion-mnist") else "synthetic")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(1)
    started = time.perf_counter()
    common = ["--dataset", args.dataset, "--epochs", f"{args.epochs:g}", "--batch-size", str(args.batch_size)]
    results = {}
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        for name in args.names:
            try:
                results[name] = run_setup(name, common, args.seeds, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one line naming the setup, then exit status 1
                print(f"fidelity: error: {name}: {exc}", file=sys.stderr)
                return 1
    body, lines = report(results, args, started)
    print("\n".join(lines))
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    picture = plot(results, results_dir / "fidelity.png")
    if picture is not None:
        body += f"\n\n![error against time](results/{picture.name})"
    _report.RESULTS = results_dir
    argv_for_command = sys.argv if argv is None else [str(Path(__file__).name), *argv]
    path = _report.write_section("fidelity", "Simulator fidelity: the simulator against Ray runs", body,
                                 argv_for_command)
    if results_dir.resolve() == (HERE / "results").resolve():
        fill_doc(departures_block(results, "python benchmarks/" + " ".join([Path(argv_for_command[0]).name,
                                                                             *argv_for_command[1:]])))
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
