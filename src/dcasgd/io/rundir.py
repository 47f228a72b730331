"""A run directory belongs to one run.

A run writes ``metrics.jsonl``, ``summary.json``, ``checkpoints/``, ``run_id``
and (on Ray) ``trace.jsonl`` into its directory.  ``run_id`` names the run (a
random hex string made when it starts); its checkpoints and summary carry the
same id, so a checkpoint copied in from another run is recognised and refused.  A *new* run refuses a directory
that already holds any of them, unless asked to overwrite, in which case
those files are removed just before the new ones are written: the files of two
runs are never mixed.  A *resumed* run continues in the directory it resumes
(``--resume DIR`` writes into DIR), or copies that run's history into a fresh
``--out`` first.

Torch-free: the CLI checks directories before anything heavy starts.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from ..errors import InputError

RUN_FILES = ("summary.json", "metrics.jsonl", "trace.jsonl", "checkpoints", "run_id")
CHECKPOINT_DIR = "checkpoints"
RUN_ID_FILE = "run_id"


class RunDirError(InputError):
    """A run directory that holds another run's files, or a resume directory that is not a run."""


def run_files(directory: Path | str) -> list[str]:
    """The run files present in ``directory`` (empty if none, or no such directory)."""
    directory = Path(directory)
    return [name for name in RUN_FILES if (directory / name).exists()]


def resume_run_dir(path: Path | str) -> Path:
    """The run directory of ``--resume PATH``: PATH itself, or its parent when PATH is its ``checkpoints/``."""
    path = Path(path)
    if path.name == CHECKPOINT_DIR and not (path / CHECKPOINT_DIR).is_dir():
        return path.parent
    return path


def check_new_run_dir(out: Path | str, overwrite: bool, what: str = "run") -> None:
    """Refuse ``out`` if it holds another run's files and ``overwrite`` is off."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"out {out} exists and is not a directory")
    present = run_files(out)
    if present and not overwrite:
        raise RunDirError(f"out {out} holds another {what}'s files ({', '.join(present)}): choose a new --out, "
                          f"continue that run with --resume {out}, or replace it with --overwrite")


def clear_run_files(out: Path | str) -> list[str]:
    """Remove the run files of ``out`` (for ``--overwrite``); other files are left alone.  Returns what went."""
    out = Path(out)
    removed = []
    for name in run_files(out):
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        removed.append(name)
    return removed


def tensorboard_files(directory: Path | str) -> list[Path]:
    """TensorBoard event files directly in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(directory.glob("events.out.tfevents.*"))


def check_tensorboard_dir(directory: Path | str, overwrite: bool) -> None:
    """Refuse a ``--tensorboard`` directory holding another run's event files unless ``overwrite``."""
    present = tensorboard_files(directory)
    if present and not overwrite:
        raise RunDirError(f"tensorboard directory {directory} holds another run's event files "
                          f"({len(present)}, e.g. {present[0].name}): choose a new directory or use --overwrite")


def clear_tensorboard_files(directory: Path | str) -> None:
    for path in tensorboard_files(directory):
        path.unlink()


def new_run_id() -> str:
    """A fresh run identity: 32 random hex digits."""
    return uuid.uuid4().hex


def read_run_id(directory: Path | str) -> str | None:
    """The id of the run whose files ``directory`` holds; None for a run made before ids existed."""
    try:
        text = (Path(directory) / RUN_ID_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None
