"""One process owns a directory: an exclusive ``fcntl.flock`` on ``DIR/.dcasgd.lock`` for as long as it runs.

A second process that asks for the same directory gets :class:`DirectoryBusy`
at once (no waiting), naming the holder's PID, which the lock file holds.
The kernel releases a flock when its process ends, however it ends, so a lock
file left by a dead process never blocks anyone: the next process locks it.

The lock file is removed on release.  Removing a locked file races with a
process that opened it just before: that process could then hold a lock on a
file no longer in the directory while a third locks a new one.  So after
locking, :meth:`DirLock.acquire` checks that the path still names the file it
locked (same inode), and tries again when it does not.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from ..errors import InputError, StorageError

LOCK_NAME = ".dcasgd.lock"


class DirectoryBusy(InputError):
    """Another live process holds the directory's lock."""


class DirLock:
    """An exclusive lock on ``directory`` (created if missing); use as a context manager."""

    def __init__(self, directory: Path | str, what: str = "run") -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "DirLock":
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"process {holder}" if holder else "another process"
                raise DirectoryBusy(f"{self.directory} is in use by {who} (a dcasgd {self.what} still "
                                    f"running; its lock is {self.path}): wait for it to end, stop it, or "
                                    f"choose another directory") from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                break
            os.close(fd)                   # removed by its last holder after we opened it: take the new one
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError as exc:                 # (a full disk): let go of the lock, name the file
            os.close(fd)
            raise StorageError(str(self.path), exc) from exc
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)              # closing drops the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DirLock":
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
