"""One family of errors: everything dcasgd raises on purpose derives from :class:`DcasgdError`.

- :class:`InputError` (also a ``ValueError``): bad input -- a setting out of
  range, a corrupt file, a refused push.  The message names the problem; the
  CLI prints it as one ``dcasgd: error: ...`` line and exits with status 2.
- :class:`RunFailed` (also a ``RuntimeError``): a run that could not go on
  (a server actor died, a worker raised).  The CLI exits with status 1.

Anything else reaching the CLI is a bug and keeps its traceback.
"""

from __future__ import annotations


class DcasgdError(Exception):
    """Base class of every error dcasgd raises on purpose."""


class InputError(DcasgdError, ValueError):
    """Bad input; the message says which input and what is allowed."""


class RunFailed(DcasgdError, RuntimeError):
    """A run that started but could not go on."""
