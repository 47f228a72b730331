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
from typing import Any

import torch

from .atomic import atomic_write_text
from .checkpoint import CheckpointError, load_latest
from .config import RESUME_MAY_CHANGE, ConfigError, TrainConfig
from .data import Dataset, load_dataset
from .models import build_model
from .rules import LRSchedule
from .rundir import (check_new_run_dir, check_tensorboard_dir, clear_run_files, clear_tensorboard_files,
                     resume_run_dir)

# How a run ended (summary["outcome"]); the CLI prints one line and exit status per outcome.
OUTCOMES = ("finished", "stopped", "diverged", "max_refused", "no_live_workers")

# Settings one backend does not use: warned about once, recorded in summary["ignored_settings"].
IGNORED_BY = {
    "ray": ("base_time", "jitter", "comm_time", "failures", "replay", "corrupt"),
    "sim": ("servers", "address", "worker_restarts", "device"),
}


@dataclass
class RunContext:
    cfg: TrainConfig
    data: Dataset
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    schedule: LRSchedule
    out: Path
    model: torch.nn.Module                       # the freshly initialised model (seeded by cfg.seed)
    resume_dir: Path | None = None               # the run directory a resumed run continues
    ignored_settings: list[str] = field(default_factory=list)


def prepare_run(cfg: TrainConfig) -> RunContext:
    """Check everything, load the data set and build the model; touches no file."""
    cfg.validate()
    ignored = ignored_settings(cfg)
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        print(f"dcasgd: warning: --backend {cfg.backend} ignores {flags} (recorded in summary.json "
              f"as ignored_settings)", file=sys.stderr)
    out = Path(cfg.out)
    resume_dir = resume_run_dir(cfg.resume) if cfg.resume else None
    if resume_dir is None or not _same_dir(out, resume_dir):
        check_new_run_dir(out, cfg.overwrite)
    if cfg.tensorboard and resume_dir is None:
        check_tensorboard_dir(cfg.tensorboard, cfg.overwrite)
    data = load_dataset(cfg.dataset, val_size=cfg.val_size, seed=cfg.seed, root=cfg.data_root)
    check_shards(cfg, len(data.train_y))
    model = build_model(cfg.model, data.input_shape, data.num_classes, seed=cfg.seed)
    check_memory(cfg, sum(p.numel() for p in model.parameters() if p.requires_grad))
    if cfg.eval_split == "val":
        eval_x, eval_y = data.val_x, data.val_y
    else:
        eval_x, eval_y = data.test_x, data.test_y
    schedule = LRSchedule(cfg.lr, cfg.lr_schedule, tuple(cfg.lr_milestones), cfg.lr_gamma,
                          cfg.epochs, cfg.warmup_epochs)
    return RunContext(cfg, data, eval_x, eval_y, schedule, out, model, resume_dir, ignored)


def open_run_dir(ctx: RunContext) -> None:
    """Make the run directory; with ``overwrite``, first remove the files of the run it held."""
    cfg = ctx.cfg
    continuing_in_place = ctx.resume_dir is not None and _same_dir(ctx.out, ctx.resume_dir)
    if cfg.overwrite and not continuing_in_place:
        clear_run_files(ctx.out)
        if cfg.tensorboard and ctx.resume_dir is None:
            clear_tensorboard_files(cfg.tensorboard)
    ctx.out.mkdir(parents=True, exist_ok=True)


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
    from .server import ServerCore
    return ServerCore.memory_bytes(num_params, cfg.rule, cfg.workers, getattr(torch, cfg.backup_dtype),
                                   **cfg.rule_params())


def run_memory_bytes(cfg: TrainConfig, num_params: int) -> int:
    """Estimated bytes on this machine: the server, plus one pulled copy of the weights per worker."""
    return server_memory_bytes(cfg, num_params) + cfg.workers * num_params * 4


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo, else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
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


def load_resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run_dir/checkpoints`` that verifies; says on stderr which it skipped."""
    path, state, skipped = load_latest(Path(run_dir) / "checkpoints", with_skipped=True)
    for reason in skipped:
        print(f"dcasgd: warning: skipped a checkpoint that does not verify ({reason})", file=sys.stderr)
    if skipped:
        print(f"dcasgd: warning: resuming from the older checkpoint {path}", file=sys.stderr)
    return path, state


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """A checkpoint resumes only the run it came from: every setting but RESUME_MAY_CHANGE must match."""
    current = cfg.to_dict()
    differ = sorted(k for k in current if k not in RESUME_MAY_CHANGE and _norm(saved.get(k)) != _norm(current[k]))
    if differ:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current[k]!r}" for k in differ)
        raise CheckpointError(f"checkpoint {path} is from a different run ({detail})")


def _norm(value: Any) -> Any:
    """Tuples and lists compare equal, dict keys as strings (a checkpoint's config went through torch.save)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in value.items()}
    return value


def advance_eval_mark(mark: float, epoch: float, every: float) -> float:
    """The next epoch to evaluate at: ``mark + k * every`` for the least k putting it past ``epoch``.

    Adds ``every`` one step at a time (the committed runs' rounding); a tiny
    ``every`` far behind ``epoch`` first jumps by a multiple, so the loop is short.
    """
    behind = math.floor((epoch - mark) / every) - 2
    if behind > 16:
        mark += behind * every
    while mark <= epoch + 1e-12:
        mark += every
    return mark


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    summary = {**summary, "command": " ".join(sys.argv)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
