"""Ctrl-C and SIGTERM stop a run cleanly: the loop ends between events, then the summary and a checkpoint.

The command line calls :func:`stop_on_signals` around a command.  The first
SIGINT or SIGTERM only sets :data:`STOP`; a backend's loop looks at it between
events (the simulator) or at each tick (the Ray driver), stops granting work,
writes the summary with ``outcome: "interrupted"`` and a checkpoint where
``--checkpoint-every`` asks for them, and the CLI exits 130 (SIGINT) or 143
(SIGTERM).  A second SIGINT raises KeyboardInterrupt at once, for a run that
does not stop soon enough.  The Python API installs nothing: there Ctrl-C is a
plain KeyboardInterrupt, as in any library call.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class StopFlag:
    """Set by the first SIGINT/SIGTERM; ``signum`` says which."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def set(self, signum: int) -> None:
        self.signum = signum

    def clear(self) -> None:
        self.signum = None


STOP = StopFlag()


def _handler(signum: int, frame: Any) -> None:
    if STOP.requested and signum == signal.SIGINT:
        raise KeyboardInterrupt            # the second Ctrl-C: stop now
    STOP.set(signum)


def install() -> None:
    """(Re)install the handlers, in the main thread only (Ray's start-up replaces SIGTERM's)."""
    if threading.current_thread() is threading.main_thread():
        for signum in HANDLED:
            signal.signal(signum, _handler)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Handle SIGINT and SIGTERM by setting :data:`STOP` while the block runs; restore the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    STOP.clear()
    install()
    try:
        yield STOP
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        STOP.clear()


def exit_status(signum: int | None) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum or signal.SIGINT)


def signal_name(signum: int | None) -> str:
    """``SIGINT``, ``SIGTERM``, ... (``SIGINT`` when None)."""
    return signal.Signals(int(signum or signal.SIGINT)).name
