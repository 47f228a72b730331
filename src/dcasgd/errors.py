"""One family of errors: everything dcasgd raises on purpose derives from :class:`DcasgdError`.

Each says whose fault it is, and the CLI gives each its own exit status
(``dcasgd.cli.EXIT_CODES``):

- :class:`InputError` (also a ``ValueError``): bad input -- a setting out of
  range, a corrupt file, a refused push, a run directory another process
  owns.  The message names the problem; the CLI prints it as one
  ``dcasgd: error: ...`` line and exits with status 2, having written nothing.
- :class:`RunFailed` (also a ``RuntimeError``): a run that started but could
  not go on (a server actor died).  Exit status 1.
- :class:`UserCodeError` (a RunFailed): the user's own model, loss, metric or
  step function raised.  The message names the function, the worker and the
  gradient; the original exception is ``__cause__``.  Exit status 1.
- :class:`StorageError` (a RunFailed): the machine failed the run, not the
  user: the disk is full, or a read or write failed with an I/O error while
  the run wrote its files.  The message names the file.  Exit status 6.

Anything else reaching the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class DcasgdError(Exception):
    """Base class of every error dcasgd raises on purpose."""


class InputError(DcasgdError, ValueError):
    """Bad input; the message says which input and what is allowed."""


class RunFailed(DcasgdError, RuntimeError):
    """A run that started but could not go on."""


class UserCodeError(RunFailed):
    """The user's own code (model, loss, metric, step or evaluation function, data set) raised.

    ``function`` names it (``module:qualname``), ``worker`` and ``step`` say
    where (worker -1: the evaluation on the driver; step: the worker's
    gradient number), and ``__cause__`` is the original exception.
    """

    def __init__(self, function: str, where: str, cause: BaseException) -> None:
        self.function, self.where = function, where
        self.cause_text = f"{type(cause).__name__}: {cause}"
        super().__init__(f"{function} raised {where}: {self.cause_text}")

    def __reduce__(self):                      # picklable across processes (Ray), cause as text
        return (_rebuild_user_code_error, (self.function, self.where, self.cause_text))


def _rebuild_user_code_error(function: str, where: str, cause_text: str) -> UserCodeError:
    error = UserCodeError.__new__(UserCodeError)
    error.function, error.where, error.cause_text = function, where, cause_text
    RunFailed.__init__(error, f"{function} raised {where}: {cause_text}")
    return error


# errno values that mean the machine, not the user: no space, no quota, a failing device
MACHINE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EFBIG})


class StorageError(RunFailed):
    """Writing (or reading back) a run's file failed for a reason of the machine's: ``path`` names it."""

    def __init__(self, path: str, cause: OSError) -> None:
        self.path = str(path)
        self.errno = cause.errno
        reason = cause.strerror or str(cause)
        super().__init__(f"writing {self.path} failed: {reason} (errno {cause.errno})")


def is_machine_failure(exc: BaseException) -> bool:
    """Whether an OSError is the machine's failure (a full disk, an I/O error), not a bad path."""
    return isinstance(exc, OSError) and exc.errno in MACHINE_ERRNOS
