"""Resuming a run: which checkpoint, and whether it belongs to this run.

One rule for both backends: a checkpoint resumes only the run it came from,
so its run identity must be the directory's (:func:`check_same_run`) and
every setting but :data:`dcasgd.config.RESUME_MAY_CHANGE` must match its
recorded configuration.  :func:`load_resume_checkpoint` takes the newest
checkpoint that verifies and says on stderr which newer ones it skipped.
:func:`metrics_prefix_problem` checks that ``metrics.jsonl`` still holds the
bytes the checkpoint recorded (length and SHA-256), so a resume never pads a
lost tail with invented bytes; :func:`check_thread_count` warns when the
torch thread count, on which the simulator's bits depend, changed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ..config import RESUME_MAY_CHANGE, TrainConfig
from ..io.checkpoint import CheckpointError, load_latest
from ..io.metrics import digest_of_prefix
from ..io.rundir import read_run_id


def load_resume_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of ``run_dir/checkpoints`` that verifies; says on stderr which it skipped."""
    path, state, skipped = load_latest(Path(run_dir) / "checkpoints", with_skipped=True)
    for reason in skipped:
        print(f"dcasgd: warning: skipped a checkpoint that does not verify ({reason})", file=sys.stderr)
    if skipped:
        print(f"dcasgd: warning: resuming from the older checkpoint {path}", file=sys.stderr)
    return path, state


def check_resumable(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    """A checkpoint resumes only the run it came from: every setting but RESUME_MAY_CHANGE must match
    (a setting the checkpoint does not record is one added since: it ran at the default)."""
    current, default = cfg.to_dict(), TrainConfig().to_dict()
    differ = sorted(k for k in current
                    if k not in RESUME_MAY_CHANGE and _norm(saved.get(k, default[k])) != _norm(current[k]))
    if differ:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k, default[k])!r} vs now {current[k]!r}" for k in differ)
        raise CheckpointError(f"checkpoint {path} is from a different run ({detail})")


def _norm(value: Any) -> Any:
    """Tuples and lists compare equal, dict keys as strings (a checkpoint's config went through torch.save)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in value.items()}
    return value


def check_same_run(saved_run_id: str | None, run_dir: Path, path: Path) -> None:
    """A checkpoint carries its run's identity; refuse one whose identity is not ``run_dir``'s.

    Runs made before identities existed have none, in the directory and in
    their checkpoints alike; those still resume each other.
    """
    own = read_run_id(run_dir)
    if saved_run_id != own:
        theirs = f"run {saved_run_id}" if saved_run_id else "a run without an identity"
        mine = f"run {own}" if own else "a run without an identity"
        raise CheckpointError(f"checkpoint {path} belongs to {theirs}, but {run_dir} holds {mine}: it was copied "
                              f"in from another run; remove it from {path.parent}, or resume that run's own "
                              f"directory")


def metrics_prefix_problem(metrics: Path, mark: dict[str, Any]) -> str | None:
    """Why ``metrics`` does not hold the prefix a checkpoint recorded (``{"bytes", "sha256"}``); None if it does.

    Checkpoints written before digests were recorded carry only the length.
    """
    length, expected = int(mark["bytes"]), mark.get("sha256")
    if not metrics.is_file():
        return f"{metrics} is missing (the checkpoint recorded {length} bytes of it)"
    size = metrics.stat().st_size
    if size < length:
        return (f"{metrics} holds {size} bytes, fewer than the {length} the checkpoint recorded "
                f"(its tail was lost or it was truncated)")
    if expected is not None and digest_of_prefix(metrics, length)[1].hexdigest() != expected:
        return f"the first {length} bytes of {metrics} are not the ones the checkpoint recorded (the file was changed)"
    return None


def check_thread_count(saved: int | None, path: Path) -> None:
    """Warn when a run resumes under another torch thread count than its checkpoint was written with."""
    now = torch.get_num_threads()
    if saved is not None and int(saved) != now:
        print(f"dcasgd: warning: checkpoint {path} was written with {saved} torch threads and this process has "
              f"{now}: float sums, and so the bits, will differ from an uninterrupted run (both counts go to "
              f"summary.json as torch_threads_history); --threads {saved} reproduces it", file=sys.stderr)
