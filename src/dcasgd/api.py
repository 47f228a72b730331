"""Train your own model on your own data with a parameter server, simulated or on Ray.

::

    import dcasgd

    result = dcasgd.train(make_net, (x, y), eval_data=(x_test, y_test),
                          loss_fn=torch.nn.functional.mse_loss, metric=dcasgd.mean_squared_error,
                          rule="dc-asgd-a", workers=8, epochs=3, lr=0.05)
    result.model       # an nn.Module holding the trained weights (the ones final_test_error measured)
    result.summary     # what summary.json holds: final_test_error, staleness, curve, ...

The entry point follows ``torch.optim``'s shape: what is trained comes
first (a model *factory*, because every worker builds its own copy), the
hyperparameters are keywords, validated before anything starts, with the
same names and errors as the command line (:class:`~dcasgd.config.TrainConfig`).
Every rule, consistency mode and option of ``dcasgd train`` is a keyword
here.  ``backend="ray"`` runs the same job on real processes.

Nothing is written unless ``out`` names a directory (then the run writes
``metrics.jsonl`` and ``summary.json`` there, as ``dcasgd train --out`` does).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from .compute.flat import views_of
from .compute.models import seeded_model
from .compute.objectives import describe
from .compute.task import Task, WorkerBatch, data_from_config, task_from_config
from .compute.task import worker_batches as batches_of
from .config import ConfigError, TrainConfig
from .engine.ownership import own_run_dirs
from .io.rundir import resume_run_dir

__all__ = ["train", "TrainResult", "worker_batches"]


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    model: nn.Module                             # the trained model (a fresh module with the final weights)
    summary: dict[str, Any]                      # summary.json's contents
    out: Path | None                             # the run directory, or None when nothing was written
    metrics: list[dict[str, Any]] = field(default_factory=list)   # metrics lines, kept when out is None

    @property
    def final_error(self) -> float | None:
        """The evaluation metric at the end (``summary["final_test_error"]``)."""
        return self.summary["final_test_error"]


def train(model: Callable[[], nn.Module] | str | None = None, data: Any = None, *, eval_data: Any = None,
          loss_fn: Callable | str | None = None, metric: Callable | str | None = None,
          step_fn: Callable | str | None = None, eval_fn: Callable | str | None = None,
          transform: Callable | str | None = None, collate_fn: Callable | str | None = None,
          config: TrainConfig | None = None, **settings: Any) -> TrainResult:
    """Train ``model`` on ``data`` with a parameter server; returns the trained model and the summary.

    - ``model``: a zero-argument callable returning an ``nn.Module`` (float32
      parameters; picklable for ``backend="ray"``), or a built-in name
      (``"mlp"``, ``"cnn"``, ``"resnet20"``) or import path ``"pkg.mod:make"``.
    - ``data``: a pair of tensors ``(inputs, targets)`` or a ``TensorDataset``
      (held in memory: the fast path), any map-style ``torch.utils.data.Dataset``
      (read lazily: each worker reads only its own mini-batches' items), a
      zero-argument function returning one (on Ray each worker calls it), or a
      built-in data set name (``"fashion-mnist"``, ...).  Not a ``DataLoader``:
      pass its ``dataset`` and ``collate_fn``.  ``eval_data``: the same forms,
      what the evaluations score (default: the built-in data set's test split;
      for your own data without ``eval_data``, the training data).
    - ``loss_fn(output, target) -> scalar tensor``: the batch mean that
      workers differentiate (default cross-entropy).  ``metric(output,
      target) -> number``: the batch mean that evaluations report as
      ``test_error``, lower is better (default classification error in percent).
    - ``step_fn(model, batch) -> scalar tensor``: instead of ``loss_fn``, the
      batch's loss for batches of any structure (a dict, a tuple, nested
      tensors: whatever ``collate_fn`` returns).  ``eval_fn(model, batch) ->
      (metric_sum, count)``: instead of ``metric``, evaluations report
      ``sum of metric_sum / sum of count`` (exact over unequal batches).
    - ``transform(input) -> input``: a per-sample transform of each training
      input (targets untouched), random as you like: its draws from torch,
      ``random`` and ``numpy.random`` are seeded per batch from (seed, worker,
      batch number), so every epoch sees fresh ones and a seed reproduces them.
      ``collate_fn(items) -> batch`` (default ``default_collate``).  Either
      makes tensor data lazy.  ``loader_workers=N`` builds a lazy Dataset's
      batches ahead in N processes (same bits as without).  ``augment="crop-flip"``:
      the built-in pad-4, random-crop and flip of image tensors (CIFAR-10's).
    - ``config`` and/or keywords: every setting of ``dcasgd train``
      (``rule``, ``consistency``, ``workers``, ``epochs``, ``batch_size``,
      ``lr``, ``backend``, ``out``, ...), see :class:`~dcasgd.config.TrainConfig`.
      Without ``config``, ``out`` defaults to None: nothing is written.
    """
    cfg = _config(config, settings)
    if isinstance(model, nn.Module):
        raise ConfigError(f"model: got an nn.Module instance ({type(model).__name__}), but train takes a factory, "
                          f"because every worker builds its own copy: pass lambda: net, or a function that "
                          f"builds the module")
    named = {"model": model, "dataset": data, "loss": loss_fn, "metric": metric, "step": step_fn, "eval": eval_fn,
             "transform": transform, "collate": collate_fn}
    objects = {}
    for key, value in named.items():
        if isinstance(value, str):
            cfg = dataclasses.replace(cfg, **{key: value})
        elif value is not None:
            objects[key] = value
            cfg = dataclasses.replace(cfg, **{key: _record(key, value)})
    if eval_data is not None and "dataset" not in objects:
        raise ConfigError("eval_data goes with data you pass yourself; a built-in data set brings its test split")
    cfg.validate()
    task = None
    if objects:
        task = task_from_config(cfg, model=objects.get("model"), data=objects.get("dataset"), eval_data=eval_data,
                                loss_fn=objects.get("loss"), metric=objects.get("metric"), step_fn=objects.get("step"),
                                eval_fn=objects.get("eval"), transform=objects.get("transform"),
                                collate_fn=objects.get("collate"))
    return run(cfg, task)


def worker_batches(data: Any, *, worker: int = 0, transform: Callable | str | None = None,
                   collate_fn: Callable | str | None = None, **settings: Any) -> Iterator[WorkerBatch]:
    """The training batches worker ``worker`` reads in a run of ``data`` with these settings, in order.

    Yields :class:`~dcasgd.compute.task.WorkerBatch` objects without end: ``.number``, ``.epoch`` (the
    worker's local epoch), ``.indices`` (its samples, from its shard of that epoch) and ``.read()``, the
    batch exactly as that worker builds it in a run with the same ``workers``, ``batch_size``, ``seed``,
    ``val_size``, ``augment`` and ``transform`` (random transforms included: the same draws).  A look at
    what training sees, e.g. that two epochs crop a sample differently (examples/augmented_fmnist.py).
    """
    named = {"dataset": data, "transform": transform, "collate": collate_fn}
    given = {key: value for key, value in named.items() if value is not None and not isinstance(value, str)}
    cfg = _config(None, {**settings, **{key: value for key, value in named.items() if isinstance(value, str)}})
    cfg = dataclasses.replace(cfg, **{key: _record(key, value) for key, value in given.items()}).validate()
    if not 0 <= worker < cfg.workers:
        raise ConfigError(f"worker {worker} is not in 0..{cfg.workers - 1}")
    dataset, _ = data_from_config(cfg, given.get("dataset"), None, given.get("transform"), given.get("collate"))
    return batches_of(dataset, cfg.augment, worker, cfg.workers, cfg.batch_size, cfg.seed)


def run(cfg: TrainConfig, task: Task | None = None) -> TrainResult:
    """Run a validated configuration on its backend (``task``: the user's objects, default the names).

    The run's directory (and the one it resumes from) is locked for the run's lifetime: a second
    process asking for it gets :class:`~dcasgd.io.lock.DirectoryBusy` (bad input, exit status 2).
    ``cfg.threads`` (when not 0) sets torch's thread count first.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with own_run_dirs(cfg):
        return _run_owned(cfg, task)


def _run_owned(cfg: TrainConfig, task: Task | None) -> TrainResult:
    if cfg.backend == "ray":
        from .backends.ray.driver import RayRun
        ray_run = RayRun(cfg, task)
        summary = ray_run.run()
        weights, buffers, metrics = ray_run.final_weights, ray_run.final_buffers, ray_run.recorder.metrics.records
        ctx = ray_run.ctx
    else:
        from .backends.sim import Simulator
        from .engine.context import prepare_run
        ctx = prepare_run(cfg, task)
        result = Simulator(ctx).run()
        summary, weights, buffers, metrics = result.summary, result.weights, result.buffers, result.metrics
    trained = seeded_model(ctx.task.model_fn, cfg.seed)
    load_flat(trained, weights, buffers)
    return TrainResult(trained, summary, ctx.out, metrics)


def load_flat(module: nn.Module, weights: torch.Tensor, buffers: torch.Tensor | None) -> nn.Module:
    """Copy a flat weight vector (and flat float buffers) into ``module``, in parameter order."""
    with torch.no_grad():
        _copy_in([p for p in module.parameters() if p.requires_grad], weights)
        if buffers is not None and buffers.numel():
            _copy_in([b for b in module.buffers() if b.is_floating_point()], buffers)
    return module


def _copy_in(tensors: list[torch.Tensor], flat: torch.Tensor) -> None:
    for t, view in zip(tensors, views_of(flat, tensors)):
        t.copy_(view)


def _record(key: str, value: Any) -> str:
    """What a run's configuration records for an object the caller passed (not an import path for data)."""
    if key == "dataset" and not (callable(value) and not hasattr(value, "__getitem__")):
        return f"python-objects:{type(value).__name__}"
    return describe(value)


def _config(config: TrainConfig | None, settings: dict[str, Any]) -> TrainConfig:
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; allowed: {sorted(known)}")
    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    base = config if config is not None else TrainConfig(out=None)
    if config is None and settings.get("resume") and "out" not in settings:
        settings = {**settings, "out": str(resume_run_dir(settings["resume"]))}
    return dataclasses.replace(base, **settings)
