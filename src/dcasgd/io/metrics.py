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

import json
from pathlib import Path
from typing import IO, Any


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
    """

    def __init__(self, path: Path | str | None, append: bool = False) -> None:
        self.path = None if path is None else Path(path)
        self.records: list[dict[str, Any]] = []            # the lines, when there is no file
        self._pending: list[dict[str, Any]] = []           # the lines not yet encoded, when there is one
        self._file: IO[str] | None = (None if self.path is None
                                      else open(self.path, "a" if append else "w", encoding="utf-8"))

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
            self._file.write("".join([encode(r) + "\n" for r in self._pending]))
            self._pending.clear()

    def flush(self) -> None:
        if self._file is not None:
            self._encode_pending()
            self._file.flush()

    def tell(self) -> int:
        """Bytes written so far (after a flush): where a resumed run cuts the file back to."""
        if self._file is None:
            return 0
        self.flush()
        return self._file.tell()

    def close(self) -> None:
        if self._file is not None:
            self._encode_pending()
            self._file.close()
