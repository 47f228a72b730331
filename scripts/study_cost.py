"""How long a `dcasgd compare` study takes: its runs counted from the preset, times the cost of one epoch.

    python scripts/study_cost.py PRESET|FILE.toml [--jobs 2] [--measure EPOCHS | --epoch-seconds S]

Counts every run the study's grid asks for with compare's own planning (lr
selection, final runs, the lambda sweep; a `paper` run that is the same run as a
`tuned` one is copied, not run), and the epochs each may take under the study's
time budget: its epoch cap (sequential SGD: the preset's epochs).  Every run is
counted at its cap, an upper bound: a run that reaches the budget first, or a
method that cancels jobs (Rennala, Ringmaster), computes fewer gradients.

The cost of one epoch comes from `--epoch-seconds`, or `--measure EPOCHS`: one
timing run of that many epochs of ASGD at M = 16 with the preset's settings
(one torch thread), as `compare --threads 1` runs them: its training seconds
per epoch plus one test-split evaluation per `eval_every` epochs (the
lr-selection runs evaluate the smaller validation split: an upper bound).  Other programs on the machine slow it; the
script prints the load average beside the measurement.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from dcasgd.config import TrainConfig
from dcasgd.presets import PRESETS, load_config_file, load_preset
from dcasgd.study.budget import epoch_cap
from dcasgd.study.compare import (PARAMETER, SYNCHRONOUS, Choice, cluster_grid, groups, lr_jobs, pairs, param_values, plan,
                                  study_grid)


def settings(preset: str) -> dict:
    """A preset's settings, or a TOML file's."""
    return load_preset(preset) if preset in PRESETS else load_config_file(preset)


def measure(preset: str, grid: dict, epochs: float) -> tuple[float, float]:
    """Seconds per epoch and seconds per run outside the epochs (data, model), from one timing run."""
    import torch
    from dcasgd.api import run
    torch.set_num_threads(1)
    cfg = TrainConfig(**{**settings(preset), "rule": "sgd", "consistency": "async", "workers": 16,
                         "epochs": epochs, "lr": 0.01, "val_size": grid["val_size"], "out": None,
                         "progress": False}).validate()
    started = time.perf_counter()
    summary = run(cfg).summary
    total = time.perf_counter() - started
    training = (summary["wall_time_s"] - summary["eval_wall_s"]) / epochs
    per_evaluation = summary["eval_wall_s"] / len(summary["curve"])       # (the one at epoch 0 included)
    return training + per_evaluation / cfg.eval_every, total - summary["wall_time_s"]


def count(preset: str, grid: dict) -> dict[str, list[float]]:
    """Epochs of every run to run, by phase."""
    base = TrainConfig(**settings(preset))
    out = Path("study")

    def epochs(job) -> float:
        return base.epochs if job.method == "sequential" else epoch_cap(cluster_grid(grid, job.group.cluster),
                                                                        base.epochs, job.workers)

    phases = {"lr": [epochs(j) for j in lr_jobs(grid, out)]}
    chosen = {(p, j.group.lr_name, j.method, j.workers): Choice(j.lr, j.param)
              for j in lr_jobs(grid, out) for p in grid["protocols"]}
    jobs = plan(base, grid, out, chosen)
    copied = [j for j in jobs if j.phase == "final" and j.group.protocol == "paper" and "tuned" in grid["protocols"]
              and (j.method in SYNCHRONOUS or j.method == "asgd")]
    phases["final"] = [epochs(j) for j in jobs if j.phase == "final" and j not in copied]
    phases["lambda"] = [epochs(j) for j in jobs if j.phase == "lambda"]
    phases["copied (no cost)"] = [0.0] * len(copied)
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--epoch-seconds", type=float, default=None)
    parser.add_argument("--run-seconds", type=float, default=2.0, help="per run outside its epochs (default 2)")
    parser.add_argument("--measure", type=float, default=None, metavar="EPOCHS")
    args = parser.parse_args()
    grid = study_grid(args.preset, {}, None)
    per_epoch, per_run = args.epoch_seconds, args.run_seconds
    if args.measure:
        per_epoch, per_run = measure(args.preset, grid, args.measure)
        print(f"measured: {per_epoch:.2f} s per epoch, {per_run:.1f} s per run besides "
              f"(ASGD, M = 16, {args.measure:g} epochs, 1 thread; load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores)")
    if per_epoch is None:
        raise SystemExit("give --epoch-seconds S or --measure EPOCHS")
    total_runs = total_s = 0.0
    for phase, runs in count(args.preset, grid).items():
        seconds = sum(runs) * per_epoch + (len(runs) * per_run if phase != "copied (no cost)" else 0.0)
        total_runs += len(runs)
        total_s += seconds
        print(f"{phase:17s} {len(runs):5d} runs, {sum(runs):8.0f} epochs at most, {seconds / 3600:6.2f} core-hours")
    print(f"{'total':17s} {int(total_runs):5d} runs; at most {total_s / 3600:.2f} core-hours = "
          f"{total_s / 3600 / args.jobs:.2f} hours with --jobs {args.jobs} (groups: "
          f"{', '.join(g.name for g in groups(grid))}; (method, M): {len(pairs(grid))}; "
          f"S/m/R values at the largest M: "
          f"{ {m: param_values(grid, m, max(grid['workers'])) for m in PARAMETER if m in grid['methods']} })")


if __name__ == "__main__":
    main()
