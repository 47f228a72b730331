"""Checkpoints that cannot be half written and cannot run code.

File layout (``ckpt-<step>.pt``)::

    b"DCASGD-CKPT/1\\n"  <64 hex chars: SHA-256 of payload> b"\\n"  <payload>

where the payload is ``torch.save`` of a dict of tensors, numbers, strings,
lists and dicts.  Writing goes to a temp file in the same directory, is
fsynced, then renamed over the final name (and the directory fsynced), so a
crash at any byte leaves the previous checkpoint intact.  Loading checks the
magic and the checksum first and then uses ``torch.load(weights_only=True)``,
which refuses anything but plain data: a checkpoint file can never run code.
The newest ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

MAGIC = b"DCASGD-CKPT/1\n"
_NAME = re.compile(r"^ckpt-(\d{9,})\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt, foreign or mismatched."""


def checkpoint_path(directory: Path | str, step: int) -> Path:
    return Path(directory) / f"ckpt-{step:09d}.pt"


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def decode(blob: bytes, source: str = "checkpoint") -> dict[str, Any]:
    """Verify magic and checksum, then load plain data only."""
    if not blob.startswith(MAGIC):
        raise CheckpointError(f"{source}: not a dcasgd checkpoint (bad magic)")
    header_end = len(MAGIC) + 65
    digest, payload = blob[len(MAGIC):header_end - 1], blob[header_end:]
    if len(blob) < header_end or blob[header_end - 1:header_end] != b"\n":
        raise CheckpointError(f"{source}: truncated header")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(f"{source}: checksum mismatch (truncated or corrupted)")
    try:
        state = torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise CheckpointError(f"{source}: cannot load payload ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{source}: payload is not a dict")
    return state


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    """temp file in the same directory, write, fsync, rename, fsync directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(directory: Path | str, state: dict[str, Any], step: int, keep: int = 3) -> Path:
    """Write ``state`` atomically as checkpoint ``step``; delete all but the newest ``keep``."""
    path = checkpoint_path(directory, step)
    atomic_write_bytes(path, encode(state))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path | str) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({exc.strerror})") from None
    return decode(blob, f"checkpoint {path}")


def load_latest(directory: Path | str) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint in ``directory`` that verifies; older ones are tried if it does not."""
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise CheckpointError(f"no loadable checkpoint in {directory}{detail}")
