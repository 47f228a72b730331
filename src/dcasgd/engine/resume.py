"""Resuming a run: which checkpoint, and whether it belongs to this run.

One rule for both backends: a checkpoint resumes only the run it came from,
so every setting but :data:`dcasgd.config.RESUME_MAY_CHANGE` must match its
recorded configuration.  :func:`load_resume_checkpoint` takes the newest
checkpoint that verifies and says on stderr which newer ones it skipped.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config import RESUME_MAY_CHANGE, TrainConfig
from ..io.checkpoint import CheckpointError, load_latest


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
