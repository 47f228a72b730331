"""Checkpoints that cannot be half written and cannot run code.

File layout (``ckpt-<step>.pt``)::

    b"DCASGD-CKPT/1\\n"  <64 hex chars: SHA-256 of payload> b"\\n"  <payload>

where the payload is ``torch.save`` of a dict of tensors, numbers, strings,
lists and dicts.  Writing goes to a temp file in the same directory, is
fsynced, then renamed over the final name (and the directory fsynced), so a
crash at any byte leaves the previous checkpoint intact.  Loading checks the
magic and the checksum first and then uses ``torch.load(weights_only=True)``,
which refuses anything but plain data: a checkpoint file can never run code.
The newest ``keep`` checkpoints that verify are kept.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_bytes
from ..errors import InputError

MAGIC = b"DCASGD-CKPT/1\n"
_NAME = re.compile(r"^ckpt-(\d{9,})\.pt$")


class CheckpointError(InputError):
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


def save_checkpoint(directory: Path | str, state: dict[str, Any], step: int, keep: int = 3) -> Path:
    """Write ``state`` atomically as checkpoint ``step``; keep the newest ``keep`` that verify.

    The new file is read back and verified before any old one is deleted, and
    rotation counts only checkpoints that verify: a good checkpoint is never
    deleted while a corrupt one is kept (corrupt ones are deleted instead).
    """
    blob = encode(state)
    path = checkpoint_path(directory, step)
    atomic_write_bytes(path, blob)
    if not _verifies(path):
        raise CheckpointError(f"checkpoint {path} does not verify after writing it (disk full or failing?); "
                              f"older checkpoints were kept")
    _rotate(directory, keep)
    return path


_verified: dict[tuple[str, int, int], bool] = {}    # (path, size, mtime_ns) -> verifies; files do not change


def _verifies(path: Path) -> bool:
    """Whether ``path`` is a checkpoint whose magic and checksum hold (cached per file version)."""
    try:
        st = path.stat()
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _verified:
        try:
            blob = path.read_bytes()
            _verified[key] = _checksum_ok(blob)
        except OSError:
            _verified[key] = False
    return _verified[key]


def _checksum_ok(blob: bytes) -> bool:
    header_end = len(MAGIC) + 65
    return (blob.startswith(MAGIC) and len(blob) >= header_end and blob[header_end - 1:header_end] == b"\n"
            and hashlib.sha256(blob[header_end:]).hexdigest().encode() == blob[len(MAGIC):header_end - 1])


def _rotate(directory: Path | str, keep: int) -> None:
    """Delete every checkpoint but the newest ``keep`` that verify."""
    good = 0
    for path in reversed(list_checkpoints(directory)):
        if good < keep and _verifies(path):
            good += 1
        else:
            path.unlink(missing_ok=True)


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


def load_latest(directory: Path | str, with_skipped: bool = False):
    """The newest checkpoint in ``directory`` that verifies; older ones are tried if it does not.

    Returns ``(path, state)``, or ``(path, state, skipped)`` with ``with_skipped``:
    the reasons the newer files that did not verify were skipped.
    """
    errors = []
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        return (path, state, errors) if with_skipped else (path, state)
    detail = f" ({'; '.join(errors)})" if errors else ""
    raise CheckpointError(f"no loadable checkpoint in {directory}{detail}")
