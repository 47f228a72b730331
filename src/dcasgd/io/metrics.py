"""``metrics.jsonl``: one JSON object per line, each with a ``kind``.

- ``update``: ``version``, ``worker``, ``staleness`` (server versions between
  the worker's pull and its push), ``loss`` (mean training loss of the
  batch), ``time_s`` (simulated seconds in the simulator, wall seconds on
  Ray), ``epoch`` (samples processed / training-set size), ``clock`` and
  ``clock_gap`` (the worker's pushed-gradient count, and how far ahead of the
  slowest live worker it was, when it started this gradient);
- ``eval``: ``epoch``, ``version``, ``time_s``, ``test_error`` (the evaluation
  metric: percent error by default), ``test_loss``, ``train_loss`` (mean batch
  loss since the last evaluation), ``lr``;
- ``staleness``: periodic snapshot of the staleness statistics;
- ``event``: worker failures, rejoins and the like;
- ``probe``: a compensation-probe record (``--probe-every``).

:class:`MetricsWriter` appends lines to a file, or keeps them in memory when a
run writes no files (``out=None`` in the Python API).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

from ..errors import StorageError


PENDING_LINES = 4096          # lines held before they are encoded together (see MetricsWriter)
_ENCODER = json.JSONEncoder(sort_keys=True)   # what json.dumps(..., sort_keys=True) builds anew per call


class MetricsWriter:
    """Append-only JSON-lines writer (``path``), or an in-memory list of the lines (``path=None``).

    Lines are held and encoded together at each :meth:`flush` (or every
    ``PENDING_LINES``): one line encoded right after a gradient's forward and
    backward pass runs with cold caches, ten times slower than in a batch.  A
    run flushes after each evaluation, so a crash loses at most the updates
    since, as with a buffered file.  A written record's values must not change
    afterwards.

    The writer keeps a running SHA-256 of every byte in the file, so a
    checkpoint can record the file's length *and* digest (:meth:`mark`) and a
    resumed run can check that the file still holds that prefix.  A failed
    write (a full disk, an I/O error) raises :class:`~dcasgd.errors.StorageError`
    naming the file.
    """

    def __init__(self, path: Path | str | None, append: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.records: list[dict[str, Any]] = []            # the lines, when there is no file
        self._pending: list[dict[str, Any]] = []           # the lines not yet encoded, when there is one
        self._digest = hashlib.sha256()
        self._file: IO[bytes] | None = None
        if self.path is not None:
            with self._storage():
                if append and self.path.exists():
                    self._digest = digest_of_prefix(self.path, self.path.stat().st_size)[1]
                self._file = open(self.path, "ab" if append else "wb")

    def write(self, kind: str, **fields: Any) -> None:
        self.append({"kind": kind, **fields})

    def append(self, record: dict[str, Any]) -> None:
        """One line as it is (``trace.jsonl``'s lines have no ``kind``)."""
        if self._file is None:
            self.records.append(record)
            return
        self._pending.append(record)
        if len(self._pending) >= PENDING_LINES:
            self._encode_pending()

    def _encode_pending(self) -> None:
        if self._pending:
            encode = _ENCODER.encode
            blob = "".join([encode(r) + "\n" for r in self._pending]).encode("utf-8")
            self._pending.clear()
            with self._storage():
                self._file.write(blob)
            self._digest.update(blob)

    def flush(self) -> None:
        if self._file is not None:
            self._encode_pending()
            with self._storage():
                self._file.flush()

    def tell(self) -> int:
        """Bytes written so far (after a flush): where a resumed run cuts the file back to."""
        if self._file is None:
            return 0
        self.flush()
        return self._file.tell()

    def mark(self) -> dict[str, Any]:
        """Flush and fsync, then ``{"bytes": length, "sha256": digest}`` of the file so far: what a
        checkpoint records, so that a resumed run can check the file still holds this prefix."""
        if self._file is None:
            return {"bytes": 0, "sha256": None}
        self.flush()
        with self._storage():
            os.fsync(self._file.fileno())
        return {"bytes": self._file.tell(), "sha256": self._digest.hexdigest()}

    def close(self) -> None:
        if self._file is not None:
            try:
                self._encode_pending()
            finally:
                with self._storage():
                    self._file.close()

    def _storage(self) -> "_StorageErrors":
        return _StorageErrors(self.path)


class _StorageErrors:
    """Turn an OSError while writing ``path`` into a StorageError naming it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, OSError):
            raise StorageError(str(self.path), exc) from exc
        return False


def digest_of_prefix(path: Path | str, length: int) -> tuple[int, Any]:
    """(bytes actually read, running SHA-256) of the first ``length`` bytes of ``path``."""
    digest, read = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while read < length:
            chunk = f.read(min(1 << 20, length - read))
            if not chunk:
                break
            digest.update(chunk)
            read += len(chunk)
    return read, digest
