"""``dcasgd compare``: the paper's comparison as a resumable grid of runs.

A study runs methods x worker counts x seeds in one or more **groups**: a
cluster (named timing settings, e.g. homogeneous workers or lognormal speeds),
a protocol, and a momentum.  Under ``OUT/``:

1. ``lr/<cluster>-mom<mu>/<method>-M<M>-lr<lr>``: learning-rate selection on
   a validation split held out from the training set (``val_size`` samples),
   first seed only; the lr with the lowest final validation error wins;
2. ``final/<cluster>-<protocol>-mom<mu>/<method>-M<M>-s<seed>``: every method,
   M and seed at its learning rate, measured on the test set;
3. ``lambda/<group>/lam0-<v>``: DC-ASGD-a over ``lam0_grid`` at M =
   ``lambda_workers`` in the group ``lambda_group`` (default the first; first
   seed), the analog of the paper's supplementary Figure 5.

**Protocols** (``protocols``):

- ``tuned``: each (method, M) gets its own learning rate from ``lr_grid``.
- ``paper``: one learning-rate schedule for every method, as Zheng et al.
  (2017) did: the lr sequential SGD chooses on the validation split, used
  for every method and M; SSGD, which averages M gradients into one update,
  takes M times it (the linear scaling rule; ``ssgd_lr_scale = "none"`` keeps
  it).  Tuning lets an asynchronous method retreat to a learning rate so
  small that delay stops mattering; the paper protocol does not.

**Momentum** (``momenta``): each value is a group; the lr grid is scaled by
``1 - momentum`` for it, so the effective step ``lr / (1 - momentum)`` covers
the same range.  **Clusters** (``clusters``): a table of names to settings
(``hetero_sigma``, ``stragglers``, ``jitter``, ...) applied to every run of
the group; the default is one ``homogeneous`` cluster with no extra settings.

A run whose ``summary.json`` records the configuration its job asks for is
skipped, so an interrupted compare resumes.  A finished run whose recorded
configuration differs (the grid or a setting changed since) is stale: it is
moved to ``OUT/stale/`` and run again, never reused and never deleted.
``OUT/compare.json`` records the grid, the chosen learning rates, the command
line and the git commit.  The methods:

==============  =====================  =========================
method          rule                   consistency
==============  =====================  =========================
sequential      sgd (M = 1 only)       async
ssgd            sgd                    sync
asgd            sgd                    async
ssp             sgd                    ssp:S (``ssp_bound``)
staleness       staleness              async
delay-adaptive  delay-adaptive         async
gap-aware       gap-aware              async
adadelay        adadelay               async
dana            dana                   async
dc-asgd-c       dc-asgd-c              async
dc-asgd-a       dc-asgd-a              async
rennala         sgd                    rennala:S (``rennala_s``)
msync           sgd                    msync:m (``msync_m``)
ringmaster      sgd                    ringmaster:R (``ringmaster_r``)
ringmaster-stop sgd                    ringmaster-stop:R (``ringmaster_r``)
==============  =====================  =========================

The time-optimal methods' defaults: ``rennala_s = 6`` and ``ringmaster_r = 6``,
the values Tyurin and Richtarik (Rennala, NeurIPS 2023) and Maranjyan et al.
(Ringmaster, ICML 2025) found best for 100 and 6174 workers; ``msync_m = 0``
stands for half the workers, ceil(M/2), at every M (``msync_m >= M`` is SSGD).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import RUN_INVARIANT, ConfigError, TrainConfig
from ..core.consistency import ConsistencyError, parse_consistency
from ..engine.ownership import own_dirs
from ..engine.signals import STOP, signal_name
from ..io.atomic import atomic_write_text
from ..io.rundir import run_files

ASYNC_RULES = ("staleness", "delay-adaptive", "gap-aware", "adadelay", "dana", "dc-asgd-c", "dc-asgd-a")
TIME_OPTIMAL = ("rennala", "msync", "ringmaster", "ringmaster-stop")   # sgd under these consistency modes
METHODS = ("sequential", "ssgd", "asgd", "ssp") + ASYNC_RULES + TIME_OPTIMAL
PROTOCOLS = ("tuned", "paper")
DEFAULT_GRID = {"methods": list(METHODS), "workers": [1, 4, 8, 16, 32], "seeds": [0, 1, 2],
                "lr_grid": [0.05, 0.1, 0.2], "ssp_bound": 2, "val_size": 5000,
                "lam0_grid": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], "lambda_workers": 8,
                "protocols": ["tuned"], "momenta": [0.0], "clusters": {"homogeneous": {}},
                "ssgd_lr_scale": "linear", "rennala_s": 6, "msync_m": 0, "ringmaster_r": 6}


def method_bounds(grid: dict[str, Any]) -> dict[str, int]:
    """The grid's S of rennala, m of msync and R of ringmaster (default: DEFAULT_GRID's)."""
    return {key: grid.get(key, DEFAULT_GRID[key]) for key in ("rennala_s", "msync_m", "ringmaster_r")}


def method_settings(method: str, ssp_bound: int, workers: int = 1, rennala_s: int = 6, msync_m: int = 0,
                    ringmaster_r: int = 6) -> dict[str, str]:
    """(rule, consistency) of a method name at ``workers`` workers (``msync_m`` 0: ceil(workers / 2))."""
    table = {"sequential": ("sgd", "async"), "ssgd": ("sgd", "sync"), "asgd": ("sgd", "async"),
             "ssp": ("sgd", f"ssp:{ssp_bound}"), **{rule: (rule, "async") for rule in ASYNC_RULES},
             "rennala": ("sgd", f"rennala:{rennala_s}"), "msync": ("sgd", f"msync:{msync_m or -(-workers // 2)}"),
             "ringmaster": ("sgd", f"ringmaster:{ringmaster_r}"),
             "ringmaster-stop": ("sgd", f"ringmaster-stop:{ringmaster_r}")}
    if method not in table:
        raise ConfigError(f"method: unknown value {method!r}; allowed: {', '.join(METHODS)}")
    rule, consistency = table[method]
    if method in TIME_OPTIMAL:
        try:
            parse_consistency(consistency)
        except ConsistencyError as exc:
            raise ConfigError(f"compare: method {method}: {exc}") from None
    return {"rule": rule, "consistency": consistency}


def method_of(config: dict[str, Any]) -> str:
    """The method name a run's configuration stands for (inverse of :func:`method_settings`)."""
    rule, consistency, workers = config["rule"], config["consistency"], config["workers"]
    if workers == 1 and rule == "sgd":
        return "sequential"
    if rule in ASYNC_RULES:
        return rule
    if consistency.partition(":")[0] in TIME_OPTIMAL:
        return consistency.partition(":")[0]
    if consistency == "sync":
        return "ssgd"
    return "ssp" if consistency.startswith("ssp") else "asgd"


@dataclass(frozen=True)
class Group:
    """One cell of the study's outer grid: a cluster, a protocol and a momentum."""

    cluster: str
    protocol: str
    momentum: float

    @property
    def name(self) -> str:
        return f"{self.cluster}-{self.protocol}-mom{_fmt(self.momentum)}"

    @property
    def lr_name(self) -> str:
        """The lr-selection runs depend on the cluster and momentum, not the protocol."""
        return f"{self.cluster}-mom{_fmt(self.momentum)}"


def groups(grid: dict[str, Any]) -> list[Group]:
    return [Group(c, p, float(m)) for c in grid["clusters"] for p in grid["protocols"] for m in grid["momenta"]]


@dataclass(frozen=True)
class Job:
    phase: str            # "lr", "final" or "lambda"
    group: Group
    method: str
    workers: int
    seed: int
    lr: float
    out: Path
    extra: tuple[tuple[str, Any], ...] = ()

    def config(self, base: TrainConfig, grid: dict[str, Any]) -> TrainConfig:
        # overwrite: a job's directory belongs to this study; an interrupted run left there is redone
        fields = dict(method_settings(self.method, grid["ssp_bound"], self.workers, **method_bounds(grid)),
                      workers=self.workers, seed=self.seed,
                      lr=self.lr, out=str(self.out), overwrite=True, val_size=grid["val_size"], progress=False,
                      eval_split="val" if self.phase == "lr" else "test", momentum=self.group.momentum)
        fields.update(cluster_settings(grid, self.group.cluster, self.workers))
        fields.update(dict(self.extra))
        return replace(base, **fields).validate()


def cluster_settings(grid: dict[str, Any], cluster: str, workers: int) -> dict[str, Any]:
    """The TrainConfig fields of a named cluster for a run of ``workers`` workers (stragglers that
    run has: worker 3 is not slowed in a run of one worker)."""
    settings = dict(grid["clusters"][cluster])
    if "stragglers" in settings:
        settings["stragglers"] = {int(k): float(v) for k, v in settings["stragglers"].items() if int(k) < workers}
    for key in ("speeds", "lr_milestones"):
        if key in settings:
            settings[key] = tuple(settings[key])
    return settings


def _fmt(value: float) -> str:
    return f"{value:g}"


def pairs(grid: dict[str, Any]) -> list[tuple[str, int]]:
    """(method, M) of the study: sequential at M = 1 only, every other method at the other Ms."""
    return [(m, w) for m in grid["methods"] for w in grid["workers"] if (m == "sequential") == (w == 1)]


def lr_grid(grid: dict[str, Any], momentum: float) -> list[float]:
    """The learning rates searched at this momentum: ``lr_grid * (1 - momentum)``."""
    return [round(lr * (1.0 - momentum), 12) for lr in grid["lr_grid"]]


LrKey = tuple[str, str, int]          # (group.lr_name, method, M)


def lr_jobs(grid: dict[str, Any], out: Path) -> list[Job]:
    """Every lr-selection run the study needs (the paper protocol needs only sequential SGD's)."""
    needed: dict[tuple[Group, str, int], None] = {}
    for group in groups(grid):
        lr_group = Group(group.cluster, "lr", group.momentum)
        for method, workers in pairs(grid):
            if group.protocol == "tuned" or method == "sequential":
                needed[(lr_group, method, workers)] = None
    return [Job("lr", g, m, w, grid["seeds"][0], lr, out / "lr" / g.lr_name / f"{m}-M{w}-lr{_fmt(lr)}")
            for g, m, w in needed for lr in lr_grid(grid, g.momentum)]


def learning_rate(grid: dict[str, Any], chosen: dict[LrKey, float], group: Group, method: str,
                  workers: int) -> float | None:
    """The lr of a final run: its own (tuned), or sequential SGD's for every method (paper)."""
    if group.protocol == "tuned":
        return chosen.get((group.lr_name, method, workers))
    base = chosen.get((group.lr_name, "sequential", 1))
    if base is None:
        return None
    return base * workers if method == "ssgd" and grid["ssgd_lr_scale"] == "linear" else base


def plan(base: TrainConfig, grid: dict[str, Any], out: Path, chosen: dict[LrKey, float]) -> list[Job]:
    """Jobs of one phase: lr selection while ``chosen`` lacks entries, then final and lambda runs."""
    missing = [job for job in lr_jobs(grid, out) if (job.group.lr_name, job.method, job.workers) not in chosen]
    if missing:
        return missing
    jobs = [Job("final", g, m, w, seed, learning_rate(grid, chosen, g, m, w), out / "final" / g.name /
                f"{m}-M{w}-s{seed}") for g in groups(grid) for m, w in pairs(grid) for seed in grid["seeds"]]
    named = [g for g in groups(grid) if g.name == grid.get("lambda_group")]
    first, workers = (named or groups(grid))[0], grid.get("lambda_workers", 8)
    if "dc-asgd-a" in grid["methods"] and workers in grid["workers"] and grid.get("lam0_grid"):
        lr = learning_rate(grid, chosen, first, "dc-asgd-a", workers)
        jobs += [Job("lambda", first, "dc-asgd-a", workers, grid["seeds"][0], lr,
                     out / "lambda" / first.name / f"lam0-{_fmt(v)}", (("lam0", v),)) for v in grid["lam0_grid"]]
    return jobs


def choose_learning_rates(base: TrainConfig, grid: dict[str, Any], out: Path) -> dict[LrKey, float]:
    """Best lr per (cluster and momentum, method, M) by final validation error, once all its lr runs are current.

    A diverged run counts as the worst possible error; ties go to the smaller lr.  A grid of one lr
    has nothing to choose (and no lr phase): that lr, for every key.
    """
    if len(grid["lr_grid"]) == 1:
        return {(job.group.lr_name, job.method, job.workers): job.lr for job in lr_jobs(grid, out)}
    best: dict[LrKey, list[tuple[float, float]]] = {}
    for job in lr_jobs(grid, out):
        summary = current_summary(job, base, grid)
        if summary is not None:
            error = summary["final_test_error"]
            error = float("inf") if error is None or summary.get("diverged") else error
            best.setdefault((job.group.lr_name, job.method, job.workers), []).append((error, job.lr))
    return {k: min(results)[1] for k, results in best.items() if len(results) == len(grid["lr_grid"])}


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


_DEFAULTS = json.loads(json.dumps(TrainConfig().to_dict()))   # as a summary.json records them


def config_differences(recorded: dict[str, Any], wanted: TrainConfig) -> list[str]:
    """``field: recorded -> wanted`` for each computing setting where a run's recorded config differs.

    A field the record lacks (added to TrainConfig after the run) counts at its default,
    which is what the run computed with.
    """
    wanted_dict = json.loads(json.dumps(wanted.to_dict()))
    return [f"{k}: {recorded.get(k, _DEFAULTS[k])!r} -> {v!r}" for k, v in wanted_dict.items()
            if k not in RUN_INVARIANT and recorded.get(k, _DEFAULTS[k]) != v]


# outcomes of a run that did not get to its end: it is run again, not reused
UNFINISHED = ("interrupted", "failed")


def finished_run(job: Job, config: TrainConfig) -> tuple[dict[str, Any] | None, list[str]]:
    """(the job's summary or None, how its recorded config differs from ``config``; empty: current).

    A summary of a run that was interrupted or failed counts as none: the job runs again.
    """
    summary = read_summary(job.out)
    if summary is not None and summary.get("outcome") in UNFINISHED:
        summary = None
    return summary, ([] if summary is None else config_differences(summary["config"], config))


def current_summary(job: Job, base: TrainConfig, grid: dict[str, Any]) -> dict[str, Any] | None:
    """The job's finished summary, or None when it has none or it was run with other settings."""
    summary, differences = finished_run(job, job.config(base, grid))
    return None if differences else summary


def move_stale(job: Job, out: Path, differences: list[str]) -> Path:
    """Move a stale finished run to ``out/stale/<phase>/<name>[.k]``; returns where it went."""
    where = out / "stale" / job.out.parent.relative_to(out)
    target, k = where / job.out.name, 1
    while target.exists():
        target, k = where / f"{job.out.name}.{k}", k + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    job.out.rename(target)
    print(f"stale: {job.out} was run with other settings ({'; '.join(differences)}); "
          f"moved to {target}, running it again", flush=True)
    return target


def _run_job(cfg: TrainConfig, threads: int) -> dict[str, Any]:
    """Entry point in a pool process: one training run."""
    import torch
    from ..api import run
    torch.set_num_threads(threads)
    return run(cfg).summary


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class GridProgress:
    """One line per finished run: [done/total] elapsed, ETA, what finished."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def finished(self, job: Job, summary: dict[str, Any] | None, skipped: bool = False) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if not skipped else 0.0
        error = None if summary is None else summary["final_test_error"]
        what = "skipped (done before)" if skipped else ("diverged" if error is None else f"error {error:.4g}")
        print(f"[{self.done}/{self.total}] {elapsed:6.0f}s eta {eta:5.0f}s  {job.phase:6s} {job.group.name} "
              f"{job.method:14s} M={job.workers:<3d} seed={job.seed} lr={_fmt(job.lr)}{dict(job.extra) or ''}: "
              f"{what}", flush=True)


def run_jobs(jobs: list[Job], base: TrainConfig, grid: dict[str, Any], out: Path, n_jobs: int,
             threads: int) -> None:
    configs = {job: job.config(base, grid) for job in jobs}
    todo = []
    for job in jobs:
        summary, differences = finished_run(job, configs[job])
        if differences:
            move_stale(job, out, differences)
        if summary is None or differences:
            todo.append(job)
    progress = GridProgress(len(jobs))
    for job in jobs:
        if job not in todo:
            progress.finished(job, None, skipped=True)
    if not todo:
        return
    pool = ProcessPoolExecutor(max_workers=n_jobs)
    try:
        pending = {pool.submit(_run_job, configs[job], threads): job for job in todo}
        while pending:
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                job = pending.pop(future)
                progress.finished(job, future.result())
            if STOP.requested:
                raise Interrupted(STOP.signum)
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a study: queued runs were cancelled and running ones ended."""

    def __init__(self, signum: int | None) -> None:
        self.signum = signum
        super().__init__(signal_name(signum))


def stop_pool(pool: ProcessPoolExecutor, grace_s: float = 60.0) -> None:
    """Cancel every queued run now and end the running ones: SIGTERM first (each stops cleanly and writes
    an ``interrupted`` summary, which the next compare runs again), SIGKILL after ``grace_s`` seconds."""
    processes = list(getattr(pool, "_processes", {}).values())     # (no public handle on the children)
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def compare(base: TrainConfig, grid: dict[str, Any], out: Path, n_jobs: int, threads: int = 0) -> dict[str, Any]:
    """Run all phases; returns what compare.json records.

    ``threads`` torch threads per run (0: cores / jobs).  Results are bit-reproducible for
    the same thread count; it is part of the command recorded in compare.json.
    """
    with own_dirs([out], "study"):
        claim_study_dir(out, base)
        check_plan(base, grid, out)              # every run's settings, before anything is written
        threads = threads or max(1, (os.cpu_count() or 1) // n_jobs)
        _write_record(out, grid, {}, base, finished=False)
        chosen = choose_learning_rates(base, grid, out)
        for _ in range(2):                       # phase 1 (if needed), then phases 2 and 3
            jobs = plan(base, grid, out, chosen)
            run_jobs(jobs, base, grid, out, n_jobs, threads)
            if jobs and jobs[0].phase == "lr":
                chosen = choose_learning_rates(base, grid, out)
                continue
            break
        return _write_record(out, grid, chosen, base, finished=True)


def check_plan(base: TrainConfig, grid: dict[str, Any], out: Path) -> None:
    """Validate the settings of every run the study will make (their learning rates are not chosen yet:
    each is checked at the grid's), so bad input fails before the study writes anything."""
    chosen = {(job.group.lr_name, job.method, job.workers): job.lr for job in lr_jobs(grid, out)}
    for job in lr_jobs(grid, out) + plan(base, grid, out, chosen):
        job.config(base, grid)


def _write_record(out: Path, grid: dict[str, Any], chosen: dict[LrKey, float], base: TrainConfig,
                  finished: bool) -> dict[str, Any]:
    """OUT/compare.json: the grid, chosen learning rates, base settings, command and commit."""
    record = {"grid": grid, "chosen_lr": {f"{g}/{m}@M{w}": lr for (g, m, w), lr in sorted(chosen.items())},
              "command": "dcasgd " + " ".join(sys.argv[1:]), "git_commit": git_commit(),
              "base_config": base.to_dict(), "finished": finished}
    atomic_write_text(out / "compare.json", json.dumps(record, indent=2) + "\n")
    return record


def claim_study_dir(out: Path, base: TrainConfig) -> None:
    """OUT belongs to one study: refuse a directory holding a single training run's files (unless overwrite).

    A study directory is continued, whatever changed: runs whose recorded settings
    differ from their job's are moved to ``OUT/stale/`` (never mixed, never deleted).
    With ``base.overwrite`` the single run's files are removed first.
    """
    present = run_files(out)
    if present and not base.overwrite:
        raise ConfigError(f"compare: {out} holds a training run's files ({', '.join(present)}), not a study; "
                          f"choose another directory, or --overwrite to remove that run's files")
    if present:
        from ..io.rundir import clear_run_files
        clear_run_files(out)


def study_grid(source: str | None, overrides: dict[str, Any], val_size: int | None) -> dict[str, Any]:
    """The study grid: DEFAULT_GRID < the preset's or TOML file's ``[compare]`` table < ``overrides``; checked."""
    from ..presets import load_preset_grid
    grid = dict(DEFAULT_GRID)
    if source:
        grid.update(load_preset_grid(source))
    grid.update(overrides)
    if val_size is not None:
        grid["val_size"] = val_size
    for key in ("methods", "workers", "seeds", "lr_grid"):
        if not grid[key]:
            raise ConfigError(f"compare: the {key.replace('_', '-')} list is empty; give at least one value")
    for m in grid["methods"]:
        method_settings(m, grid["ssp_bound"], **method_bounds(grid))
    for w in grid["workers"]:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ConfigError(f"compare: worker counts must be integers >= 1, got {w!r}")
    for seed in grid["seeds"]:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"compare: seeds must be integers >= 0, got {seed!r}")
    for lr in grid["lr_grid"]:
        if not (isinstance(lr, (int, float)) and lr > 0 and lr < float("inf")):
            raise ConfigError(f"compare: learning rates must be finite numbers > 0, got {lr!r}")
    if grid["val_size"] < 1:
        raise ConfigError("compare needs val_size >= 1: learning rates are chosen on a validation split")
    for protocol in grid["protocols"]:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"compare: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if "paper" in grid["protocols"] and "sequential" not in grid["methods"]:
        raise ConfigError("compare: the paper protocol takes sequential SGD's lr: add the method sequential "
                          "(and M = 1 to the workers)")
    for momentum in grid["momenta"]:
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ConfigError(f"compare: momenta must be in [0, 1), got {momentum!r}")
    if not isinstance(grid["clusters"], dict) or not grid["clusters"]:
        raise ConfigError("compare: clusters must be a table of name -> settings, with at least one")
    known = set(TrainConfig.__dataclass_fields__)
    for name, settings in grid["clusters"].items():
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ConfigError(f"compare: cluster {name!r} has unknown setting(s) {unknown}")
    if grid["ssgd_lr_scale"] not in ("linear", "none"):
        raise ConfigError(f"compare: ssgd_lr_scale must be linear or none, got {grid['ssgd_lr_scale']!r}")
    return grid
