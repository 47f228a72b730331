"""The bookkeeping of one run, the same for every backend.

A backend tells the :class:`Recorder` what happened (an update applied, an
event, the weights to evaluate) and when the run ended; the recorder writes
``metrics.jsonl`` (:mod:`dcasgd.io.metrics`), keeps the staleness statistics,
the evaluation curve and the worker events, decides when an evaluation is
due, reports a diverged run at the metric's chance level, drives the
progress line and assembles the fields of ``summary.json`` every backend
shares.  A backend keeps only its own: the simulator its event heap and
clock, the Ray driver its actors and messages.

Evaluations fall every ``eval_every`` epochs (fractional epochs: training
samples consumed / training-set size) and at the end; each writes an
``eval`` line and a ``staleness`` snapshot, and flushes.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch

from ..compute.flat import FlatModel
from ..compute.objectives import describe
from ..compute.worker import evaluate, evaluate_batches
from ..io.tensorboard import open_metrics
from .budget import StopRule
from .context import RunContext
from .telemetry import Progress, StalenessStats


def advance_eval_mark(mark: float, epoch: float, every: float) -> float:
    """The next epoch to evaluate at: ``mark + k * every`` for the least k putting it past ``epoch``.

    Adds ``every`` one step at a time (the committed runs' rounding); a tiny
    ``every`` far behind ``epoch`` first jumps by a multiple, so the loop is short.
    """
    behind = math.floor((epoch - mark) / every) - 2
    if behind > 16:
        mark += behind * every
    while mark <= epoch + 1e-12:
        mark += every
    return mark


class Recorder:
    """Metrics lines, staleness statistics, evaluations, events, progress and the shared summary fields."""

    def __init__(self, ctx: RunContext, flat: FlatModel) -> None:
        self.ctx, self.cfg, self.flat = ctx, ctx.cfg, flat
        self.stats = StalenessStats(ctx.cfg.workers)
        self.evals: list[dict[str, Any]] = []          # every evaluation: epoch, version, time_s, wall_s, ...
        self.events: list[dict[str, Any]] = []         # worker events (summary["worker_events"])
        self.loss_sum, self.loss_count = 0.0, 0       # training losses since the last evaluation
        self.last_error: float | None = None
        self.last_train_loss: float | None = None       # train loss of the window the last evaluation closed
        self.next_eval_epoch = 0.0
        self.eval_wall_s = 0.0                         # wall seconds spent evaluating
        self.diverged = False
        self.stop = StopRule(ctx.cfg)                  # the target error and the time budget (engine/budget.py)
        self.wall_start = time.perf_counter()
        self.eval_threads: int | None = None           # torch threads while evaluating (None: as they are)
        self.metrics: Any = None
        self.progress = Progress(ctx.cfg.epochs, enabled=ctx.cfg.progress)

    # ------------------------------------------------------------ files

    def open(self, lr: Callable[[], float] | None = None, append: bool = False) -> None:
        """Open metrics.jsonl (and TensorBoard); in memory when the run writes no files."""
        path = None if self.ctx.out is None else self.ctx.out / "metrics.jsonl"
        self.metrics = open_metrics(path, self.cfg.tensorboard, lr=lr, append=append)

    def close(self) -> None:
        self.progress.close()
        if self.metrics is not None:
            self.metrics.close()

    # ------------------------------------------------------------ what happened

    def add_loss(self, loss: float) -> None:
        """A training loss toward the next evaluation's ``train_loss``."""
        self.loss_sum += loss
        self.loss_count += 1

    def update(self, *, version: int, worker: int, staleness: int, loss: float | None, time_s: float,
               epoch: float, clock: int | None, clock_gap: int | None) -> None:
        """One gradient applied (or, in sync mode, received for its round): an ``update`` line."""
        self.stats.record(worker, staleness)
        self.metrics.write("update", version=version, worker=worker, staleness=staleness, loss=loss,
                           time_s=time_s, epoch=epoch, clock=clock, clock_gap=clock_gap)

    def event(self, what: str, worker: int, *, time_s: float, version: int, worker_event: bool = True,
              **extra: Any) -> None:
        """An ``event`` line; ``worker_event`` ones also go to ``summary["worker_events"]``."""
        record = {"event": what, "worker": worker, "time_s": time_s, "version": version, **extra}
        if worker_event:
            self.events.append(record)
        self.metrics.write("event", **record)

    # ------------------------------------------------------------ evaluations

    def evaluation_due(self, epoch: float) -> bool:
        return epoch + 1e-12 >= self.next_eval_epoch

    def evaluate(self, weights: torch.Tensor, buffers: torch.Tensor | None, *, version: int, epoch: float,
                 time_s: float, lr: float) -> float:
        """Score ``weights`` on the evaluation split: an ``eval`` line and a ``staleness`` snapshot."""
        started = time.perf_counter()
        task = self.ctx.task
        threads = torch.get_num_threads()
        if self.eval_threads:
            torch.set_num_threads(self.eval_threads)
        try:
            if self.ctx.eval_set is None and task.eval_fn is None:
                error, test_loss = evaluate(self.flat, weights, buffers, self.ctx.eval_x, self.ctx.eval_y,
                                            task.loss_fn, task.metric)
            else:
                error, test_loss = evaluate_batches(self.flat, weights, buffers, self.ctx.eval_batches(),
                                                    task.loss_fn, task.metric, task.eval_fn)
        finally:
            torch.set_num_threads(threads)
        self.eval_wall_s += time.perf_counter() - started
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        record = {"epoch": epoch, "version": version, "time_s": time_s,
                  "wall_s": time.perf_counter() - self.wall_start, "test_error": error, "test_loss": test_loss,
                  "train_loss": train_loss, "lr": lr}
        self.metrics.write("eval", **{k: v for k, v in record.items() if k != "wall_s"})
        self.metrics.write("staleness", version=version, **self.stats.summary())
        self.metrics.flush()
        self.evals.append(record)
        self.stop.evaluated(error, time_s=time_s, epoch=epoch, version=version)
        self.last_error = error
        self.last_train_loss = train_loss if train_loss is not None else self.last_train_loss
        self.loss_sum, self.loss_count = 0.0, 0
        self.next_eval_epoch = advance_eval_mark(self.next_eval_epoch, epoch, self.cfg.eval_every)
        return error

    def mark_diverged(self, version: int) -> None:
        """The model blew up: its final error is the metric's chance level (None where unknown)."""
        self.diverged = True
        self.last_error = self.ctx.task.chance_error
        self.evals.append({**self.evals[-1], "version": version, "test_error": self.last_error})

    def show_progress(self, epoch: float, version: int, force: bool = False) -> None:
        # the window since the last evaluation; right after one, the window it closed
        loss = self.loss_sum / self.loss_count if self.loss_count else (
            self.last_train_loss if self.last_train_loss is not None else math.nan)
        self.progress.update(epoch, loss, self.last_error, version, self.stats, force=force)

    # ------------------------------------------------------------ the end

    def summary(self, *, updates: int, gradients: int, epoch: float, outcome: str, **backend: Any) -> dict[str, Any]:
        """The summary fields every backend writes, then the backend's own (``backend``)."""
        staleness = self.stats.summary()
        task = self.ctx.task
        last = self.evals[-1] if self.evals else None
        final = last if last is not None and last["version"] == updates else None
        extra: dict[str, Any] = {}
        if final is None:                   # (a failed run) no evaluation of the final weights: say so
            extra["last_evaluation"] = None if last is None else {k: last[k] for k in ("version", "epoch",
                                                                                        "test_error")}
        elif final["test_error"] is not None and not math.isfinite(final["test_error"]) and outcome == "finished":
            outcome, extra["metric_not_finite"] = "diverged", True   # the final metric is not a number
        return {
            "final_test_error": None if final is None else final["test_error"],
            "eval_split": self.ctx.eval_split,
            "metric": describe(task.metric if task.eval_fn is None else task.eval_fn),
            "loss": describe(task.loss_fn if task.step_fn is None else task.step_fn),
            "data_path": task.data_path,
            "diverged": self.diverged or outcome == "diverged",
            "outcome": outcome,
            "updates": updates,
            "gradients": gradients,
            "epochs_done": epoch,
            "mean_staleness": staleness["overall"]["mean"],
            "max_staleness": staleness["overall"]["max"],
            "wall_time_s": time.perf_counter() - self.wall_start,
            "eval_wall_s": self.eval_wall_s,
            "torch_threads": torch.get_num_threads(),   # float sums, hence the bits, depend on it
            "staleness": staleness,
            "pushes_per_worker": staleness["pushes_per_worker"],
            "worker_events": self.events,
            "curve": [{k: r[k] for k in ("epoch", "time_s", "test_error")} for r in self.evals],
            "config": self.cfg.to_dict(),
            "ignored_settings": self.ctx.ignored_settings,
            "run_id": self.ctx.run_id,
            **self.stop.summary(outcome),
            **extra,
            **backend,
        }

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.state_dict(), "evals": [dict(r) for r in self.evals],
                "events": [dict(e) for e in self.events], "loss_sum": self.loss_sum, "loss_count": self.loss_count,
                "last_error": self.last_error, "next_eval_epoch": self.next_eval_epoch, "diverged": self.diverged,
                "stop": self.stop.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.stats.load_state_dict(sd["stats"])
        self.evals, self.events = [dict(r) for r in sd["evals"]], [dict(e) for e in sd["events"]]
        self.loss_sum, self.loss_count = float(sd["loss_sum"]), int(sd["loss_count"])
        self.last_error, self.next_eval_epoch = sd["last_error"], float(sd["next_eval_epoch"])
        self.diverged = bool(sd["diverged"])
        self.stop.load_state_dict(sd.get("stop"))
