"""A run directory belongs to one live process: the run's, for its whole lifetime.

:func:`own_run_dirs` locks ``out`` (and, for ``--resume DIR --out NEW``, the
run directory it resumes from, so a resume of a run that is still writing is
refused) with :class:`dcasgd.io.lock.DirLock` before any check reads them, and
releases them when the run ends, however it ends.  A second process gets one
line naming the holder's PID (exit status 2).

Taking the lock creates the directory.  If the run then fails before it
starts (bad input: exit status 2, "nothing written"), the lock file and every
directory the lock made are removed again.  A path that cannot be a run
directory (an existing file, a read-only or forbidden place) is the user's
mistake: an :class:`~dcasgd.errors.InputError` naming it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from ..config import TrainConfig
from ..errors import InputError, StorageError
from ..io.lock import DirLock
from ..io.rundir import RunDirError, resume_run_dir


@contextlib.contextmanager
def own_run_dirs(cfg: TrainConfig) -> Iterator[list[DirLock]]:
    """Hold exclusive locks on the run's directories while the block runs (nothing when ``out`` is None)."""
    dirs: list[Path] = []
    if cfg.out is not None:
        dirs.append(Path(cfg.out))
    if cfg.resume:
        source = resume_run_dir(cfg.resume)
        if not dirs or source.resolve() != dirs[0].resolve():
            dirs.append(source)
    with own_dirs(dirs, "run") as locks:
        yield locks


@contextlib.contextmanager
def own_dirs(dirs: list[Path], what: str) -> Iterator[list[DirLock]]:
    """Lock each of ``dirs`` (making it if missing) while the block runs; when the block raises, also
    remove the directories the locks made that are left empty (a run refused before it wrote anything)."""
    locks, made = [], []
    try:
        for directory in dirs:
            made += _missing_dirs(directory)
            locks.append(_lock(directory, what))
        yield locks
    except BaseException:
        for lock in reversed(locks):
            lock.release()
        locks = []
        for directory in reversed(made):          # deepest first; rmdir refuses any that hold files
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    finally:
        for lock in reversed(locks):
            lock.release()


def _lock(directory: Path, what: str) -> DirLock:
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"out {directory} exists and is not a directory")
    try:
        return DirLock(directory, what).acquire()
    except (InputError, StorageError):
        raise
    except OSError as exc:
        raise RunDirError(f"cannot use {directory} as a run directory: {exc.strerror or exc}") from None


def _missing_dirs(directory: Path) -> list[Path]:
    """``directory`` and those of its parents that do not exist yet, outermost first."""
    missing = []
    for path in [directory, *directory.parents]:
        if path.exists():
            break
        missing.append(path)
    return list(reversed(missing))
