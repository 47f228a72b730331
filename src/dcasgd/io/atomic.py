"""Files that are never half written: write a temp file in the same directory, fsync, rename, fsync the directory.

A write that fails (a full disk, an I/O error) leaves the old file as it was,
removes the temp file, and raises :class:`~dcasgd.errors.StorageError` naming
the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import StorageError


def atomic_write_bytes(path: Path | str, blob: bytes) -> None:
    """temp file in the same directory, write, fsync, rename, fsync directory."""
    path = Path(path)
    try:
        _write(path, blob)
    except OSError as exc:
        raise StorageError(str(path), exc) from exc


def _write(path: Path, blob: bytes) -> None:
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


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(Path(path), text.encode("utf-8"))
