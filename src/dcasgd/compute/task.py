"""What to train: a model factory, the data, a step (or a loss), and an evaluation.

The built-in names (``--model mlp``, ``--dataset fashion-mnist``) are one way
to make a :class:`Task`; a user's own objects are the other:

- **model**: a zero-argument callable returning an ``nn.Module`` with float32
  parameters (a factory, not a module: the Ray backend builds one in every
  worker process, so it must be picklable; the run seeds torch before calling
  it, so the initial weights follow the run's seed);
- **data**, two paths (:mod:`dcasgd.compute.user_data`, :mod:`dcasgd.compute.batches`):

  - *tensors*, a pair ``(inputs, targets)`` or a ``TensorDataset`` of two, and
    the built-in data sets: held in memory, a batch is ``x[idx], y[idx]`` (the
    fast path); floating-point tensors become float32.  ``augment`` adds the
    built-in random crop and flip to image tensors (N, C, H, W);
  - *lazy*, any other map-style Dataset (``__len__`` and ``__getitem__``,
    optionally ``__getitems__``), and tensor data given a ``transform`` or a
    ``collate_fn``: each worker reads only the items of its own mini-batches,
    applies ``transform`` to each input and collates them (``collate_fn``,
    default ``default_collate`` with floats as float32).  Such a Dataset
    reaches a Ray worker as the object itself (pickled: it should hold paths,
    not arrays), or a zero-argument function returning it (``data=make_set``;
    on the command line the ``--dataset`` import path), which each worker calls;

  a ``DataLoader`` is refused: the workers shard the data themselves, so pass
  its ``dataset`` and ``collate_fn``;
- **step_fn(model, batch) -> loss**: the batch's mean loss, which workers
  differentiate; the batch is whatever the collate function returns (a dict,
  a tuple, nested tensors).  Default: ``loss_fn(model(input), target)``;
- **eval_fn(model, batch) -> (metric_sum, count)**: what evaluations report
  as ``test_error``, ``sum of metric_sum / sum of count`` over the evaluation
  batches (exact over unequal batches).  Default: the ``metric`` and
  ``loss_fn`` of ``(input, target)`` batches (:mod:`dcasgd.compute.objectives`).

On the command line, ``--model``, ``--dataset``, ``--loss``, ``--metric``,
``--step``, ``--eval``, ``--transform`` and ``--collate`` take an import path
``package.module:name`` (the first four also a built-in name).  For
``--dataset`` it names a zero-argument function returning ``(train, test)``,
each a Dataset or a tensor pair.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..names import DATASETS, MODELS
from .augment import make_augment
from .batches import BatchReader, DatasetSource, TensorSource, eval_batches
from .data import Dataset, load_dataset, load_train_images
from .models import build_model
from .objectives import LOSSES, METRICS, Loss, Metric, classification_error, cross_entropy
from .user_data import (IndexedView, LazyData, TaskError, as_dataset, dataset_from_user, is_factory, refuse_loader,
                        split_views)
from .worker import BatchStream, EvalFn, LossStep, StepFn

ModelFn = Callable[[], nn.Module]


@dataclass
class Task:
    """A model factory, the data (tensors or lazy Datasets), the step, the loss and the evaluation of one run."""

    model_fn: ModelFn
    data: Dataset | LazyData
    loss_fn: Loss
    metric: Metric
    eval_on_train: bool = False          # no evaluation set was given: evaluations use the training data
    step_fn: StepFn | None = None        # None: loss_fn(model(input), target)
    eval_fn: EvalFn | None = None        # None: metric and loss_fn of (input, target) batches
    augment: str = "none"                # built-in augmentation of tensor images (compute/augment.py)

    @property
    def chance_error(self) -> float | None:
        """The metric of a model that guesses (reported for a diverged run): ``100 (1 - 1/C)`` for
        classification error with C classes; None for other metrics."""
        if self.eval_fn is None and self.metric is classification_error and self.data.num_classes:
            return 100.0 * (1 - 1 / self.data.num_classes)
        return None

    @property
    def data_path(self) -> str:
        """``"tensor"`` (batches index-selected from tensors in memory) or ``"lazy"`` (read from a Dataset)."""
        return "lazy" if isinstance(self.data, LazyData) else "tensor"

    @property
    def step(self) -> StepFn:
        return self.step_fn if self.step_fn is not None else LossStep(self.loss_fn)

    def train_source(self) -> TensorSource | DatasetSource | None:
        """Where the training batches come from; None for the simulator's inline tensor path (tensors,
        no augmentation, the default step), whose bits every committed run was made with."""
        if isinstance(self.data, LazyData):
            return self.data.source()
        augment = make_augment(self.augment, self.data.norm)
        if augment is None and self.step_fn is None:
            return None
        return TensorSource(self.data.train_x, self.data.train_y, augment=augment)

    def eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor] | Any:
        """What evaluations of ``split`` ("test" or "val") read: a tensor pair, or a Dataset (lazy data)."""
        d = self.data
        if isinstance(d, LazyData):
            return d.val if split == "val" else d.test
        return (d.val_x, d.val_y) if split == "val" else (d.test_x, d.test_y)


def resolve(path: str, what: str) -> Any:
    """The object an import path ``package.module:name`` names (``name`` may be dotted)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(f"{what} {path!r}: expected a built-in name or an import path module:name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"{what} {path!r}: cannot import {module_name} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TaskError(f"{what} {path!r}: {module_name} has no attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TaskError(f"{what} {path!r}: {attr} is not callable")
    return obj


def loss_by_name(name: str) -> Loss:
    return LOSSES[name] if name in LOSSES else resolve(name, "loss")


def metric_by_name(name: str) -> Metric:
    return METRICS[name] if name in METRICS else resolve(name, "metric")


def optional_by_path(path: str | None, what: str) -> Callable | None:
    """The callable an optional import path names (None stays None)."""
    return None if path is None else resolve(path, what)


def task_from_config(cfg: Any, model: ModelFn | None = None, data: Any = None, eval_data: Any = None,
                     loss_fn: Loss | None = None, metric: Metric | None = None, *, step_fn: StepFn | None = None,
                     eval_fn: EvalFn | None = None, transform: Callable | None = None,
                     collate_fn: Callable | None = None) -> Task:
    """The run's task: each part the caller's object when given, else what the configuration names
    (a built-in name or an import path ``module:name``)."""
    dataset, on_train = data_from_config(cfg, data, eval_data, transform, collate_fn)
    task = Task(None, dataset, loss_fn or loss_by_name(cfg.loss), metric or metric_by_name(cfg.metric), on_train,
                step_fn if step_fn is not None else optional_by_path(cfg.step, "step"),
                eval_fn if eval_fn is not None else optional_by_path(cfg.eval, "eval"), cfg.augment)
    _check_augment(task)
    sample = check_batches(task, cfg.eval_split)
    if model is not None:
        task.model_fn = model
    elif cfg.model in MODELS:
        if dataset.num_classes is None:
            raise TaskError(f"model {cfg.model!r} classifies; the data's targets are not class indices"
                            + (" (for a Dataset: give it a `classes` attribute, as torchvision's have, or pass "
                               "your own model)" if isinstance(dataset, LazyData) else ""))
        if isinstance(dataset, Dataset):
            shape = dataset.input_shape
        else:
            _check_pair(sample, "data", f"your own model (the built-in {cfg.model!r} takes (input, target) batches)")
            shape = tuple(sample[0].shape[1:])
        task.model_fn = functools.partial(build_model, cfg.model, shape, dataset.num_classes, None)
    else:
        task.model_fn = resolve(cfg.model, "model")
    return task


def data_from_config(cfg: Any, data: Any = None, eval_data: Any = None, transform: Callable | None = None,
                     collate_fn: Callable | None = None) -> tuple[Dataset | LazyData, bool]:
    """The run's data (and whether evaluations use the training data): the caller's ``data`` when given
    (an object or a zero-argument factory), else the built-in name or import path ``cfg.dataset``."""
    transform = transform if transform is not None else optional_by_path(cfg.transform, "transform")
    collate_fn = collate_fn if collate_fn is not None else optional_by_path(cfg.collate, "collate")
    pipeline = {"val_size": cfg.val_size, "seed": cfg.seed, "transform": transform, "collate_fn": collate_fn}
    if data is not None:
        factory = data if is_factory(data) else None
        dataset, on_train = dataset_from_user(data() if factory else data,
                                              eval_data() if is_factory(eval_data) else eval_data,
                                              make_train=factory, **pipeline)
    elif cfg.dataset in DATASETS:
        dataset, on_train = load_dataset(cfg.dataset, val_size=cfg.val_size, seed=cfg.seed, root=cfg.data_root), False
        if transform is not None or collate_fn is not None:
            dataset = _builtin_as_lazy(dataset, cfg, transform, collate_fn)
    else:
        loaded = resolve(cfg.dataset, "dataset")()
        if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
            refuse_loader(loaded, f"dataset {cfg.dataset!r}")
            raise TaskError(f"dataset {cfg.dataset!r}: the function must return (train, test)")
        dataset, on_train = dataset_from_user(loaded[0], loaded[1], name=cfg.dataset,
                                              make_train=functools.partial(_train_of, cfg.dataset), **pipeline)
    return dataset, on_train


def _train_of(path: str) -> Any:
    """The training set the data-set function at import path ``path`` returns (what a Ray worker calls)."""
    return resolve(path, "dataset")()[0]


def _builtin_as_lazy(data: Dataset, cfg: Any, transform: Callable | None, collate_fn: Callable | None) -> LazyData:
    """A built-in data set read through ``transform`` / ``collate_fn``: its tensors as TensorDatasets."""
    tensors = torch.utils.data.TensorDataset
    make_train = functools.partial(_builtin_train, cfg.dataset, cfg.val_size, cfg.seed, cfg.data_root)
    return LazyData(data.name, tensors(data.train_x, data.train_y), tensors(data.test_x, data.test_y),
                    tensors(data.val_x, data.val_y), data.num_classes, collate_fn, transform, make_train, 0, cfg.seed)


def _builtin_train(name: str, val_size: int, seed: int, root: str | None) -> Any:
    data = load_dataset(name, val_size=val_size, seed=seed, root=root)
    return torch.utils.data.TensorDataset(data.train_x, data.train_y)


def _check_augment(task: Task) -> None:
    if task.augment == "none":
        return
    if not isinstance(task.data, Dataset) or task.data.train_x.dim() != 4:
        shape = "" if not isinstance(task.data, Dataset) else f", got inputs of shape {tuple(task.data.input_shape)}"
        raise TaskError(f"augment {task.augment!r} works on image tensors (N, C, H, W){shape}; for a Dataset, "
                        f"pass a transform")


def check_batches(task: Task, eval_split: str = "test") -> Any:
    """Build one small batch of each set the run reads and check its shape against the step and the
    evaluation (before anything is written); returns the training batch (None for tensors).

    Reads ``min(2, n)`` items of the training set and of the evaluated set, in this process."""
    data = task.data
    if not isinstance(data, LazyData):
        return None
    n = min(2, data.num_train)
    try:
        batch = data.source().build(list(range(n)), 0)
    except Exception as exc:  # noqa: BLE001 - the user's Dataset, transform or collate_fn: report it as bad input
        raise TaskError(f"data: reading a first batch failed ({type(exc).__name__}: {exc})") from None
    if task.step_fn is None:
        _check_pair(batch, "data", "step_fn")
    if task.eval_fn is None:
        evaluated = task.eval_set(eval_split)
        if len(evaluated):
            _check_pair(next(eval_batches(IndexedView(evaluated, torch.arange(min(2, len(evaluated)))),
                                          data.collate_fn, 0)), "eval_data", "eval_fn")
    return batch


def _check_pair(batch: Any, what: str, needed: str) -> None:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, torch.Tensor) for t in batch)):
        kind = type(batch).__name__
        if isinstance(batch, dict):
            kind += f" with keys {list(batch)}"
        elif isinstance(batch, (tuple, list)):
            kind += f" of {len(batch)}"
        raise TaskError(f"{what}: a batch is a {kind}, not an (input, target) pair of tensors; pass {needed} "
                        f"for batches of another shape")


# ---------------------------------------------------------------- what a Ray worker gets


@dataclass
class WorkerTask:
    """What a Ray worker needs of the task, picklable: the model factory, the step, the loss (for the
    compensation probe) and how to get its training batches.

    ``make_source()`` builds the worker's source where it runs: a lazy Dataset (the object or the
    user's factory), or a built-in data set read from that machine's disk.  None: the user's tensors,
    which come through Ray's object store (zero-copy on one node), batched by a
    :class:`~dcasgd.compute.batches.TensorSource` with ``augment``.
    """

    model_fn: ModelFn
    step_fn: StepFn
    loss_fn: Loss
    make_source: Callable[[], Any] | None = None
    augment: Any = None

    def source(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None) -> TensorSource | DatasetSource:
        return self.make_source() if self.make_source is not None else TensorSource(x, y, augment=self.augment)


def worker_task(task: Task, cfg: Any) -> WorkerTask:
    """The :class:`WorkerTask` of ``task`` in a run configured by ``cfg``."""
    data = task.data
    make = None
    if isinstance(data, LazyData):
        make = functools.partial(lazy_source, data.make_train, data.val_size, data.seed, data.collate_fn,
                                 data.transform)
    elif data.name in DATASETS:
        make = functools.partial(builtin_source, data.name, cfg.val_size, cfg.seed, cfg.data_root, data.norm,
                                 task.augment)
    augment = make_augment(task.augment, data.norm) if make is None else None
    return WorkerTask(task.model_fn, task.step, task.loss_fn, make, augment)


def lazy_source(make_train: Callable[[], Any], val_size: int, seed: int, collate_fn: Callable | None,
                transform: Callable | None) -> DatasetSource:
    """A worker's source of a lazy Dataset: ``make_train()``, the same validation items held out."""
    train, _ = split_views(as_dataset(make_train(), "data"), val_size, seed)
    return DatasetSource(train, collate_fn, transform)


def builtin_source(name: str, val_size: int, seed: int, root: str | None,
                   norm: tuple[torch.Tensor, torch.Tensor] | None, augment: str) -> TensorSource:
    """A worker's source of a built-in data set, read from this machine's disk: uint8 images standardised
    per batch with the driver's ``norm`` (the same bits as its float tensors); synthetic made from the seed."""
    if name == "synthetic":
        data = load_dataset(name, val_size=val_size, seed=seed)
        return TensorSource(data.train_x, data.train_y, augment=make_augment(augment, data.norm))
    x, y = load_train_images(name, val_size=val_size, seed=seed, root=root)
    return TensorSource(x, y, norm, make_augment(augment, norm))


# ---------------------------------------------------------------- what a worker reads, for a look


@dataclass
class WorkerBatch:
    """One batch a worker draws: its number (from 0), the worker's local epoch, the sample indices (into the
    training set less the validation items); :meth:`read` builds it as the worker does (transform included)."""

    number: int
    epoch: int
    indices: torch.Tensor
    reader: BatchReader

    def read(self) -> Any:
        return self.reader.source.build(self.indices, self.reader.key(self.number))


def worker_batches(data: Dataset | LazyData, augment: str, worker: int, workers: int, batch_size: int,
                   seed: int) -> Iterator[WorkerBatch]:
    """Worker ``worker``'s batches in a run of ``workers`` workers, in order, without end (each read on demand)."""
    task = Task(None, data, cross_entropy, classification_error, augment=augment)
    source = task.train_source() or TensorSource(data.train_x, data.train_y)
    reader = BatchReader(BatchStream(data.num_train, worker, workers, batch_size, seed), source, seed)
    while True:
        drawn = reader.draw()
        yield WorkerBatch(drawn.number, reader.stream.epoch, drawn.indices, reader)
