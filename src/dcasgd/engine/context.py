"""What every backend's run shares: checks before anything starts, data, schedule, run directory, summary.

``summary.json`` always has ``final_test_error`` (percent, on the evaluation
split), ``outcome`` (:data:`OUTCOMES`), ``updates``, ``mean_staleness``,
``max_staleness``, ``wall_time_s``, ``staleness`` (histogram and
percentiles, overall and per worker), ``pushes_per_worker``,
``ignored_settings``, ``config`` and ``command``; the simulator adds
``sim_time_s``, the Ray backend ``updates_per_s``.

:func:`prepare_run` does every check that can fail before the run directory
is touched: the settings, that the directory is free (or ``overwrite``),
the data set, that every worker gets a non-empty shard, and that the
server's memory fits the machine.  Bad input therefore leaves nothing
behind.  :func:`open_run_dir` then makes the directory (removing an old
run's files when ``overwrite`` asked for it).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..compute.batches import EVAL_BATCH, eval_batches
from ..compute.data import Dataset
from ..compute.models import seeded_model
from ..compute.task import LazyData, Task, task_from_config
from ..config import ConfigError, TrainConfig
from ..core.rules import LRSchedule
from ..io.atomic import atomic_write_text
from ..io.rundir import (RUN_ID_FILE, check_new_run_dir, check_tensorboard_dir, clear_run_files,
                         clear_tensorboard_files, new_run_id, read_run_id, resume_run_dir)
from .budget import budgeted

# How a run ended (summary["outcome"]); the CLI prints one line and exit status per outcome.
OUTCOMES = ("finished", "stopped", "diverged", "max_refused", "no_live_workers", "interrupted", "failed")

# Settings one backend does not use: warned about once, recorded in summary["ignored_settings"].
IGNORED_BY = {
    "ray": ("base_time", "jitter", "comm_time", "failures", "replay", "corrupt", "timing", "jitters",
            "timing_quantiles"),
    "sim": ("servers", "address", "worker_restarts", "device", "connect_timeout"),
}


@dataclass
class RunContext:
    """Everything a backend needs to run one configuration, prepared before any file is touched."""

    cfg: TrainConfig
    task: Task                                   # model factory, data, loss, metric
    eval_x: torch.Tensor | None                  # what evaluations score: the test split, or val, or train
    eval_y: torch.Tensor | None                  # (tensor data; None for lazy data, see eval_set)
    schedule: Callable[[float], float]          # lr at an epoch (LRSchedule; under a time budget, engine.budget)
    out: Path | None                             # None: nothing is written (results in memory)
    model: torch.nn.Module                       # the freshly initialised model (seeded by cfg.seed)
    resume_dir: Path | None = None               # the run directory a resumed run continues
    ignored_settings: list[str] = field(default_factory=list)
    eval_set: Any = None                         # lazy data: the Dataset evaluations read (eval_x/eval_y None)
    run_id: str | None = None                    # the run's identity (set by open_run_dir; None: no files)

    @property
    def data(self) -> Dataset | LazyData:
        return self.task.data

    def eval_batches(self) -> Iterator[Any]:
        """The evaluation split's batches, in order: chunks of the tensors, or collated Dataset items."""
        if self.eval_set is None:
            return ((self.eval_x[i:i + EVAL_BATCH], self.eval_y[i:i + EVAL_BATCH])
                    for i in range(0, len(self.eval_y), EVAL_BATCH))
        return eval_batches(self.eval_set, self.task.data.collate_fn, self.cfg.seed)

    @property
    def eval_split(self) -> str:
        """What the evaluations measure: ``test``, ``val``, or ``train`` (a task without evaluation data)."""
        return "train" if self.task.eval_on_train and self.cfg.eval_split == "test" else self.cfg.eval_split


def prepare_run(cfg: TrainConfig, task: Task | None = None) -> RunContext:
    """Check everything, load the data and build the model; touches no file.

    ``task`` is the user's model, data, loss and metric (the Python API); by
    default the configuration's names or import paths are resolved.
    """
    cfg.validate()
    ignored = ignored_settings(cfg)
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        print(f"dcasgd: warning: --backend {cfg.backend} ignores {flags} (recorded in summary.json "
              f"as ignored_settings)", file=sys.stderr)
    out = None if cfg.out is None else Path(cfg.out)
    resume_dir = resume_run_dir(cfg.resume) if cfg.resume else None
    if out is not None and (resume_dir is None or not _same_dir(out, resume_dir)):
        check_new_run_dir(out, cfg.overwrite)
    if cfg.tensorboard and resume_dir is None:
        check_tensorboard_dir(cfg.tensorboard, cfg.overwrite)
    task = task_from_config(cfg) if task is None else task
    data = task.data
    check_shards(cfg, data.num_train)
    model = seeded_model(task.model_fn, cfg.seed)
    check_memory(cfg, sum(p.numel() for p in model.parameters() if p.requires_grad))
    evaluated = task.eval_set(cfg.eval_split)
    if cfg.eval_split == "val" and len(evaluated[1] if isinstance(evaluated, tuple) else evaluated) == 0:
        raise ConfigError("eval_split 'val' needs val_size > 0")
    eval_x, eval_y, eval_set = (*evaluated, None) if isinstance(evaluated, tuple) else (None, None, evaluated)
    schedule = budgeted(LRSchedule(cfg.lr, cfg.lr_schedule, tuple(cfg.lr_milestones), cfg.lr_gamma,
                                   cfg.epochs, cfg.warmup_epochs), cfg)
    return RunContext(cfg, task, eval_x, eval_y, schedule, out, model, resume_dir, ignored, eval_set)


def open_run_dir(ctx: RunContext) -> None:
    """Make the run directory; with ``overwrite``, first remove the files of the run it held.

    A new run gets a new identity (``run_id``, written to ``DIR/run_id``); a
    resumed run keeps the identity of the run it continues (copied into a new
    ``--out``), or None for a run made before identities existed.
    """
    cfg = ctx.cfg
    if ctx.out is None:
        return
    continuing_in_place = ctx.resume_dir is not None and _same_dir(ctx.out, ctx.resume_dir)
    if cfg.overwrite and not continuing_in_place:
        clear_run_files(ctx.out)
        if cfg.tensorboard and ctx.resume_dir is None:
            clear_tensorboard_files(cfg.tensorboard)
    ctx.out.mkdir(parents=True, exist_ok=True)
    ctx.run_id = new_run_id() if ctx.resume_dir is None else read_run_id(ctx.resume_dir)
    if ctx.run_id is not None and not continuing_in_place:
        atomic_write_text(ctx.out / RUN_ID_FILE, ctx.run_id + "\n")


def ignored_settings(cfg: TrainConfig) -> list[str]:
    """The settings given (not at their defaults) that ``cfg.backend`` does not use."""
    default = TrainConfig()
    return [name for name in IGNORED_BY[cfg.backend] if getattr(cfg, name) != getattr(default, name)]


def check_shards(cfg: TrainConfig, num_train: int) -> None:
    """Every worker needs at least one training sample in its shard."""
    if cfg.workers > num_train:
        raise ConfigError(f"workers {cfg.workers}: the training set has {num_train} samples, so some workers' "
                          f"shards would be empty (at most {num_train} workers)")


def server_memory_bytes(cfg: TrainConfig, num_params: int) -> int:
    """Bytes the server holds for ``num_params`` parameters: weights, rule state, per-worker backups.

    Computed by building the state on the ``meta`` device (no memory is allocated).
    """
    from ..core.server import ServerCore
    return ServerCore.memory_bytes(num_params, cfg.rule, cfg.workers, getattr(torch, cfg.backup_dtype),
                                   **cfg.rule_params())


def run_memory_bytes(cfg: TrainConfig, num_params: int) -> int:
    """Estimated bytes on this machine: the server, plus one pulled copy of the weights per worker."""
    return server_memory_bytes(cfg, num_params) + cfg.workers * num_params * 4


def proc_bytes(path: str, name: str) -> int | None:
    """The kB field ``name`` of a Linux /proc file (``MemAvailable`` of /proc/meminfo, ``VmRSS`` of
    /proc/self/status), in bytes; None where the file or the field cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, else physical memory."""
    available = proc_bytes("/proc/meminfo", "MemAvailable")
    if available is not None:
        return available
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63


def check_memory(cfg: TrainConfig, num_params: int) -> None:
    """Refuse a run whose server (and workers, on this machine) cannot fit in the memory available."""
    if cfg.backend == "ray" and cfg.address:
        return                                           # the server runs on the cluster, not here
    need, have = run_memory_bytes(cfg, num_params), available_memory_bytes()
    if need > 0.9 * have:
        raise ConfigError(f"workers {cfg.workers}: the run needs about {_gib(need)} (weights, rule state and "
                          f"{cfg.workers} per-worker copies of {num_params:,} parameters) but this machine has "
                          f"{_gib(have)} available; use fewer workers or --backup-dtype bfloat16")


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def _same_dir(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def command_line() -> str:
    """This process's command line as a user would type it (``dcasgd train ...`` for ``python -m dcasgd``)."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if program in ("__main__.py", "dcasgd"):
        return " ".join(["dcasgd", *sys.argv[1:]])
    return " ".join(sys.argv)


def write_summary(out: Path | None, summary: dict[str, Any]) -> dict[str, Any]:
    """Add the command line and write ``out/summary.json`` atomically (nothing when ``out`` is None).

    Non-finite numbers (a metric that came out NaN) are written as ``null``:
    ``NaN`` is not JSON.  The returned summary holds the same values.
    """
    summary = finite_or_null({**summary, "command": command_line()})
    if out is not None:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return summary


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float, however deeply nested, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(finite_or_null(v) for v in value)
    return value
