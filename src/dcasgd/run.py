"""What every backend's run shares: data, schedule, output directory, summary.

``summary.json`` always has ``final_test_error`` (percent, on the evaluation
split), ``updates``, ``mean_staleness``, ``max_staleness``, ``wall_time_s``,
``staleness`` (histogram and percentiles, overall and per worker),
``pushes_per_worker``, ``config`` and ``command``; the simulator adds
``sim_time_s``, the Ray backend ``updates_per_s``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_bytes
from .config import TrainConfig
from .data import Dataset, load_dataset
from .rules import LRSchedule


@dataclass
class RunContext:
    cfg: TrainConfig
    data: Dataset
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    schedule: LRSchedule
    out: Path


def prepare_run(cfg: TrainConfig) -> RunContext:
    """Validate, load the dataset and make the output directory."""
    cfg.validate()
    data = load_dataset(cfg.dataset, val_size=cfg.val_size, seed=cfg.seed, root=cfg.data_root)
    if cfg.eval_split == "val":
        eval_x, eval_y = data.val_x, data.val_y
    else:
        eval_x, eval_y = data.test_x, data.test_y
    schedule = LRSchedule(cfg.lr, cfg.lr_schedule, tuple(cfg.lr_milestones), cfg.lr_gamma,
                          cfg.epochs, cfg.warmup_epochs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return RunContext(cfg, data, eval_x, eval_y, schedule, out)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file, fsync and rename: never half written."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    summary = {**summary, "command": " ".join(sys.argv)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
