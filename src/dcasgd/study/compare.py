"""``dcasgd compare``: the paper's comparison as a resumable grid of runs, every run of a cluster on one time budget.

A study runs methods x worker counts x seeds in one or more **groups**: a
cluster (named timing settings, e.g. homogeneous workers or lognormal speeds),
a protocol, and a momentum.  Under ``OUT/``:

1. ``lr/<cluster>-mom<mu>/<method>[-<P><p>]-M<M>-lr<lr>``: selection of the
   learning rate (and of a method's own hyperparameter ``p``: Rennala's S,
   m-sync's m, Ringmaster's R) on a validation split held out from the
   training set (``val_size`` samples), first seed only; the pair with the
   lowest final validation error wins (ties: the smaller lr, then the smaller p).
   The learning rates are ``lr_grid``, or per method and M ``lr_grids`` (keys
   ``"method@M"``, ``"method"``, ``"@M"``, the first given wins), times
   ``1 - momentum``; ``rennala_s``, ``msync_m``, ``ringmaster_r`` are lists,
   or tables of M -> list.  ``cluster_grids`` (a table of cluster -> keys of
   :data:`CLUSTER_KEYS`) gives one cluster other grids and epoch caps;
2. ``final/<cluster>-<protocol>-mom<mu>/<method>-M<M>-s<seed>``: every method,
   M and seed at its chosen settings, measured on the test set;
3. ``lambda/<group>/lam0-<v>``: DC-ASGD-a over ``lam0_grid`` at M =
   ``lambda_workers`` in the group ``lambda_group`` (default the first; first
   seed), the analog of the paper's supplementary Figure 5.

**Time budget** (:mod:`.budget`): every run of a cluster, in every phase, gets
the same simulated-time budget, by default the time sequential SGD needs for
the preset's epochs on that cluster, and stops at an epoch cap (``epoch_caps``,
``epoch_cap_factor``) or at the budget, whichever comes first; the learning
rate is chosen under that same budget.  ``compare.json`` records the budgets,
sequential SGD's time per seed and the cap per M.

**Protocols** (``protocols``):

- ``tuned``: each (method, M) its own learning rate (and hyperparameter) from the grids.
- ``paper``: every asynchronous method at ASGD's tuned learning rate for the
  same M, as Zheng et al. (2017) kept ASGD's hyperparameters for DC-ASGD; a
  method's own hyperparameter (Ringmaster's R) is the best at that lr (its
  tuned one where its lr grid lacks that lr).  The
  synchronous methods (sequential SGD, SSGD, m-sync, Rennala: :data:`SYNCHRONOUS`),
  which average gradients taken at one point, keep their own tuned settings.
  The question it asks: at the step size that suits plain ASGD, does a method
  do better?  ``paper_methods`` (default: all) limits the methods it runs;
  the others are recorded as not run.

**Momentum** (``momenta``): each value is a group; the lr grid is scaled by
``1 - momentum`` for it, so the effective step ``lr / (1 - momentum)`` covers
the same range.  **Clusters** (``clusters``): a table of names to settings
(``hetero_sigma``, ``stragglers``, ``jitter``, ...) applied to every run of
the group; the default is one ``homogeneous`` cluster with no extra settings.

A cell the grid names but the study cannot run is not silently skipped: it is
printed and recorded in ``compare.json["dropped"]`` with the reason (sequential
SGD without M = 1, the lambda sweep without its M, m-sync without an m below M).

A run whose ``summary.json`` records the configuration its job asks for is
skipped, so an interrupted compare resumes.  A finished run whose recorded
configuration differs (the grid or a setting changed since) is stale: it is
moved to ``OUT/stale/`` and run again, never reused and never deleted.  Runs
whose configurations are the same apart from their directory (SSGD in the
``tuned`` and the ``paper`` group) run once and are copied.  Runs execute in
local processes (``--jobs``) or as tasks on a Ray cluster (``--address``,
:mod:`.dispatch`).  The methods:

================  =====================  =============================
method            rule                   consistency
================  =====================  =============================
sequential        sgd (M = 1 only)       async
ssgd              sgd                    sync
msync             sgd                    msync:m (``msync_m``)
rennala           sgd                    rennala:S (``rennala_s``)
asgd              sgd                    async
ssp               sgd                    ssp:S (``ssp_bound``)
ringmaster        sgd                    ringmaster:R (``ringmaster_r``)
ringmaster-stop   sgd                    ringmaster-stop:R
staleness         staleness              async
delay-adaptive    delay-adaptive         async
gap-aware         gap-aware              async
adadelay          adadelay               async
dana              dana                   async
dc-asgd-c         dc-asgd-c              async
dc-asgd-a         dc-asgd-a              async
================  =====================  =============================

``msync_m`` values below 1 are fractions of M (0.5: m = M/2), others counts;
only m < M is run (m = M is SSGD).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from ..config import RUN_INVARIANT, ConfigError, TrainConfig
from ..core.consistency import ConsistencyError, parse_consistency
from ..engine.ownership import own_dirs
from ..io.atomic import atomic_write_text
from ..io.rundir import run_files
from .budget import check_budget_grid, epoch_cap, study_budgets
from .dispatch import Interrupted, copy_run, run_local, run_on_ray  # noqa: F401 (Interrupted: for the CLI)

ASYNC_RULES = ("staleness", "delay-adaptive", "gap-aware", "adadelay", "dana", "dc-asgd-c", "dc-asgd-a")
METHODS = ("sequential", "ssgd", "msync", "rennala", "asgd", "ssp", "ringmaster", "ringmaster-stop") + ASYNC_RULES
SYNCHRONOUS = ("sequential", "ssgd", "msync", "rennala")        # their own tuned lr under the paper protocol
PARAMETER = {"rennala": ("rennala_s", "S"), "msync": ("msync_m", "m"), "ringmaster": ("ringmaster_r", "R"),
             "ringmaster-stop": ("ringmaster_r", "R")}           # method -> (grid key, name) of its own setting
PROTOCOLS = ("tuned", "paper")
DEFAULT_GRID = {"methods": list(METHODS), "workers": [1, 4, 8, 16, 32], "seeds": [0, 1, 2],
                "lr_grid": [0.05, 0.1, 0.2], "ssp_bound": 2, "val_size": 5000,
                "lam0_grid": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0], "lambda_workers": 8,
                "protocols": ["tuned"], "momenta": [0.0], "clusters": {"homogeneous": {}},
                "rennala_s": [2, 4, 8], "msync_m": [0.5], "ringmaster_r": [2, 4, 8],
                "time_budget": "sequential", "epoch_cap_factor": 4, "epoch_caps": {}}


def method_settings(method: str, ssp_bound: int, param: int | None = None) -> dict[str, str]:
    """(rule, consistency) of a method name; ``param`` is its own setting (S, m or R) where it has one."""
    table = {"sequential": ("sgd", "async"), "ssgd": ("sgd", "sync"), "asgd": ("sgd", "async"),
             "ssp": ("sgd", f"ssp:{ssp_bound}"), **{rule: (rule, "async") for rule in ASYNC_RULES},
             **{m: ("sgd", f"{m}:{param}") for m in PARAMETER}}
    if method not in table:
        raise ConfigError(f"method: unknown value {method!r}; allowed: {', '.join(METHODS)}")
    if method in PARAMETER and param is None:
        raise ConfigError(f"method {method}: needs its {PARAMETER[method][1]} (grid key {PARAMETER[method][0]})")
    rule, consistency = table[method]
    if method in PARAMETER:
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
    mode = consistency.split(":")[0]
    if mode in PARAMETER:
        return mode
    if consistency == "sync":
        return "ssgd"
    return "ssp" if consistency.startswith("ssp") else "asgd"


def param_of(config: dict[str, Any]) -> int | None:
    """A run's own method setting (Rennala's S, m-sync's m, Ringmaster's R) from its consistency, else None."""
    mode, _, value = config["consistency"].partition(":")
    return int(value) if mode in PARAMETER and value else None


def param_values(grid: dict[str, Any], method: str, workers: int) -> list[int | None]:
    """The values of a method's own setting searched at M = ``workers`` (``[None]`` for a method without one);
    m-sync: fractions of M (values below 1) or counts, only m < M."""
    if method not in PARAMETER:
        return [None]
    values = grid[PARAMETER[method][0]]
    if isinstance(values, dict):                 # a table of M -> values
        values = values.get(str(workers), [])
    values = values if isinstance(values, list) else [values]
    if method == "msync":
        values = [max(1, round(v * workers)) if isinstance(v, float) and v < 1 else int(v) for v in values]
        values = [m for m in values if m < workers]
    return sorted({int(v) for v in values})


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


CLUSTER_KEYS = ("lr_grid", "lr_grids", "rennala_s", "msync_m", "ringmaster_r", "epoch_caps", "epoch_cap_factor")


def cluster_grid(grid: dict[str, Any], cluster: str) -> dict[str, Any]:
    """The grid as the runs of ``cluster`` see it: ``cluster_grids[cluster]`` replaces any of
    :data:`CLUSTER_KEYS` (lr grids, S/m/R grids, epoch caps), so a study can spend its runs where
    methods differ."""
    return {**grid, **(grid.get("cluster_grids") or {}).get(cluster, {})}


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
    param: int | None = None          # the method's own setting (S, m or R), where it has one

    def config(self, base: TrainConfig, grid: dict[str, Any]) -> TrainConfig:
        # overwrite: a job's directory belongs to this study; an interrupted run left there is redone
        fields = dict(method_settings(self.method, grid["ssp_bound"], self.param), workers=self.workers,
                      seed=self.seed, lr=self.lr, out=str(self.out), overwrite=True, val_size=grid["val_size"],
                      progress=False, eval_split="val" if self.phase == "lr" else "test",
                      momentum=self.group.momentum)
        fields.update(cluster_settings(grid, self.group.cluster, self.workers))
        fields.update(budget_settings(grid, base, self.group.cluster, self.workers))
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


def budget_settings(grid: dict[str, Any], base: TrainConfig, cluster: str, workers: int) -> dict[str, Any]:
    """``time_budget`` and ``epochs`` (the cap) of a run on ``cluster``; nothing where the study has no budget
    (``grid["budgets"]`` is filled in by :func:`compare`)."""
    budget = float((grid.get("budgets") or {}).get(cluster, 0.0))
    if budget <= 0:
        return {}
    return {"time_budget": budget, "epochs": epoch_cap(cluster_grid(grid, cluster), base.epochs, workers)}


def _fmt(value: float) -> str:
    return f"{value:g}"


def pairs(grid: dict[str, Any], protocol: str = "tuned") -> list[tuple[str, int]]:
    """(method, M) of the study: sequential at M = 1 only, every other method at the other Ms where it has a
    setting to run; under ``paper`` only the methods of ``paper_methods`` where given (what is left out is in
    :func:`dropped`)."""
    methods = grid["methods"]
    if protocol == "paper" and grid.get("paper_methods") is not None:
        methods = [m for m in methods if m in grid["paper_methods"]]
    return [(m, w) for m in methods for w in grid["workers"]
            if (m == "sequential") == (w == 1) and param_values(grid, m, w)]


def lr_values(grid: dict[str, Any], method: str | None = None, workers: int | None = None) -> list[float]:
    """The learning rates searched for ``method`` at M = ``workers`` at momentum 0: the first of
    ``lr_grids["method@M"]``, ``lr_grids["method"]``, ``lr_grids["@M"]`` that is given, else ``lr_grid``."""
    table = grid.get("lr_grids") or {}
    for key in (f"{method}@{workers}", method, f"@{workers}"):
        if key in table:
            return list(table[key])
    return list(grid["lr_grid"])


def lr_grid(grid: dict[str, Any], momentum: float, method: str | None = None,
            workers: int | None = None) -> list[float]:
    """The learning rates searched at this momentum: :func:`lr_values` ``* (1 - momentum)``."""
    return [round(lr * (1.0 - momentum), 12) for lr in lr_values(grid, method, workers)]


def all_lr_values(grid: dict[str, Any]) -> list[float]:
    """Every learning rate of the study's grids at momentum 0, ascending."""
    return sorted({lr for values in [grid["lr_grid"], *(grid.get("lr_grids") or {}).values()] for lr in values})


LrKey = tuple[str, str, int]               # (group.lr_name, method, M)
SettingKey = tuple[str, str, str, int]     # (protocol, group.lr_name, method, M)


class Choice(NamedTuple):
    """The settings a final run uses: its learning rate and its own setting (S, m or R; None without one)."""

    lr: float
    param: int | None = None


def _lr_run_name(method: str, workers: int, lr: float, param: int | None) -> str:
    own = f"-{PARAMETER[method][1]}{param}" if param is not None else ""
    return f"{method}{own}-M{workers}-lr{_fmt(lr)}"


def lr_jobs(grid: dict[str, Any], out: Path) -> list[Job]:
    """Every lr-selection run the study needs: all of them for ``tuned``; for ``paper`` ASGD's, the synchronous
    methods' and those of the methods whose own setting is chosen at ASGD's lr."""
    needed: dict[tuple[Group, str, int], None] = {}
    for group in groups(grid):
        lr_group = Group(group.cluster, "lr", group.momentum)
        for method, workers in pairs(cluster_grid(grid, group.cluster), group.protocol):
            if group.protocol == "tuned" or method in SYNCHRONOUS or method == "asgd" or method in PARAMETER:
                needed[(lr_group, method, workers)] = None
    jobs = []
    for g, m, w in needed:
        mine = cluster_grid(grid, g.cluster)
        jobs += [Job("lr", g, m, w, grid["seeds"][0], lr, out / "lr" / g.lr_name / _lr_run_name(m, w, lr, p), param=p)
                 for lr in lr_grid(mine, g.momentum, m, w) for p in param_values(mine, m, w)]
    return jobs


def choose(base: TrainConfig, grid: dict[str, Any], out: Path) -> dict[SettingKey, Choice]:
    """The settings of every (protocol, lr group, method, M) whose lr-selection runs are all current.

    ``tuned``: the (lr, p) with the lowest final validation error (a diverged run counts as the worst;
    ties go to the smaller lr, then the smaller p).  ``paper``: the synchronous methods and ASGD as tuned;
    every other method at ASGD's lr, with its own setting the best at that lr.  A grid of one lr and one
    value of each setting has nothing to choose (and no lr phase).
    """
    jobs = lr_jobs(grid, out)
    results: dict[LrKey, list[tuple[float, float, int | None]]] = {}
    expected: dict[LrKey, int] = {}
    for job in jobs:
        key = (job.group.lr_name, job.method, job.workers)
        expected[key] = expected.get(key, 0) + 1
    single = all(n == 1 for n in expected.values())
    for job in jobs:
        key = (job.group.lr_name, job.method, job.workers)
        if single:
            results[key] = [(0.0, job.lr, job.param)]
            continue
        summary = current_summary(job, base, grid)
        if summary is not None:
            error = summary["final_test_error"]
            error = float("inf") if error is None or summary.get("diverged") else error
            results.setdefault(key, []).append((error, job.lr, job.param))
    complete = {k: sorted(r, key=lambda x: (x[0], x[1], x[2] or 0)) for k, r in results.items()
                if len(r) == expected[k]}
    chosen: dict[SettingKey, Choice] = {("tuned", *k): Choice(r[0][1], r[0][2]) for k, r in complete.items()}
    if "paper" in grid["protocols"]:
        for (lr_name, method, workers), runs in complete.items():
            asgd = chosen.get(("tuned", lr_name, "asgd", workers))
            if method in SYNCHRONOUS or method == "asgd":
                chosen[("paper", lr_name, method, workers)] = chosen[("tuned", lr_name, method, workers)]
            elif asgd is not None:               # its own setting: the best at ASGD's lr (else its tuned one)
                at_asgd_lr = [r for r in runs if r[1] == asgd.lr]
                own = at_asgd_lr[0][2] if at_asgd_lr else chosen[("tuned", lr_name, method, workers)].param
                chosen[("paper", lr_name, method, workers)] = Choice(asgd.lr, own)
        for group in groups(grid):           # methods the paper protocol alone runs without lr runs of their own
            if group.protocol != "paper":
                continue
            for method, workers in pairs(cluster_grid(grid, group.cluster), "paper"):
                asgd = chosen.get(("tuned", group.lr_name, "asgd", workers))
                if method not in PARAMETER and method not in SYNCHRONOUS and asgd is not None:
                    chosen.setdefault(("paper", group.lr_name, method, workers), Choice(asgd.lr, None))
    return chosen


def plan(base: TrainConfig, grid: dict[str, Any], out: Path, chosen: dict[SettingKey, Choice]) -> list[Job]:
    """Jobs of one phase: lr selection while ``chosen`` lacks entries, then final and lambda runs."""
    missing = [job for job in lr_jobs(grid, out)
               if ("tuned", job.group.lr_name, job.method, job.workers) not in chosen]
    if missing:
        return missing
    jobs = []
    for g in groups(grid):
        for m, w in pairs(cluster_grid(grid, g.cluster), g.protocol):
            choice = chosen[(g.protocol, g.lr_name, m, w)]
            jobs += [Job("final", g, m, w, seed, choice.lr, out / "final" / g.name / f"{m}-M{w}-s{seed}",
                         param=choice.param) for seed in grid["seeds"]]
    named = [g for g in groups(grid) if g.name == grid.get("lambda_group")]
    first, workers = (named or groups(grid))[0], grid.get("lambda_workers", 8)
    if "dc-asgd-a" in grid["methods"] and workers in grid["workers"] and grid.get("lam0_grid"):
        lr = chosen[(first.protocol, first.lr_name, "dc-asgd-a", workers)].lr
        jobs += [Job("lambda", first, "dc-asgd-a", workers, grid["seeds"][0], lr,
                     out / "lambda" / first.name / f"lam0-{_fmt(v)}", (("lam0", v),)) for v in grid["lam0_grid"]]
    return jobs


def dropped(grid: dict[str, Any]) -> list[dict[str, str]]:
    """What the grid names but the study does not run, each with the reason (printed, and in compare.json)."""
    out = []
    methods, workers = grid["methods"], grid["workers"]
    if "sequential" in methods and 1 not in workers:
        out.append({"what": "sequential SGD", "why": "it runs at M = 1, which is not in the worker grid; "
                    "without it there is no target error for the time to target and no speedups"})
    elif "sequential" not in methods:
        out.append({"what": "sequential SGD", "why": "not among the methods; without it there is no target "
                    "error for the time to target and no speedups"})
    if 1 in workers and any(m != "sequential" for m in methods):
        out.append({"what": "every method but sequential SGD at M = 1", "why": "with one worker each is "
                    "sequential SGD (the same run)"})
    for m in methods:
        for w in workers:
            empty = [c for c in grid["clusters"] if not param_values(cluster_grid(grid, c), m, w)]
            if w > 1 and m != "sequential" and empty:
                where = "" if len(empty) == len(grid["clusters"]) else f" on cluster {', '.join(empty)}"
                given = cluster_grid(grid, empty[0])[PARAMETER[m][0]]
                out.append({"what": f"{m} at M = {w}{where}", "why": f"no {PARAMETER[m][1]} of {PARAMETER[m][0]} "
                            f"{given} for M = {w}" + (" below M (m = M is SSGD)" if m == "msync" else "")})
    if "paper" in grid["protocols"] and grid.get("paper_methods") is not None:
        left = [m for m in methods if m not in grid["paper_methods"]]
        if left:
            out.append({"what": f"under the paper protocol: {', '.join(left)}", "why": "not in paper_methods: the "
                        "study runs the paper protocol for the question it asks (does DC-ASGD beat ASGD at ASGD's "
                        "lr?) and spends the rest on the tuned groups"})
    for key, values in (grid.get("narrowed") or {}).items():
        out.append({"what": f"{key} {', '.join(map(str, values))} of the preset's grid",
                    "why": f"the command line narrowed {key} to {', '.join(map(str, grid[key]))}"})
    lam_m = grid.get("lambda_workers", 8)
    if grid.get("lam0_grid"):
        if "dc-asgd-a" not in methods:
            out.append({"what": "the lambda sweep", "why": "it sweeps DC-ASGD-a's lam0, and dc-asgd-a is not "
                        "among the methods"})
        elif lam_m not in workers:
            out.append({"what": "the lambda sweep", "why": f"it runs at M = {lam_m} (lambda_workers), which "
                        f"is not in the worker grid {workers}"})
    return out


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

    def finished(self, job: Job, summary: dict[str, Any] | None, how: str = "ran") -> None:
        """``how``: "ran", "skipped" (done before) or "copied" (the same run under another group)."""
        self.done += 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (self.total - self.done) if how != "skipped" else 0.0
        error = None if summary is None else summary["final_test_error"]
        what = ("skipped (done before)" if how == "skipped" else "diverged" if error is None
                else f"error {error:.4g}" + (", copied: the same run as another group's" if how == "copied" else ""))
        own = f" {PARAMETER[job.method][1]}={job.param}" if job.param is not None else ""
        print(f"[{self.done}/{self.total}] {elapsed:6.0f}s eta {eta:5.0f}s  {job.phase:6s} {job.group.name} "
              f"{job.method:15s} M={job.workers:<3d} seed={job.seed} lr={_fmt(job.lr)}{own}"
              f"{dict(job.extra) or ''}: {what}", flush=True)


def _same_run(cfg: TrainConfig) -> str:
    """What makes two runs the same run: every setting but where and how it reports (config.RUN_INVARIANT)."""
    return json.dumps({k: v for k, v in cfg.to_dict().items() if k not in RUN_INVARIANT}, sort_keys=True)


def run_jobs(jobs: list[Job], base: TrainConfig, grid: dict[str, Any], out: Path, n_jobs: int,
             threads: int, address: str | None = None) -> None:
    """Run the jobs that have no current run; the same run under two names runs once and is copied."""
    configs = {job: job.config(base, grid) for job in jobs}
    todo, done_before = [], []
    for job in jobs:
        summary, differences = finished_run(job, configs[job])
        if differences:
            move_stale(job, out, differences)
        (todo if summary is None or differences else done_before).append(job)
    progress = GridProgress(len(jobs))
    for job in done_before:
        progress.finished(job, None, how="skipped")
    source: dict[str, Job] = {}                  # a run's settings -> the job that holds or will hold it
    for job in done_before:
        source.setdefault(_same_run(configs[job]), job)
    twins: dict[Job, list[Job]] = {}             # a job to run -> the jobs that get a copy of it
    for job in todo:
        first = source.setdefault(_same_run(configs[job]), job)
        if first is job:
            twins[job] = []
        elif first in twins:
            twins[first].append(job)
        else:                                    # the same run is already done under another name
            progress.finished(job, copy_run(first.out, job.out), how="copied")

    def done(job: Job, summary: dict[str, Any]) -> None:
        progress.finished(job, summary)
        for twin in twins[job]:
            progress.finished(twin, copy_run(job.out, twin.out), how="copied")

    to_run = {job: configs[job] for job in twins}
    if not to_run:
        return
    if address:
        run_on_ray(to_run, address, threads, done, base.connect_timeout)
    else:
        run_local(to_run, n_jobs, threads, done)


def compare(base: TrainConfig, grid: dict[str, Any], out: Path, n_jobs: int, threads: int = 0,
            address: str | None = None) -> dict[str, Any]:
    """Run all phases; returns what compare.json records.

    ``threads`` torch threads per run (0: cores / jobs).  Results are bit-reproducible for
    the same thread count; it is part of the command recorded in compare.json.  ``address``:
    run each job as a task on that Ray cluster instead of ``n_jobs`` local processes.
    """
    with own_dirs([out], "study"):
        claim_study_dir(out, base)
        threads = threads or max(1, (os.cpu_count() or 1) // n_jobs)
        not_run = dropped(grid)
        grid = with_budgets(base, grid)
        check_plan(base, grid, out)              # every run's settings, before anything is written
        for item in not_run:
            print(f"compare: not run: {item['what']}: {item['why']}", flush=True)
        _write_record(out, grid, {}, base, not_run, finished=False)
        chosen = choose(base, grid, out)
        for _ in range(2):                       # phase 1 (if needed), then phases 2 and 3
            jobs = plan(base, grid, out, chosen)
            run_jobs(jobs, base, grid, out, n_jobs, threads, address)
            if jobs and jobs[0].phase == "lr":
                chosen = choose(base, grid, out)
                continue
            break
        return _write_record(out, grid, chosen, base, not_run, finished=True)


def check_plan(base: TrainConfig, grid: dict[str, Any], out: Path) -> None:
    """Validate the settings of every run the study will make before anything is written (learning rates
    and S/m/R are not chosen yet: each is checked at every value of its grid)."""
    for job in lr_jobs(grid, out):
        job.config(base, grid)


def with_budgets(base: TrainConfig, grid: dict[str, Any]) -> dict[str, Any]:
    """The grid with ``budgets`` (cluster -> seconds, 0: none) and ``sequential_time_s`` (cluster -> seed ->
    seconds, when the budget is sequential SGD's time) filled in (:mod:`.budget`)."""
    grid = {k: v for k, v in grid.items() if k not in ("budgets", "sequential_time_s")}
    sequential = {cluster: [Job("final", Group(cluster, "tuned", 0.0), "sequential", 1, seed, base.lr,
                                Path("sequential")).config(base, grid) for seed in grid["seeds"]]
                  for cluster in grid["clusters"]}
    return {**grid, **study_budgets(grid, sequential)}


def _write_record(out: Path, grid: dict[str, Any], chosen: dict[SettingKey, Choice], base: TrainConfig,
                  not_run: list[dict[str, str]], finished: bool) -> dict[str, Any]:
    """OUT/compare.json: the grid (with the budgets), the chosen settings, the epoch caps, what was not run and
    why, the base settings, command and commit."""
    budgeted = any(v > 0 for v in (grid.get("budgets") or {}).values())
    record = {"grid": grid,
              "chosen_lr": {f"{g}/{m}@M{w}": c.lr for (p, g, m, w), c in sorted(chosen.items()) if p == "tuned"},
              "chosen": {f"{p}/{g}/{m}@M{w}": {"lr": c.lr, **({PARAMETER[m][1]: c.param} if c.param is not None
                                                              else {})}
                         for (p, g, m, w), c in sorted(chosen.items())},
              "epoch_cap_per_workers": ({c: {str(w): epoch_cap(cluster_grid(grid, c), base.epochs, w)
                                             for w in grid["workers"]} for c in grid["clusters"]}
                                        if budgeted else None),
              "dropped": not_run, "command": "dcasgd " + " ".join(sys.argv[1:]), "git_commit": git_commit(),
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
    """The study grid: DEFAULT_GRID < the preset's or TOML file's ``[compare]`` table < ``overrides``; checked.

    ``grid["narrowed"]``: for each list the command line narrowed, the preset's values it left out
    (:func:`dropped` records them, so a study run on part of its preset says which part).
    """
    from ..presets import load_preset_grid
    grid = dict(DEFAULT_GRID)
    if source:
        grid.update(load_preset_grid(source))
    narrowed = {key: [v for v in grid[key] if v not in value] for key, value in overrides.items()
                if source and isinstance(grid.get(key), list) and isinstance(value, list)}
    grid.update(overrides)
    grid["narrowed"] = {key: values for key, values in narrowed.items() if values}
    if val_size is not None:
        grid["val_size"] = val_size
    for key in ("methods", "workers", "seeds", "lr_grid"):
        if not grid[key]:
            raise ConfigError(f"compare: the {key.replace('_', '-')} list is empty; give at least one value")
    for m in grid["methods"]:
        method_settings(m, grid["ssp_bound"], 1)
    for w in grid["workers"]:
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ConfigError(f"compare: worker counts must be integers >= 1, got {w!r}")
    for seed in grid["seeds"]:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"compare: seeds must be integers >= 0, got {seed!r}")
    if grid["val_size"] < 1:
        raise ConfigError("compare needs val_size >= 1: learning rates are chosen on a validation split")
    for protocol in grid["protocols"]:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"compare: protocol {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    for m in grid.get("paper_methods") or []:
        if m not in METHODS:
            raise ConfigError(f"compare: paper_methods: unknown method {m!r}; allowed: {', '.join(METHODS)}")
    asynchronous = [m for m in grid["methods"] if m not in SYNCHRONOUS and m != "asgd"
                    and m in (grid.get("paper_methods") or grid["methods"])]
    if "paper" in grid["protocols"] and asynchronous and "asgd" not in grid["methods"]:
        raise ConfigError(f"compare: the paper protocol runs every asynchronous method at ASGD's lr: add the "
                          f"method asgd (asynchronous methods here: {', '.join(asynchronous)})")
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
    for cluster, table in (grid.get("cluster_grids") or {}).items():
        if cluster not in grid["clusters"] or not isinstance(table, dict) or set(table) - set(CLUSTER_KEYS):
            raise ConfigError(f"compare: cluster_grids[{cluster!r}] must name a cluster and set only "
                              f"{', '.join(CLUSTER_KEYS)}, got {table!r}")
    for cluster in grid["clusters"]:
        mine = cluster_grid(grid, cluster)
        _check_lr_grids(mine)
        _check_method_settings(mine)
        check_budget_grid(mine)
    return grid


def _check_lr_grids(grid: dict[str, Any]) -> None:
    """lr_grids keys 'method', 'method@M' or '@M'; every learning rate a finite number > 0."""
    lr_grids = grid.get("lr_grids") or {}
    if not isinstance(lr_grids, dict):
        raise ConfigError(f"compare: lr_grids must be a table of 'method', 'method@M' or '@M' -> learning rates, "
                          f"got {lr_grids!r}")
    for key, values in lr_grids.items():
        method, _, workers = key.partition("@")
        if (method and method not in METHODS) or (workers and not workers.isdigit()) or not (method or workers):
            raise ConfigError(f"compare: lr_grids key {key!r} is not 'method', 'method@M' or '@M'")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"compare: lr_grids[{key!r}] must be a non-empty list of learning rates")
    for lr in all_lr_values(grid):
        if not (isinstance(lr, (int, float)) and lr > 0 and lr < float("inf")):
            raise ConfigError(f"compare: learning rates must be finite numbers > 0, got {lr!r}")


def _check_method_settings(grid: dict[str, Any]) -> None:
    """rennala_s and ringmaster_r: integers >= 1; msync_m: integers >= 1 or fractions of M in (0, 1)."""
    for key, name in sorted(set(PARAMETER.values())):
        given = grid[key]
        tables = list(given.values()) if isinstance(given, dict) else [given]
        values = [v for t in tables for v in (t if isinstance(t, list) else [t])]
        for v in values:
            fraction = key == "msync_m" and isinstance(v, float) and 0 < v < 1
            if not fraction and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 1 or v != int(v)):
                raise ConfigError(f"compare: {key} values must be integers >= 1"
                                  + (" or fractions of M in (0, 1)" if key == "msync_m" else "") + f", got {v!r}")
        if not values:
            raise ConfigError(f"compare: the {key} list is empty; give at least one {name}")
