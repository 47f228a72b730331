"""Losses and evaluation metrics: the built-in ones, and how a user's callables are used.

A **loss** is ``loss_fn(output, target) -> scalar tensor``, the mean over the
mini-batch; workers differentiate it.  A **metric** is ``metric(output,
target) -> number``, also a mean over the samples it is given; evaluations
report it as ``test_error`` (lower is better).  The evaluation set is scored
in batches and the batch means are combined weighted by batch size, so the
result is the mean over the whole set.  A callable may also carry a
``batch_sum(output, target) -> float`` attribute giving the exact total over
a batch (the built-ins do: integer counts stay exact).

Built-ins (names for ``--loss`` / ``--metric``):

==================  ==========================================================
``cross-entropy``   mean of ``-log softmax(output)[target]`` (class indices)
``mse``             mean of ``(output - target)**2`` over every element
``error``           percent of samples whose arg-max class is not the target
==================  ==========================================================
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from ..errors import InputError

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Metric = Callable[[torch.Tensor, torch.Tensor], Any]


class ObjectiveError(InputError):
    """An unknown loss or metric name, or a callable that does not return a number."""


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits ``output`` (N, C) against class indices ``target`` (N,)."""
    return F.cross_entropy(output, target)


def mean_squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean of ``(output - target)**2`` over every element (``target`` reshaped to ``output``'s shape)."""
    return F.mse_loss(output, target.reshape(output.shape).to(output.dtype))


def classification_error(output: torch.Tensor, target: torch.Tensor) -> float:
    """Percent of samples whose arg-max class in ``output`` (N, C) differs from ``target`` (N,)."""
    return 100.0 * int((output.argmax(1) != target).sum()) / max(1, len(target))


cross_entropy.batch_sum = lambda output, target: float(F.cross_entropy(output, target, reduction="sum"))
mean_squared_error.batch_sum = lambda output, target: float(
    F.mse_loss(output, target.reshape(output.shape).to(output.dtype), reduction="sum")) / max(1, output[0].numel())
classification_error.batch_sum = lambda output, target: 100.0 * int((output.argmax(1) != target).sum())

LOSSES: dict[str, Loss] = {"cross-entropy": cross_entropy, "mse": mean_squared_error}
METRICS: dict[str, Metric] = {"error": classification_error, "mse": mean_squared_error}


def batch_total(fn: Callable, output: torch.Tensor, target: torch.Tensor) -> float:
    """The total of ``fn`` over a batch: its ``batch_sum`` if it has one, else its mean times the batch size."""
    exact = getattr(fn, "batch_sum", None)
    if exact is not None:
        return float(exact(output, target))
    value = fn(output, target)
    try:
        return float(value) * len(target)
    except (TypeError, ValueError):
        raise ObjectiveError(f"{describe(fn)} must return a number (a mean over the batch), "
                             f"got {type(value).__name__}") from None


def describe(fn: Any) -> str:
    """``module:qualname`` of a callable (what a run's configuration records for it)."""
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"
