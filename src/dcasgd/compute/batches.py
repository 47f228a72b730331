"""Where a worker's mini-batches come from: tensors in memory, or a user's Dataset read lazily.

Every worker draws the *indices* of its mini-batches from its
:class:`~dcasgd.compute.worker.BatchStream` (the same shards and order on every path and
backend).  A **source** turns indices into the batch the model sees:

- :class:`TensorSource` (a tensor pair, a ``TensorDataset``, the built-in data sets):
  ``(x[idx], y[idx])`` by ``index_select``; optionally standardised per batch (a Ray
  worker holds a built-in data set's uint8 images, a quarter of the float bytes) and
  augmented (:mod:`dcasgd.compute.augment`, batched torch ops on a generator of its own).
  The simulator's plain tensor path does not even go through it: it index-selects inline.
- :class:`DatasetSource` (any map-style Dataset): only the worker's own items, through
  ``dataset.__getitems__(indices)`` when the Dataset has it, else ``dataset[i]`` one at a
  time; ``transform`` applied to each item's input (the first element of an
  ``(input, target)`` item, the whole item otherwise; targets untouched); collated by the
  user's ``collate_fn``, else :func:`torch.utils.data.default_collate` with floating-point
  tensors made float32 (the models' dtype).

**Randomness.**  Batch number k of worker m (its ``BatchStream.drawn`` before the draw) has
the key ``batch_key(seed, m, k)``.  Building it seeds torch's global generator, Python's
``random`` and ``numpy.random`` from the key, and puts them back afterwards
(:func:`seeded_rngs`), so a transform that draws from any of them (torchvision's do), a
Dataset that draws in ``__getitem__`` and a random ``collate_fn`` (masking, say) give every
batch of every epoch fresh draws, and the same seed gives the same draws: on either backend,
after a resume, in whichever process builds the batch.  The key is the batch number, not the
clock of dropout's :func:`~dcasgd.compute.worker.gradient_key`: the number is known before the
gradient starts (a prefetcher builds batches ahead), while the clock comes from Ray's
coordinator with the grant and jumps when a failed worker rejoins.

**Prefetch** (``loader_workers`` > 0, as ``DataLoader``'s ``num_workers``): a
:class:`LoaderPool` of processes builds whole batches (one task, one batch, seeded by its
key); a :class:`BatchReader` keeps its worker's next ``depth`` batches in flight.  Threads
would share the global generators, hence processes: forked, like ``DataLoader``'s workers on
Linux, so the Dataset is inherited rather than pickled, with one torch thread each and a
watchdog that ends them when their parent dies.  A batch is a pure function of (seed,
worker, k): one built ahead and never used changes nothing, and after a resume the reader
starts again where the restored stream stands.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import random
import threading
import time
from collections import deque
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import default_collate

from .worker import BatchStream

__all__ = ["batch_key", "seeded_rngs", "TensorSource", "DatasetSource", "fetch_items", "float32_collate",
           "LoaderPool", "BatchReader", "Draw", "eval_batches", "map_tensors", "to_device", "EVAL_BATCH"]

EVAL_BATCH = 2000            # samples per evaluation batch (the tensor path's chunk, so both sum alike)
_MIX = 1_000_003


def batch_key(seed: int, worker: int, number: int) -> int:
    """The key of worker ``worker``'s batch number ``number`` in a run seeded ``seed`` (worker -1: evaluations).

    ``((seed * P + worker) * P + number) * P + 1 mod 2**63`` with ``P = 1_000_003``: distinct from
    :func:`~dcasgd.compute.worker.gradient_key` (dropout's) for the same numbers.
    """
    return (((seed * _MIX + worker) * _MIX + number) * _MIX + 1) % (2**63)


@contextlib.contextmanager
def seeded_rngs(key: int) -> Iterator[None]:
    """Seed torch's global CPU generator, ``random`` and ``numpy.random`` from ``key``; restore them after."""
    torch_state, python_state, numpy_state = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(key)
    random.seed(key)
    np.random.seed(key % 2**32)
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def fetch_items(dataset: Any, indices: list[int]) -> list[Any]:
    """The items at ``indices``: one ``__getitems__`` call when the Dataset has it, else ``dataset[i]`` each."""
    getitems = getattr(dataset, "__getitems__", None)
    return list(getitems(indices)) if getitems else [dataset[i] for i in indices]


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it (dicts, tuples, namedtuples and lists walked)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):                 # a namedtuple
        return type(batch)(*(map_tensors(v, fn) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def float32_collate(items: list[Any]) -> Any:
    """:func:`~torch.utils.data.default_collate`, floating-point tensors made float32 (as the models' weights)."""
    return map_tensors(default_collate(items), _as_float32)


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor moved to ``device``; as it is on the CPU."""
    if device.type == "cpu":
        return batch
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


# ---------------------------------------------------------------- sources


class TensorSource:
    """Batches of tensors in memory: ``(x[idx], y[idx])``, standardised and augmented if asked.

    ``norm = (mean, std)``: ``x`` holds uint8 images and a batch is ``(x[idx] / 255 - mean) / std``
    (bit for bit the rows of the float tensor :func:`~dcasgd.compute.data.load_dataset` makes);
    ``augment(x, generator)``: a batched random transform drawing from a generator seeded by the key.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor] | None = None,
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None) -> None:
        self.x, self.y, self.norm, self.augment = x, y, norm, augment

    def __len__(self) -> int:
        return len(self.y)

    def build(self, indices: torch.Tensor | list[int], key: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = indices if isinstance(indices, torch.Tensor) else torch.tensor(indices, dtype=torch.int64)
        x, y = self.x.index_select(0, idx), self.y.index_select(0, idx)
        if self.norm is not None:
            mean, std = self.norm
            x = x.float().div_(255.0).sub_(mean).div_(std)
        if self.augment is not None:
            x = self.augment(x, torch.Generator().manual_seed(key))
        return x, y


class DatasetSource:
    """Batches read from a map-style Dataset: the items at the indices, each input transformed, collated."""

    def __init__(self, dataset: Any, collate_fn: Callable[[list[Any]], Any] | None = None,
                 transform: Callable[[Any], Any] | None = None) -> None:
        self.dataset, self.transform = dataset, transform
        self.collate_fn = collate_fn if collate_fn is not None else float32_collate

    def __len__(self) -> int:
        return len(self.dataset)

    def build(self, indices: torch.Tensor | list[int], key: int) -> Any:
        """The collated batch of ``indices`` (transforms and anything else random drawn from ``key``)."""
        idx = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        with seeded_rngs(key):
            items = fetch_items(self.dataset, idx)
            if self.transform is not None:
                items = [self._transformed(item) for item in items]
            return self.collate_fn(items)

    def _transformed(self, item: Any) -> Any:
        if isinstance(item, tuple) and item and not hasattr(item, "_fields"):
            return (self.transform(item[0]), *item[1:])
        if isinstance(item, list) and item:
            return [self.transform(item[0]), *item[1:]]
        return self.transform(item)


def eval_batches(dataset: Any, collate_fn: Callable[[list[Any]], Any] | None, seed: int,
                 batch_size: int = EVAL_BATCH) -> Iterator[Any]:
    """A Dataset's batches in order, for an evaluation: no transform; anything random seeded (worker -1)."""
    source = DatasetSource(dataset, collate_fn)
    n = len(dataset)
    for number, start in enumerate(range(0, n, batch_size)):
        yield source.build(list(range(start, min(n, start + batch_size))), batch_key(seed, -1, number))


# ---------------------------------------------------------------- prefetching


_pool_source: Any = None                 # the source a loader process builds from (set when it starts)


def _start_loader(source: Any, parent: int) -> None:
    global _pool_source
    _pool_source = source
    torch.set_num_threads(1)

    def watch() -> None:                 # the parent was killed (a Ray worker, say): go too
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _build_in_loader(indices: list[int], key: int) -> Any:
    return _pool_source.build(indices, key)


class LoaderPool:
    """``processes`` forked processes that build batches of ``source`` (``submit`` returns a Future).

    Forked (named, not the platform default, which Python 3.14 makes forkserver): each inherits the
    source as it is, unpicklable Datasets and lambda transforms included, and runs torch on one thread.
    """

    def __init__(self, source: Any, processes: int) -> None:
        self.source = source
        self.executor = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("fork"), initializer=_start_loader,
            initargs=(source, os.getpid()))

    def submit(self, indices: torch.Tensor, key: int) -> concurrent.futures.Future:
        return self.executor.submit(_build_in_loader, indices.tolist(), key)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class Draw:
    """One batch a worker drew: its number (``BatchStream.drawn`` before the draw) and its indices."""

    __slots__ = ("number", "indices")

    def __init__(self, number: int, indices: torch.Tensor) -> None:
        self.number, self.indices = number, indices

    @property
    def size(self) -> int:
        return int(self.indices.numel())


class BatchReader:
    """Worker ``stream.worker``'s batches: indices from its stream, built by ``source`` here or ahead in ``pool``.

    ``draw()`` advances the stream (as ``stream.next()`` does); ``build(draw)`` returns the batch.
    With a pool, the reader keeps the batches of the next ``depth`` draws in flight, following a copy
    of the stream; a draw it did not foresee (the stream was restored from a checkpoint) drops what
    it had and starts again from there.
    """

    def __init__(self, stream: BatchStream, source: Any, seed: int, pool: LoaderPool | None = None,
                 depth: int = 2) -> None:
        self.stream, self.source, self.seed, self.pool, self.depth = stream, source, seed, pool, depth
        self.ahead: deque[tuple[int, concurrent.futures.Future]] = deque()
        self.lookahead: BatchStream | None = None

    def key(self, number: int) -> int:
        return batch_key(self.seed, self.stream.worker, number)

    def draw(self) -> Draw:
        number = self.stream.drawn
        return Draw(number, self.stream.next())

    def build(self, draw: Draw) -> Any:
        if self.pool is None:
            return self.source.build(draw.indices, self.key(draw.number))
        while self.ahead and self.ahead[0][0] < draw.number:       # (never: draws come in order)
            self.ahead.popleft()[1].cancel()
        if not self.ahead or self.ahead[0][0] != draw.number:
            self._restart(draw)
        future = self.ahead.popleft()[1]
        self._top_up()
        return future.result()

    def _restart(self, draw: Draw) -> None:
        for _, future in self.ahead:
            future.cancel()
        self.ahead.clear()
        self.ahead.append((draw.number, self.pool.submit(draw.indices, self.key(draw.number))))
        self.lookahead = self.stream.copy()                      # stands right after ``draw``

    def _top_up(self) -> None:
        while len(self.ahead) < self.depth:
            number = self.lookahead.drawn
            indices = self.lookahead.next()
            self.ahead.append((number, self.pool.submit(indices, self.key(number))))
