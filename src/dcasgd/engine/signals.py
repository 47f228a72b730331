"""Ctrl-C and SIGTERM stop a run cleanly: the loop ends between events, then the summary and a checkpoint.

The command line calls :func:`stop_on_signals` around a command; nothing else
installs a handler, so the Python API keeps Python's own (there Ctrl-C is a
plain KeyboardInterrupt, as in any library call).  While a loop that can stop
cleanly runs inside :func:`watching` (the simulator's event loop, the Ray
driver's loop, ``compare``'s wait for its runs), the first SIGINT or SIGTERM
only sets :data:`STOP`: the loop stops granting work, writes the summary with
``outcome: "interrupted"`` and a checkpoint where ``--checkpoint-every`` asks
for one, and the CLI exits 130 (SIGINT) or 143 (SIGTERM).  A second SIGINT,
or a signal outside such a loop (loading data, writing a report), raises
:class:`Stopped` at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A signal that stops the command at once (not inside a loop that stops cleanly, or a second Ctrl-C)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal_name(signum))


class StopFlag:
    """Set by the first SIGINT/SIGTERM while a loop watches; ``signum`` says which."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.active = False          # the CLI's handlers are installed (stop_on_signals)
        self.watchers = 0            # loops inside watching() that read the flag

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def set(self, signum: int) -> None:
        self.signum = signum

    def clear(self) -> None:
        self.signum = None


STOP = StopFlag()


def _handler(signum: int, frame: Any) -> None:
    if STOP.watchers and not (STOP.requested and signum == signal.SIGINT):
        STOP.set(signum)             # the loop stops cleanly
        return
    raise Stopped(signum)            # nothing watches, or a second Ctrl-C: stop now


def install() -> None:
    """(Re)install the handlers where the CLI installed them (Ray's start-up replaces SIGTERM's)."""
    if STOP.active and threading.current_thread() is threading.main_thread():
        for signum in HANDLED:
            signal.signal(signum, _handler)


def adopt() -> None:
    """In a process a CLI command started for one of its runs (``compare``'s pool): handle the signals
    as the command does."""
    STOP.active = True
    install()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Handle SIGINT and SIGTERM (:data:`STOP`) while the block runs; restore the old handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield STOP
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    STOP.clear()
    STOP.active = True
    install()
    try:
        yield STOP
    finally:
        STOP.active = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        STOP.clear()


@contextlib.contextmanager
def watching() -> Iterator[StopFlag]:
    """A loop that reads :data:`STOP` between steps runs inside this: a signal then only sets the flag."""
    STOP.watchers += 1
    try:
        yield STOP
    finally:
        STOP.watchers -= 1


def exit_status(signum: int | None) -> int:
    """128 + the signal number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum or signal.SIGINT)


def signal_name(signum: int | None) -> str:
    """``SIGINT``, ``SIGTERM``, ... (``SIGINT`` when None)."""
    return signal.Signals(int(signum or signal.SIGINT)).name
