"""Fused server-update kernels: one pass over memory per push.

Every rule of :mod:`dcasgd.core.rules` is elementwise and memory-bound: DC-ASGD-a
reads ``w, g, backup, ms`` and writes ``w, ms`` (24 bytes per parameter with
float32 backups), plain SGD reads ``w, g`` and writes ``w`` (12 bytes).  A
chain of eager torch ops streams the vectors through memory once per op
(about ten times for DC-ASGD-a); the kernel here does it once::

    gg  = g*g
    ms  = m*ms + (1-m)*gg                                  (dc-asgd-a only)
    d   = g + coef * gg*(w - backup) + wd*w                coef = lam0/sqrt(ms + eps) | lam | 0
    buf = d if first step else momentum*buf + d            (momentum > 0 only)
    w   = w - lr * (buf or d)

``torch.compile`` (inductor) turns :func:`_update` into one vectorised
OpenMP C++ loop that writes ``w`` (and ``ms``, ``buf``) in place: no
temporaries of size P.  Hyperparameters travel in one small float32 tensor,
so a changing learning rate or staleness never recompiles.

When it is used (:func:`fused_update`, called by ``Rule.apply_``):

- ``P >= COMPILE_MIN_PARAMS`` (1M; env ``DCASGD_COMPILE_MIN_PARAMS``).  Below
  it the rule's eager in-place chain runs: the vectors sit in cache, and a
  short run never pays the compile (tens of seconds cold, seconds warm).
- the rule needs more than one op: plain sgd/staleness without momentum or
  weight decay is a single ``add_`` already and never compiles.
- not disabled by ``DCASGD_NO_COMPILE=1``, and a C++ compiler is present.
- the kernel compiled and passed a self-check against the eager chain on a
  small random problem (once per kernel).  A failure warns once and the eager
  chain is used from then on, so results never depend on a half-made kernel.

Kernels are cached per structure (rule family, momentum or not, backup
dtype); each has its own code object, hence its own dynamo cache, and a
symbolic length, so any number of shard sizes shares one compiled loop.  The
choice between kernel and eager chain depends only on P and the environment,
so a run is bit-for-bit reproducible; the two paths agree to float32
rounding (a few ulp), not bit for bit.

:func:`all_finite` is a cheaper equivalent of ``bool(torch.isfinite(g).all())``
(one read of ``g``, no P-sized boolean temporary) for the server's check.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
import types
import warnings
from typing import Callable

import torch

COMPILE_MIN_PARAMS = 1_000_000
"""Fuse with torch.compile only for vectors of at least this many parameters."""

# index of each scalar in the ``hyper`` tensor handed to the kernel
_LR, _WD, _COEF, _M, _ONE_MINUS_M, _EPS, _MOMENTUM, _FIRST = range(8)

_lock = threading.Lock()
_kernels: dict[tuple, Callable | None] = {}      # structure -> compiled kernel, or None when it failed
compile_seconds: dict[tuple, float] = {}          # structure -> seconds spent compiling and self-checking


def compile_min_params() -> int:
    """The threshold: ``DCASGD_COMPILE_MIN_PARAMS`` if set, else :data:`COMPILE_MIN_PARAMS`."""
    value = os.environ.get("DCASGD_COMPILE_MIN_PARAMS", "").strip()
    if not value:
        return COMPILE_MIN_PARAMS
    try:
        return int(float(value))
    except ValueError:
        raise ValueError(f"DCASGD_COMPILE_MIN_PARAMS must be a number of parameters, got {value!r}") from None


def compile_disabled_reason() -> str | None:
    """Why the fused kernels are off (``None`` when they may be used)."""
    if os.environ.get("DCASGD_NO_COMPILE", "") not in ("", "0"):
        return "DCASGD_NO_COMPILE is set"
    compiler = os.environ.get("CXX", "g++")
    if shutil.which(compiler) is None and shutil.which("c++") is None:
        return f"no C++ compiler ({compiler}) on PATH"
    return None


def use_fused(num_params: int) -> bool:
    """Whether a push over ``num_params`` parameters goes through a compiled kernel."""
    return num_params >= compile_min_params() and compile_disabled_reason() is None


# ------------------------------------------------------------------ the maths


def _update(w: torch.Tensor, g: torch.Tensor, backup: torch.Tensor | None, ms: torch.Tensor | None,
            buf: torch.Tensor | None, hyper: torch.Tensor, family: str) -> None:
    """One update in place; ``family`` is fixed per compiled copy (see :func:`_kernel`)."""
    lr, wd = hyper[_LR], hyper[_WD]
    if family == "sgd":
        d = g + wd * w
    else:                                                # DC: coef * g*g*(w - backup)
        gg = g * g
        if family == "dc-asgd-a":
            ms.copy_(hyper[_M] * ms + hyper[_ONE_MINUS_M] * gg)
            coef = hyper[_COEF] / torch.sqrt(ms + hyper[_EPS])
        else:
            coef = hyper[_COEF]
        d = g + coef * (gg * (w - backup.to(torch.float32))) + wd * w
    if buf is not None:
        buf.copy_(torch.where(hyper[_FIRST] > 0, d, hyper[_MOMENTUM] * buf + d))
        d = buf
    w.sub_(lr * d)


def _fresh_copy(fn: Callable, tag: str) -> Callable:
    """``fn`` with its own code object: dynamo keeps one cache (and recompile budget) per code object."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{tag}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _structure(family: str, momentum: bool, backup_dtype: torch.dtype | None) -> tuple:
    return (family, momentum, backup_dtype)


def _kernel(key: tuple) -> Callable | None:
    """The compiled kernel for ``key``, compiling and self-checking it on first use."""
    with _lock:
        if key in _kernels:
            return _kernels[key]
        start = time.perf_counter()
        try:
            kernel = _compile(key)
        except Exception as exc:  # noqa: BLE001 - any compiler/inductor failure means: use eager
            warnings.warn(f"dcasgd: fused kernel for {key} unavailable ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); using the eager update",
                          RuntimeWarning, stacklevel=3)
            kernel = None
        compile_seconds[key] = time.perf_counter() - start
        _kernels[key] = kernel
        return kernel


def _compile(key: tuple) -> Callable:
    family, momentum, backup_dtype = key
    tag = f"{family.replace('-', '_')}_{'mom' if momentum else 'plain'}_{str(backup_dtype).split('.')[-1]}"
    base = _fresh_copy(_update, tag)

    def fn(w, g, backup, ms, buf, hyper):
        return base(w, g, backup, ms, buf, hyper, family)

    compiled = torch.compile(_fresh_copy(fn, tag), dynamic=True, fullgraph=True)
    _self_check(compiled, key)
    return compiled


def _self_check(kernel: Callable, key: tuple) -> None:
    """Run the compiled kernel and the eager maths on a small random problem; they must agree."""
    family, momentum, backup_dtype = key
    n, rows = 1031, 3                                   # odd length: exercises the vector tail
    gen = torch.Generator().manual_seed(1234)
    w = torch.randn(n, generator=gen)
    g = torch.randn(n, generator=gen)
    backup = None if family == "sgd" else torch.randn(rows, n, generator=gen).to(backup_dtype)
    ms = torch.rand(rows, n, generator=gen) + 0.5 if family == "dc-asgd-a" else None
    buf = torch.randn(n, generator=gen) if momentum else None
    for row, first in ((0, 1.0), (1, 0.0), (2, 0.0)):  # rows at storage offset 0 and > 0
        hyper = torch.tensor([0.1, 0.01, 2.0, 0.95, 1 - 0.95, 1e-7, 0.9, first], dtype=torch.float32)
        args = _plain(w, g, None if backup is None else backup[row], None if ms is None else ms[row], buf)
        ref = [None if t is None else t.clone() for t in args]
        _update(*ref, hyper, family)
        kernel(*args, hyper)
        for name, got, want in zip(("w", "g", "backup", "ms", "buf"), args, ref):
            # a miscompile is off by far more than rounding; a few ulp of reordering are fine
            if got is not None and not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * (1 + want.abs().max())):
                raise RuntimeError(f"self-check failed: {name} differs from the eager maths "
                                   f"by {(got - want).abs().max().item():.3g}")


# ------------------------------------------------------------------ entry point


def fused_update(family: str, w: torch.Tensor, g: torch.Tensor, backup: torch.Tensor | None,
                 ms: torch.Tensor | None, buf: torch.Tensor | None, *, lr: float, wd: float, coef: float,
                 m: float, eps: float, momentum: float, first: bool) -> bool:
    """Apply one update with the compiled kernel; ``False`` (nothing touched) if none is available.

    ``family`` is ``"sgd"`` (sgd and staleness: pass the staleness-scaled lr),
    ``"dc-asgd-c"`` (coef = lam) or ``"dc-asgd-a"`` (coef = lam0).  ``ms`` is
    the mean-square row to update, ``buf`` the momentum buffer or ``None``.
    """
    if not use_fused(w.numel()):
        return False
    kernel = _kernel(_structure(family, buf is not None, None if backup is None else backup.dtype))
    if kernel is None:
        return False
    hyper = torch.tensor([lr, wd, coef, m, 1.0 - m, eps, momentum, 1.0 if first else 0.0], dtype=torch.float32)
    kernel(*_plain(w, g, backup, ms, buf), hyper)
    return True


def _plain(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The same memory, without the view's link to its base (a row of the backups): otherwise
    dynamo guards on the base's shape and recompiles when the number of workers changes."""
    return [None if t is None else t.detach() for t in tensors]


def warm_up(family: str, momentum: bool = False, backup_dtype: torch.dtype | None = torch.float32,
            num_params: int | None = None) -> bool:
    """Compile (and self-check) a kernel now rather than on the first push; True if it is ready.

    For servers whose first push must not stall (a Ray shard under a push
    timeout): call it at start-up with the rule's family (``"sgd"``,
    ``"dc-asgd-c"``, ``"dc-asgd-a"``), whether momentum is on, and the backup
    dtype (``None`` for sgd).  Does nothing when the kernel would not be used
    for ``num_params`` parameters.
    """
    if num_params is not None and not use_fused(num_params):
        return False
    if compile_disabled_reason() is not None:
        return False
    return _kernel(_structure(family, momentum, None if family == "sgd" else backup_dtype)) is not None


def all_finite(t: torch.Tensor) -> bool:
    """``bool(torch.isfinite(t).all())`` in one read of ``t`` and no P-sized temporary.

    A sum is NaN or infinite whenever a term is (IEEE arithmetic never turns
    Inf or NaN back into a finite number), so a finite sum proves every
    element finite.  A non-finite sum is either a bad element or an overflow
    of finite ones; the exact check decides, on that rare path only.
    """
    if t.numel() == 0:
        return True
    if math.isfinite(t.sum().item()):          # a Python float: half the cost of a 0-d isfinite
        return True
    return bool(torch.isfinite(t).all())
