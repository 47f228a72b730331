"""What to train: a model factory, the data, a loss and an evaluation metric.

The built-in names (``--model mlp``, ``--dataset fashion-mnist``) are one way
to make a :class:`Task`; a user's own objects are the other:

- **model**: a zero-argument callable returning an ``nn.Module`` with float32
  parameters (a factory, not a module: the Ray backend builds one in every
  worker process, so it must be picklable; the run seeds torch before calling
  it, so the initial weights follow the run's seed);
- **data**: a ``torch.utils.data.Dataset`` of ``(input, target)`` pairs, or a
  pair of tensors ``(inputs, targets)``.  It is read once into two tensors
  (held in memory, as the simulator and the Ray object store need them);
  floating-point inputs become float32;
- **loss** and **metric**: see :mod:`dcasgd.compute.objectives`.

On the command line, ``--model``, ``--dataset``, ``--loss`` and ``--metric``
also take an import path ``package.module:name``.  For ``--dataset`` it names
a zero-argument function returning ``(train, test)``, each a Dataset or a
tensor pair.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import InputError
from ..names import DATASETS, MODELS
from .data import Dataset, load_dataset, split_validation
from .models import build_model
from .objectives import LOSSES, METRICS, Loss, Metric, classification_error

ModelFn = Callable[[], nn.Module]


class TaskError(InputError):
    """A model, data set, loss or metric that cannot be used (bad import path, wrong shapes, ...)."""


@dataclass
class Task:
    """A model factory, the data (train/val/test tensors), the loss and the metric of one run."""

    model_fn: ModelFn
    data: Dataset
    loss_fn: Loss
    metric: Metric
    eval_on_train: bool = False          # no evaluation set was given: evaluations use the training data

    @property
    def chance_error(self) -> float | None:
        """The metric of a model that guesses (reported for a diverged run): ``100 (1 - 1/C)`` for
        classification error with C classes; None for other metrics."""
        if self.metric is classification_error and self.data.num_classes:
            return 100.0 * (1 - 1 / self.data.num_classes)
        return None


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


def as_tensors(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` tensors from a tensor pair, a TensorDataset or any Dataset of pairs."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
    elif isinstance(data, torch.utils.data.Dataset):
        try:
            pairs = [data[i] for i in range(len(data))]
            x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
            y = torch.stack([torch.as_tensor(p[1]) for p in pairs])
        except (TypeError, IndexError, RuntimeError, ValueError) as exc:
            raise TaskError(f"{what}: expected a Dataset of (input, target) pairs of equal shapes ({exc})") from None
    else:
        raise TaskError(f"{what}: expected a torch Dataset of (input, target) pairs or a pair of tensors "
                        f"(inputs, targets), got {type(data).__name__}")
    if len(x) != len(y) or len(x) == 0:
        raise TaskError(f"{what}: {len(x)} inputs and {len(y)} targets (need as many, at least one)")
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()
    if y.is_floating_point() and y.dtype != torch.float32:
        y = y.float()
    return x.contiguous(), y.contiguous()


def dataset_from_user(train: Any, test: Any | None, *, val_size: int, seed: int, name: str = "custom"
                      ) -> tuple[Dataset, bool]:
    """A :class:`Dataset` of the user's data; returns it and whether evaluations use the training data."""
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


def task_from_config(cfg: Any, model: ModelFn | None = None, data: Any = None, eval_data: Any = None,
                     loss_fn: Loss | None = None, metric: Metric | None = None) -> Task:
    """The run's task: each part the caller's object when given, else what the configuration names
    (a built-in name or an import path ``module:name``)."""
    if data is not None:
        dataset, on_train = dataset_from_user(data, eval_data, val_size=cfg.val_size, seed=cfg.seed)
    elif cfg.dataset in DATASETS:
        dataset = load_dataset(cfg.dataset, val_size=cfg.val_size, seed=cfg.seed, root=cfg.data_root)
        on_train = False
    else:
        loaded = resolve(cfg.dataset, "dataset")()
        if not (isinstance(loaded, (tuple, list)) and len(loaded) == 2):
            raise TaskError(f"dataset {cfg.dataset!r}: the function must return (train, test)")
        dataset, on_train = dataset_from_user(loaded[0], loaded[1], val_size=cfg.val_size, seed=cfg.seed,
                                              name=cfg.dataset)
    if model is not None:
        model_fn = model
    elif cfg.model in MODELS:
        if dataset.num_classes is None:
            raise TaskError(f"model {cfg.model!r} classifies; the data's targets are not class indices")
        model_fn = functools.partial(build_model, cfg.model, dataset.input_shape, dataset.num_classes, None)
    else:
        model_fn = resolve(cfg.model, "model")
    return Task(model_fn, dataset, loss_fn or loss_by_name(cfg.loss), metric or metric_by_name(cfg.metric),
                on_train)
