"""A worker's computation: a model, a data shard, and one gradient at given weights.

``BatchStream`` yields worker m's mini-batches: at each of its local epochs
the training set is re-partitioned at random into M disjoint shards
(:func:`dcasgd.data.shard_indices`) and the worker walks shard m in batches
of ``batch_size`` (the last batch of a shard may be smaller).

``compute_gradient`` loads the pulled weights (and BatchNorm statistics) into
a :class:`~dcasgd.flat.FlatModel`, runs forward and backward on one batch
with the mean cross-entropy loss, and returns copies of the flat gradient and
of the updated float buffers.  Dropout draws from a generator seeded with
``key`` (:func:`seed_dropout`), so the same (weights, batch, key) always
gives the same bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .data import shard_indices
from .flat import FlatModel


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

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.epoch, self.position = int(sd["epoch"]), int(sd["position"])
        self._shard = self._make_shard()


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


def compute_gradient(flat: FlatModel, weights: torch.Tensor, buffers: torch.Tensor | None,
                     x: torch.Tensor, y: torch.Tensor, key: int, copy: bool = True) -> Gradient:
    """Mean cross-entropy gradient at ``weights`` on batch (x, y); dropout seeded by ``key``.

    ``copy=False`` returns views of the model's flat gradient and buffers, valid only
    until the next computation on ``flat`` (the simulator pushes them at once).
    """
    flat.load(weights, buffers)
    if not flat.module.training:                     # (train() walks every submodule: skip it when set)
        flat.module.train()
    flat.zero_grad()
    seed_dropout(key, flat.params.device)
    loss = F.cross_entropy(flat.module(x), y)
    loss.backward()
    if not copy:
        return Gradient(flat.grads, float(loss.detach()), flat.buffers)
    return Gradient(flat.grads.clone(), float(loss.detach()), flat.buffers.clone())


@torch.no_grad()
def evaluate(flat: FlatModel, weights: torch.Tensor, buffers: torch.Tensor | None,
             x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> tuple[float, float]:
    """(error in percent, mean cross-entropy) of the model at ``weights`` on (x, y)."""
    flat.load(weights, buffers)
    flat.module.eval()
    wrong, loss_sum = 0, 0.0
    for start in range(0, len(y), batch_size):
        logits = flat.module(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        wrong += int((logits.argmax(1) != target).sum())
    n = max(1, len(y))
    return 100.0 * wrong / n, loss_sum / n
