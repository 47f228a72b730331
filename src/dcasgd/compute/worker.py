"""A worker's computation: a model, a data shard, and one gradient at given weights.

``BatchStream`` yields worker m's mini-batches: at each of its local epochs
the training set is re-partitioned at random into M disjoint shards
(:func:`dcasgd.compute.data.shard_indices`) and the worker walks shard m in batches
of ``batch_size`` (the last batch of a shard may be smaller).  ``drawn`` counts
the batches it has handed out, which numbers them (the key of a batch's random
transforms, :mod:`dcasgd.compute.batches`).

``compute_gradient`` loads the pulled weights (and BatchNorm statistics) into
a :class:`~dcasgd.compute.flat.FlatModel`, runs forward and backward on one
batch with the run's loss (mean cross-entropy by default), and returns copies
of the flat gradient and of the updated float buffers.  ``compute_step`` is
the same for any batch (a dict, a tuple, nested tensors) and a
``step_fn(model, batch) -> loss``.  Dropout (and anything else drawing from
torch's global generator inside the step, e.g. DropConnect masks) draws from
a generator seeded with ``key`` (:func:`gradient_key`, :func:`seed_dropout`),
so the same (weights, batch, key) always gives the same bits, in the
simulator and on Ray alike.  ``evaluate`` scores weights with the run's
metric and loss (:mod:`dcasgd.compute.objectives`); ``evaluate_batches`` does it
over any batches, or with an ``eval_fn(model, batch) -> (metric_sum, count)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

from ..errors import DcasgdError, UserCodeError
from .data import shard_indices
from .flat import FlatModel
from .objectives import Loss, Metric, ObjectiveError, batch_total, classification_error, cross_entropy, describe

StepFn = Callable[[torch.nn.Module, Any], torch.Tensor]              # (model, batch) -> mean loss
EvalFn = Callable[[torch.nn.Module, Any], tuple[float, float]]        # (model, batch) -> (metric_sum, count)


@dataclass
class Gradient:
    """What a worker pushes: flat gradient, mean loss on the batch, BatchNorm statistics."""

    grad: torch.Tensor
    loss: float
    buffers: torch.Tensor


class BatchStream:
    """Mini-batch indices for worker ``worker`` of ``num_workers``, re-sharded every local epoch."""

    def __init__(self, num_samples: int, worker: int, num_workers: int, batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.num_samples, self.worker, self.num_workers = num_samples, worker, num_workers
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.position = 0, 0
        self._shard = self._make_shard()

    def _make_shard(self) -> torch.Tensor:
        shard = shard_indices(self.num_samples, self.num_workers, self.epoch, self.seed)[self.worker]
        if shard.numel() == 0:
            raise ValueError(f"worker {self.worker} got an empty data shard: {self.num_samples} samples "
                             f"for {self.num_workers} workers")
        return shard

    def next(self) -> torch.Tensor:
        """Indices of the next mini-batch (int64)."""
        if self.position >= self._shard.numel():
            self.epoch, self.position = self.epoch + 1, 0
            self._shard = self._make_shard()
        batch = self._shard[self.position:self.position + self.batch_size]
        self.position += batch.numel()
        return batch

    @property
    def drawn(self) -> int:
        """Batches handed out so far: ``epoch * batches_per_epoch + ceil(position / batch_size)``.

        A shard's size does not change between epochs (:func:`torch.tensor_split`), so neither does
        ``batches_per_epoch = ceil(shard size / batch_size)``.
        """
        size = self._shard.numel()
        return self.epoch * math.ceil(size / self.batch_size) + math.ceil(self.position / self.batch_size)

    def copy(self) -> "BatchStream":
        """An independent stream at the same place (it draws the batches this one will draw next)."""
        twin = BatchStream.__new__(BatchStream)
        twin.__dict__.update(self.__dict__)
        return twin

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.epoch, self.position = int(sd["epoch"]), int(sd["position"])
        self._shard = self._make_shard()


def gradient_key(seed: int, worker: int, clock: int) -> int:
    """The dropout seed of worker ``worker``'s gradient number ``clock`` in a run seeded ``seed``."""
    return ((seed * 1_000_003 + worker) * 1_000_003 + clock) % (2**63)


def seed_dropout(key: int, device: torch.device) -> None:
    """Seed the generator dropout draws from on ``device``.

    Same stream as ``torch.manual_seed(key)``, but only that one generator:
    ``torch.manual_seed`` also queues lazy CUDA/XPU/MTIA seeding, which records
    a stack trace per call (milliseconds each, more than a small model's gradient).
    """
    if device.type == "cuda":
        torch.cuda.manual_seed(key)
    else:
        torch.default_generator.manual_seed(key)


class LossStep:
    """The default step: ``loss_fn(model(input), target)`` on a batch ``(input, target)``."""

    def __init__(self, loss_fn: Loss = cross_entropy) -> None:
        self.loss_fn = loss_fn

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y = batch
        try:
            output = model(x)
        except Exception as exc:
            raise user_code_error(model, "forward pass", None, exc) from exc
        try:
            return self.loss_fn(output, y)
        except Exception as exc:
            raise user_code_error(self.loss_fn, "loss", None, exc) from exc


def compute_step(flat: FlatModel, weights: torch.Tensor, buffers: torch.Tensor | None, batch: Any, key: int,
                 step_fn: StepFn, copy: bool = True, origin: tuple[int, int] | None = None) -> Gradient:
    """Gradient of ``step_fn(model, batch)`` (a scalar: the batch's mean loss) at ``weights``; dropout
    seeded by ``key``.

    An exception in the user's code (the step, the model's forward or backward pass, the loss) comes back
    as :class:`~dcasgd.errors.UserCodeError` naming the function and ``origin`` = (worker, gradient
    number), the original exception as ``__cause__``.

    ``copy=False`` returns views of the model's flat gradient and buffers, valid only
    until the next computation on ``flat`` (the simulator pushes them at once).
    """
    flat.load(weights, buffers)
    if not flat.module.training:                     # (train() walks every submodule: skip it when set)
        flat.module.train()
    flat.zero_grad()
    seed_dropout(key, flat.params.device)
    try:
        loss = step_fn(flat.module, batch)
    except UserCodeError as exc:                     # the default step names the model or the loss
        raise UserCodeError(exc.function, where(origin), exc.__cause__) from exc.__cause__
    except Exception as exc:
        raise user_code_error(step_fn, "step function", origin, exc) from exc
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise ObjectiveError(f"{describe(step_fn)} must return the batch's loss as a one-element tensor that "
                             f"depends on the weights, got {_what(loss)}")
    try:
        loss.backward()
    except Exception as exc:
        raise user_code_error(flat.module, "backward pass", origin, exc) from exc
    if not copy:
        return Gradient(flat.grads, float(loss.detach()), flat.buffers)
    return Gradient(flat.grads.clone(), float(loss.detach()), flat.buffers.clone())


def compute_gradient(flat: FlatModel, weights: torch.Tensor, buffers: torch.Tensor | None,
                     x: torch.Tensor, y: torch.Tensor, key: int, copy: bool = True,
                     loss_fn: Loss = cross_entropy, origin: tuple[int, int] | None = None) -> Gradient:
    """Gradient of ``loss_fn`` (a batch mean) at ``weights`` on batch (x, y); dropout seeded by ``key``.

    ``copy=False`` returns views of the model's flat gradient and buffers, valid only
    until the next computation on ``flat`` (the simulator pushes them at once).
    """
    return compute_step(flat, weights, buffers, (x, y), key, LossStep(loss_fn), copy, origin)


def _what(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}" + ("" if value.requires_grad else " without grad")
    return type(value).__name__


@torch.no_grad()
def evaluate(flat: FlatModel, weights: torch.Tensor, buffers: torch.Tensor | None,
             x: torch.Tensor, y: torch.Tensor, loss_fn: Loss = cross_entropy, metric: Metric = classification_error,
             batch_size: int = 2000) -> tuple[float, float]:
    """(metric, loss) of the model at ``weights`` on (x, y), each the mean over the samples.

    By default: (classification error in percent, mean cross-entropy).
    """
    chunks = ((x[start:start + batch_size], y[start:start + batch_size]) for start in range(0, len(y), batch_size))
    return evaluate_batches(flat, weights, buffers, chunks, loss_fn, metric)


@torch.no_grad()
def evaluate_batches(flat: FlatModel, weights: torch.Tensor, buffers: torch.Tensor | None, batches: Iterable[Any],
                     loss_fn: Loss = cross_entropy, metric: Metric = classification_error,
                     eval_fn: EvalFn | None = None) -> tuple[float, float | None]:
    """(metric, loss) of the model at ``weights`` over ``batches``, exact means over every sample.

    Without ``eval_fn`` each batch is ``(input, target)``: ``metric = sum of batch totals / samples``
    (:func:`~dcasgd.compute.objectives.batch_total`), the same for the loss.  With ``eval_fn(model,
    batch) -> (metric_sum, count)``: ``metric = sum of metric_sum / sum of count`` (a token-weighted
    mean, say) and the loss is None (what a batch's loss means is the step's business).
    """
    flat.load(weights, buffers)
    flat.module.eval()
    metric_sum, loss_sum, n = 0.0, 0.0, 0
    for batch in batches:
        if eval_fn is not None:
            try:
                total, count = eval_fn(flat.module, batch)
            except Exception as exc:
                raise user_code_error(eval_fn, "evaluation function", None, exc) from exc
            metric_sum, n = metric_sum + float(total), n + float(count)   # (a tensor count is a number here)
            continue
        x, target = batch
        try:
            output = flat.module(x)
        except Exception as exc:
            raise user_code_error(flat.module, "forward pass", None, exc) from exc
        loss_sum += _users_batch_total(loss_fn, "loss", output, target)
        metric_sum += _users_batch_total(metric, "metric", output, target)
        n += len(target)
    if eval_fn is not None:
        return metric_sum / n if n > 0 else math.nan, None
    n = max(1, n)
    return metric_sum / n, loss_sum / n


def _users_batch_total(fn: Loss | Metric, what: str, output: torch.Tensor, target: torch.Tensor) -> float:
    try:
        return batch_total(fn, output, target)
    except DcasgdError:
        raise
    except Exception as exc:
        raise user_code_error(fn, what, None, exc) from exc


def user_code_error(function: object, what: str, origin: tuple[int, int] | None,
                    cause: BaseException) -> UserCodeError:
    """A UserCodeError naming ``function`` (a module: its class), the part that failed and where."""
    if isinstance(function, torch.nn.Module):
        name = f"your model ({type(function).__module__}:{type(function).__qualname__}, {what})"
    else:
        name = f"your {what} {describe(function)}"
    return UserCodeError(name, where(origin), cause)


def where(origin: tuple[int, int] | None) -> str:
    """Where the user's code raised: ``on worker W at gradient K``, or in an evaluation."""
    return "in an evaluation" if origin is None else f"on worker {origin[0]} at gradient {origin[1]}"
