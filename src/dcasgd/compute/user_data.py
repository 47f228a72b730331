"""A user's data as a run reads it: tensors held in memory, or Datasets read lazily.

:func:`dataset_from_user` takes what a user passes as ``data`` and ``eval_data``:

- a pair of tensors ``(inputs, targets)`` or a ``TensorDataset`` of two, with no
  ``transform`` or ``collate_fn``: a :class:`~dcasgd.compute.data.Dataset` of tensors
  (floating point made float32; ``val_size`` samples held out), the fast path;
- anything else map-style (``__len__`` and ``__getitem__``), or tensors with a
  ``transform`` or ``collate_fn``: a :class:`LazyData`, whose Datasets the workers read
  item by item (:mod:`dcasgd.compute.batches`); the validation items are held out as
  an :class:`IndexedView`, the same items the tensor path holds out;
- a ``DataLoader`` or an ``IterableDataset``: refused, in one line saying what to pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..errors import InputError
from .batches import DatasetSource, fetch_items
from .data import Dataset, split_validation, validation_indices


class TaskError(InputError):
    """A model, data set, loss or metric that cannot be used (bad import path, wrong shapes, ...)."""


class IndexedView(torch.utils.data.Dataset):
    """The items of ``dataset`` at ``indices`` (an int64 tensor), in that order; batched reads stay batched."""

    def __init__(self, dataset: Any, indices: torch.Tensor) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.indices[i])]

    def __getitems__(self, positions: list[int]) -> list[Any]:
        return fetch_items(self.dataset, self.indices[positions].tolist())


@dataclass
class LazyData:
    """A user's map-style Datasets, read lazily by the workers (:class:`~dcasgd.compute.batches.DatasetSource`).

    ``train`` is the training items (a view without the validation ones), ``test`` what evaluations
    of the test split read, ``val`` the held-out ones.  ``make_train`` is how a Ray worker gets the
    training Dataset (picklable, zero arguments): the object itself, or the user's factory; the
    worker then holds out the same ``val_size`` items with the same ``seed``.
    """

    name: str
    train: Any
    test: Any
    val: Any
    num_classes: int | None
    collate_fn: Callable[[list[Any]], Any] | None
    transform: Callable[[Any], Any] | None
    make_train: Callable[[], Any]
    val_size: int = 0
    seed: int = 0

    @property
    def num_train(self) -> int:
        return len(self.train)

    def source(self) -> DatasetSource:
        return DatasetSource(self.train, self.collate_fn, self.transform)


def is_tensor_data(data: Any) -> bool:
    """A pair of tensors ``(inputs, targets)`` or a TensorDataset of two: the in-memory path."""
    if isinstance(data, (tuple, list)):
        return len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data)
    return isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2


def refuse_loader(data: Any, what: str) -> None:
    """A DataLoader (or an iterable Dataset) cannot be sharded by index: one line saying what to pass."""
    if isinstance(data, torch.utils.data.DataLoader):
        raise TaskError(f"{what}: a DataLoader cannot be used, the workers shard the data themselves: pass its "
                        f"dataset and collate_fn instead (data=loader.dataset, collate_fn=loader.collate_fn, "
                        f"batch_size=loader.batch_size)")
    if isinstance(data, torch.utils.data.IterableDataset):
        raise TaskError(f"{what}: an IterableDataset cannot be sharded by index; pass a map-style Dataset "
                        f"(__len__ and __getitem__)")


def is_map_style(data: Any) -> bool:
    """A torch Dataset, or any other object with ``__len__`` and ``__getitem__`` (not a plain list or tuple)."""
    if isinstance(data, torch.utils.data.Dataset):
        return True
    return (hasattr(data, "__len__") and hasattr(data, "__getitem__")
            and not isinstance(data, (tuple, list, str, bytes, dict, torch.Tensor)))


def is_factory(data: Any) -> bool:
    """A zero-argument function returning the data (not a Dataset that happens to be callable)."""
    return callable(data) and not is_map_style(data)


def as_tensors(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` tensors from a tensor pair or a TensorDataset of two (:func:`is_tensor_data`)."""
    x, y = data.tensors if isinstance(data, torch.utils.data.TensorDataset) else data
    if len(x) != len(y) or len(x) == 0:
        raise TaskError(f"{what}: {len(x)} inputs and {len(y)} targets (need as many, at least one)")
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    if y.is_floating_point() and y.dtype != torch.float32:
        y = y.float()
    return x.contiguous(), y.contiguous()


def as_dataset(data: Any, what: str) -> Any:
    """A map-style Dataset of ``data``: a tensor pair becomes a TensorDataset."""
    refuse_loader(data, what)
    if is_tensor_data(data):
        return torch.utils.data.TensorDataset(*as_tensors(data, what))
    if not is_map_style(data):
        raise TaskError(f"{what}: expected a torch Dataset (map-style: __len__ and __getitem__), a pair of tensors "
                        f"(inputs, targets), or a zero-argument function returning one, got {type(data).__name__}")
    try:
        n = len(data)
    except TypeError as exc:
        raise TaskError(f"{what}: a Dataset without a length cannot be sharded ({exc})") from None
    if n == 0:
        raise TaskError(f"{what}: the Dataset is empty")
    return data


def dataset_from_user(train: Any, test: Any | None, *, val_size: int, seed: int, name: str = "custom",
                      transform: Callable | None = None, collate_fn: Callable | None = None,
                      make_train: Callable[[], Any] | None = None) -> tuple[Dataset | LazyData, bool]:
    """The run's data from the user's: tensors (the fast path) or lazy Datasets (anything else, or tensors
    with a ``transform`` or ``collate_fn``); returns it and whether evaluations use the training data.

    ``make_train``: how a Ray worker gets ``train`` (default: ``train`` itself, pickled).
    """
    refuse_loader(train, "data")
    refuse_loader(test, "eval_data")
    if transform is None and collate_fn is None and is_tensor_data(train) and (test is None or is_tensor_data(test)):
        return _tensor_data(train, test, val_size=val_size, seed=seed, name=name)
    full = as_dataset(train, "data")
    train_view, val_view = split_views(full, val_size, seed)
    on_train = test is None
    test_set = train_view if on_train else as_dataset(test, "eval_data")
    classes = getattr(full, "classes", None)
    return LazyData(name, train_view, test_set, val_view, len(classes) if classes is not None else None, collate_fn,
                    transform, make_train or functools.partial(_itself, train), val_size, seed), on_train


def _itself(obj: Any) -> Any:
    return obj


def split_views(full: Any, val_size: int, seed: int) -> tuple[Any, IndexedView]:
    """(training view, validation view) of a Dataset: ``val_size`` items held out as
    :func:`~dcasgd.compute.data.validation_indices` picks them (the tensor path's split)."""
    split = validation_indices(len(full), val_size, seed, "data")
    if split is None:
        return full, IndexedView(full, torch.zeros(0, dtype=torch.int64))
    return IndexedView(full, split[0]), IndexedView(full, split[1])


def _tensor_data(train: Any, test: Any | None, *, val_size: int, seed: int, name: str) -> tuple[Dataset, bool]:
    train_x, train_y = as_tensors(train, "data")
    train_x, train_y, val_x, val_y = split_validation(train_x, train_y, val_size, seed, "data")
    if test is None:
        test_x, test_y, on_train = train_x, train_y, True
    else:
        test_x, test_y = as_tensors(test, "eval_data")
        on_train = False
        if test_x.shape[1:] != train_x.shape[1:]:
            raise TaskError(f"eval_data: inputs of shape {tuple(test_x.shape[1:])}, the training data's are "
                            f"{tuple(train_x.shape[1:])}")
    classes = None
    if not train_y.is_floating_point() and train_y.dim() == 1:
        classes = int(max(train_y.max(), test_y.max(), val_y.max() if len(val_y) else 0)) + 1
    return Dataset(name, train_x, train_y, test_x, test_y, val_x, val_y, classes), on_train


