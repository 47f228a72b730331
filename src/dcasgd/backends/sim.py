"""A deterministic event-driven cluster in one process.

M workers share one :class:`~dcasgd.core.server.ServerCore`.  Every gradient is
real: worker m computes it on its own mini-batch at exactly the weights it
pulled; only the clock is simulated.  One gradient cycle of worker m takes::

    comm_time (pull) + compute_time(m) + comm_time (push)        simulated seconds
    compute_time(m) = base_time * speed[m] * straggler[m] * noise

with the noise and the speeds of the timing model
(:mod:`dcasgd.engine.timing`: lognormal ``exp(jitter * z)`` by default, or
per-worker jitters, or per-worker empirical quantiles that ``dcasgd fit``
measures on a real run), drawn from a numpy Generator seeded by the run's
seed, so a seed fixes every bit.  ``--replay FILE`` takes each worker's whole
cycles from a recorded trace instead.  With a run directory the simulator
writes ``trace.jsonl`` in the Ray backend's format, so a simulated run can be
replayed too.

An event queue orders finish, failure and rejoin events by (time, sequence
number); ties go to the earlier-scheduled event, so equal-speed workers run
round robin and async staleness settles at exactly M-1.

Consistency (:mod:`dcasgd.core.consistency`): ``async`` applies each push on arrival;
``ssp:S`` holds a worker whose clock is more than S ahead of the slowest live
worker's until the slowest catches up (the wait is simulated time, counted
per worker); ``sync`` starts a round with every live worker at the same
weights and applies the average of their gradients when the slowest finishes;
``msync:m`` is a sync round that ends with its first m gradients.
``rennala:S`` starts every live worker at the same weights, and a worker that
finishes computes again at them until S gradients are in.  ``ringmaster:R``
discards a gradient whose delay is R or more on arrival; ``ringmaster-stop:R``
cancels a job as soon as an update makes its delay R.

Dropped jobs.  A cancelled job (the msync/rennala step it computed for is over,
or its ringmaster stop came due) has its generation bumped, so its finish event
is skipped, and its worker restarts at the current weights at once; a
discarded one (ringmaster) is dropped when it finishes and its worker restarts.
Either way the simulated time since the job started is spent
(``wasted_s_per_worker``) and nothing else: the simulator computes no gradient
for it, it draws no mini-batch (the worker's next job takes the batch it would
have taken) and it does not advance the worker's clock (the dropout key).  So
the batches and keys are those of the applied gradients, and ``ringmaster:R``
with R above every delay is ``async`` bit for bit.

Batches: worker m's indices come from its :class:`~dcasgd.compute.worker.BatchStream`;
tensor data without augmentation or a ``step_fn`` is index-selected inline
(:meth:`Simulator._gradient`, the path every committed run was made with), anything
else goes through a :class:`~dcasgd.compute.batches.BatchReader` per worker (a lazy
Dataset, seeded transforms, ``loader_workers`` processes shared by all workers).

What is the simulator's own: the event heap and the clock (the timing model is
:mod:`dcasgd.engine.timing`'s).  Evaluations, metrics lines, staleness
statistics, events and the summary go through the shared
:class:`~dcasgd.engine.recorder.Recorder`.
"""

from __future__ import annotations

import heapq
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..compute.batches import BatchReader, DatasetSource, LoaderPool
from ..compute.flat import FlatModel
from ..compute.worker import BatchStream, compute_gradient, compute_step, gradient_key
from ..config import TrainConfig
from ..core.consistency import APPLY, CANCEL, PointBatch, SyncBarrier, parse_consistency
from ..core.kernels import all_finite
from ..core.server import NonFiniteUpdate, PushRejected, ServerCore
from ..errors import RunFailed
from ..engine.budget import follow_clock
from ..engine.context import RunContext, open_run_dir, prepare_run, write_summary
from ..engine.probe import CompensationProbe
from ..engine.recorder import Recorder
from ..engine.resume import (check_resumable, check_same_run, check_thread_count, load_resume_checkpoint,
                             metrics_prefix_problem)
from ..engine.signals import STOP, signal_name, watching
from ..engine.timing import TraceError, Timing, load_trace, trace_record  # noqa: F401 (TraceError, load_trace: as before)
from ..io.checkpoint import CheckpointError, save_checkpoint
from ..io.metrics import MetricsWriter

FINISH, FAIL, REJOIN = "finish", "fail", "rejoin"
SIM_STATE_FORMAT = "dcasgd.sim/2"


@dataclass
class SimWorker:
    """What worker m holds: only the weights it pulled, and its place in the schedule."""

    index: int
    stream: BatchStream
    weights: torch.Tensor | None = None
    buffers: torch.Tensor | None = None
    base_version: int = 0
    clock: int = 0           # gradients pushed
    start_clock_gap: int = 0  # clock - slowest live clock when the current gradient started
    alive: bool = True
    generation: int = 0      # bumped on failure or cancellation: invalidates the in-flight finish event
    waiting_since: float | None = None
    ready_at: float = 0.0    # when it last became free to start a gradient (its push, or the start)
    cycle: dict[str, float] | None = None   # the parts of the cycle in progress
    started_at: float = 0.0  # when the job in flight started (simulated s): a dropped job wastes now - started_at


@dataclass
class SimResult:
    summary: dict[str, Any]
    weights: torch.Tensor
    buffers: torch.Tensor
    metrics: list[dict[str, Any]] = field(default_factory=list)   # the metrics lines, when no file was written


@dataclass(order=True)
class Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    worker: int = field(compare=False)
    generation: int = field(compare=False, default=0)


class Simulator:
    """Runs one training job on the simulated cluster; :meth:`run` returns the result."""

    def __init__(self, ctx: RunContext, probe: Any = None) -> None:
        cfg = self.cfg = ctx.cfg
        self.ctx = ctx
        self.consistency = parse_consistency(cfg.consistency)
        data = ctx.data
        self.flat = FlatModel(ctx.model)
        self.loss_fn = ctx.task.loss_fn
        self.server = ServerCore(self.flat.params, cfg.rule, cfg.workers, cfg.lr,
                                 backup_dtype=getattr(torch, cfg.backup_dtype), clip_norm=cfg.clip_norm,
                                 **cfg.rule_params())
        self.server_buffers = self.flat.buffers.clone()   # BatchNorm statistics: the latest pushed
        self._backup_is_pulled_copy = self.server.backups is not None and self.server.backups.dtype == torch.float32
        n = self.num_train = data.num_train
        self.workers = [SimWorker(m, BatchStream(n, m, cfg.workers, cfg.batch_size, cfg.seed))
                        for m in range(cfg.workers)]
        self._open_batches(ctx)
        self.timing = Timing(cfg)
        self.barrier = SyncBarrier()
        self.rounds = self.consistency.mode in ("sync", "msync")    # barrier rounds; rennala: a PointBatch
        self.batch = PointBatch()
        self.discarded, self.cancelled = [0] * cfg.workers, [0] * cfg.workers
        self.wasted_s = [0.0] * cfg.workers                            # simulated s spent on dropped jobs
        self.recorder = Recorder(ctx, self.flat)
        follow_clock(ctx.schedule, lambda: self.now)    # under a time budget the lr follows the clock too
        self.probe = probe if probe is not None else CompensationProbe.from_config(cfg)
        self.events: list[Event] = []
        self.seq = 0
        self.now = 0.0
        self.samples = 0                     # training samples consumed by applied gradients
        self.gradients = 0                   # gradients computed and pushed
        self.target_samples = math.ceil(cfg.epochs * n)
        self._checkpoint_due = False
        self.threads_history: list[int] = []           # torch threads of the earlier segments (resumed runs)
        self.resume_record: dict[str, Any] = {}         # what a resume adds to the summary
        self.trace: MetricsWriter | None = None       # trace.jsonl (with a run directory)

    @property
    def metrics(self) -> Any:
        """The run's metrics writer (the probe writes its lines there)."""
        return self.recorder.metrics

    @property
    def stats(self) -> Any:
        return self.recorder.stats

    @property
    def diverged(self) -> bool:
        return self.recorder.diverged

    # ------------------------------------------------------------ schedule

    def _schedule(self, at: float, kind: str, worker: int, generation: int = 0) -> None:
        heapq.heappush(self.events, Event(at, self.seq, kind, worker, generation))
        self.seq += 1

    def _live(self) -> list[SimWorker]:
        return [w for w in self.workers if w.alive]

    def _start(self, w: SimWorker) -> None:
        """Worker w pulls now and will finish one gradient later (if the policy lets it start)."""
        live_clocks = [o.clock for o in self._live()]
        if not self.consistency.may_start(w.clock, live_clocks):
            w.waiting_since = self.now
            return
        w.start_clock_gap = w.clock - min(live_clocks)
        if self._backup_is_pulled_copy:
            # the server's float32 backup of this worker IS the copy it pulled, and it only
            # changes at this worker's next pull: hold it instead of a second copy
            _, w.base_version = self.server.pull(w.index, copy=False)
            w.weights = self.server.backups[w.index]
        else:
            w.weights, w.base_version = self.server.pull(w.index)
        w.buffers = self.server_buffers.clone()
        w.cycle, w.started_at = self.timing.cycle(w.index), self.now
        self._schedule(self.now + w.cycle["cycle_s"], FINISH, w.index, w.generation)

    def _start_sync_round(self) -> None:
        live = self._live()
        self.barrier.start({w.index for w in live}, self.consistency.bound if self.consistency.mode == "msync"
                           else None)
        for w in live:
            self._start(w)

    def _start_rennala_step(self) -> None:
        """Rennala: every live worker starts at x^k; the step needs the first S gradients taken there."""
        self.batch.start(self.server.version, self.consistency.bound)
        for w in self._live():
            self._start(w)

    def _drop(self, w: SimWorker, verdict: str) -> None:
        """Worker w's job is dropped now (:data:`CANCEL`: before it finished; else discarded on arrival):
        count it and the simulated time it spent; its finish event, if still due, is skipped."""
        w.generation += 1
        (self.cancelled if verdict == CANCEL else self.discarded)[w.index] += 1
        self.wasted_s[w.index] += self.now - w.started_at
        self._trace_cycle(w)

    def _cancel_and_restart(self, workers: list[SimWorker]) -> None:
        """Cancel these workers' jobs in flight; each restarts at the current weights now."""
        for o in workers:
            self._drop(o, CANCEL)
            self._start(o)

    def _busy(self, but: SimWorker | None = None) -> list[SimWorker]:
        """Live workers with a job in flight (not waiting), in index order, except ``but``."""
        return [o for o in self.workers if o.alive and o.waiting_since is None and o is not but]

    def _release_waiting(self) -> None:
        for w in self.workers:
            if w.alive and w.waiting_since is not None:
                live_clocks = [o.clock for o in self._live()]
                if self.consistency.may_start(w.clock, live_clocks):
                    self.stats.add_wait(w.index, self.now - w.waiting_since)
                    w.waiting_since = None
                    self._start(w)

    # ------------------------------------------------------------ events

    def _open_batches(self, ctx: RunContext) -> None:
        """A reader per worker when the batches do not come from the inline tensor path of :meth:`_gradient`
        (lazy data, augmentation, a step_fn); with ``loader_workers``, a pool of loader processes they share."""
        self.readers, self.pool = None, None
        source = ctx.task.train_source()
        if source is None:
            return
        if self.cfg.loader_workers and isinstance(source, DatasetSource):
            self.pool = LoaderPool(source, self.cfg.loader_workers)
        self.readers = [BatchReader(w.stream, source, self.cfg.seed, self.pool) for w in self.workers]
        self.step, self.step_is_loss = ctx.task.step, ctx.task.step_fn is None
        self._gradient = self._read_gradient

    def _read_gradient(self, w: SimWorker):
        """As :meth:`_gradient`, for a batch a reader builds (any structure) and the task's step."""
        reader = self.readers[w.index]
        drawn = reader.draw()
        batch = reader.build(drawn)
        key = gradient_key(self.cfg.seed, w.index, w.clock)
        self.flat.point_to(w.weights)
        result = compute_step(self.flat, w.weights, w.buffers, batch, key, self.step, copy=self.probe is not None,
                              origin=(w.index, w.clock))
        return result, ((*batch, key) if self.step_is_loss else None), drawn.size

    def _gradient(self, w: SimWorker):
        batch = w.stream.next()
        key = gradient_key(self.cfg.seed, w.index, w.clock)
        data = self.ctx.data
        x, y = data.train_x.index_select(0, batch), data.train_y.index_select(0, batch)   # (5x x[batch])
        # the model reads the pulled weights where they lie (no copy); the gradient comes back as views,
        # not copies, when nothing else computes on the model before the push (no probe)
        self.flat.point_to(w.weights)
        result = compute_gradient(self.flat, w.weights, w.buffers, x, y, key, copy=self.probe is not None,
                                  loss_fn=self.loss_fn, origin=(w.index, w.clock))
        return result, (x, y, key), len(batch)

    def _on_finish(self, w: SimWorker) -> None:
        verdict = self.consistency.arrival(self.server.version - w.base_version)
        if verdict != APPLY:                               # ringmaster: delay >= R; thrown away unread
            self._drop(w, verdict)
            self._start(w)
            self._release_waiting()
            return
        result, batch, size = self._gradient(w)
        if not all_finite(result.grad):
            self.recorder.diverged = True                  # the model blew up: a result, not an error
            self._log_event("diverged", w.index)
            return
        self.gradients += 1
        self.samples += size
        self.recorder.add_loss(result.loss)
        self.server_buffers.copy_(result.buffers)        # BatchNorm statistics: latest pushed wins
        clock_at_start = w.clock
        w.clock += 1
        grad = self._maybe_corrupt(w, result.grad)
        if self.consistency.mode == "rennala":
            if not self._accepted(w, lambda: self.server.validate(w.index, grad, w.base_version)):
                return
            self.batch.add(w.index, grad, w.base_version)
            self._record_update(w, 0, result.loss, clock_at_start)
            if self.batch.complete:
                self._finish_rennala_step(w)
            else:
                self._start(w)                             # it computes again at the same point
            return
        if self.rounds:
            if not self._accepted(w, lambda: self.server.validate(w.index, grad, w.base_version)):
                return                                     # it computes again for the same round
            self.barrier.add(w.index, grad)
            self._record_update(w, 0, result.loss, clock_at_start)
            w.waiting_since = self.now
            if self.barrier.complete:
                self._finish_sync_round()
            return
        self.server.lr = self.ctx.schedule(self.epoch)
        if self.probe is not None:
            self.probe.maybe_record(self, w, result, batch)
        staleness = self.server.version - w.base_version
        if not self._accepted(w, lambda: self.server.push(w.index, grad, w.base_version)):
            return
        self._record_update(w, staleness, result.loss, clock_at_start)
        self._after_update()
        if not self.finished:
            self._start(w)
            self._cancel_and_restart([o for o in self._busy(but=w)
                                      if self.consistency.stops(self.server.version - o.base_version)])
            self._release_waiting()

    def _accepted(self, w: SimWorker, push: Callable[[], Any]) -> bool:
        """Run ``push``; on PushRejected the worker is told (an event) and pulls again."""
        try:
            push()
        except NonFiniteUpdate as exc:                     # finite gradient, overflowing update: diverged
            self.recorder.diverged = True
            self._log_event("diverged", w.index, reason=str(exc))
            return False
        except PushRejected as exc:
            self._log_event("push_refused", w.index, reason=str(exc))
            self._trace_cycle(w)
            self._start(w)
            return False
        return True

    def _finish_sync_round(self) -> None:
        self.server.lr = self.ctx.schedule(self.epoch)
        try:
            self.barrier.apply(self.server, lambda m: self.workers[m].base_version)
        except NonFiniteUpdate as exc:
            self.recorder.diverged = True
            self._log_event("diverged", min(self.barrier.received), reason=str(exc))
            return
        for m in self.barrier.received:
            self.stats.add_wait(m, self.now - self.workers[m].waiting_since)
            self.workers[m].waiting_since = None
        for m in self.barrier.outstanding:                 # msync: the jobs the step did not wait for
            self._drop(self.workers[m], CANCEL)
        self._after_update()
        if not self.finished:
            self._start_sync_round()

    def _finish_rennala_step(self, w: SimWorker) -> None:
        """Rennala: S gradients taken at x^k are in (w gave the last): step with their mean, cancel every
        job in flight, restart every live worker at x^{k+1}."""
        self.server.lr = self.ctx.schedule(self.epoch)
        try:
            self.batch.apply(self.server, lambda m: self.batch.version)
        except NonFiniteUpdate as exc:
            self.recorder.diverged = True
            self._log_event("diverged", w.index, reason=str(exc))
            return
        for o in self._busy(but=w):
            self._drop(o, CANCEL)
        self._after_update()
        if not self.finished:
            self._start_rennala_step()

    def _record_update(self, w: SimWorker, staleness: int, loss: float, clock: int) -> None:
        version = self.server.version + self.consistency.same_point
        self.recorder.update(version=version, worker=w.index, staleness=staleness, loss=loss, time_s=self.now,
                             epoch=self.epoch, clock=clock, clock_gap=w.start_clock_gap)
        self._trace_cycle(w, version, staleness)
        w.ready_at = self.now

    def _trace_cycle(self, w: SimWorker, version: int | None = None, staleness: int | None = None) -> None:
        """The trace line of w's cycle in progress: the line the Ray backend writes for an applied push, or
        (``version`` None) a cycle never applied (refused, dropped, cut short by a failure, or in flight at
        the end), so that a replay draws exactly the cycles this run drew."""
        if self.trace is not None and w.cycle is not None:
            self.trace.append(trace_record({
                "worker": w.index, "seq": self.timing.drawn[w.index], "base_version": w.base_version,
                "version": version, "staleness": staleness, "t_pull": w.started_at,
                "t_push": self.now if version is not None else None, "duration_s": w.cycle["compute_s"],
                **w.cycle, "wait_s": w.started_at - w.ready_at}))
        w.cycle = None

    def _on_fail(self, w: SimWorker) -> None:
        if not w.alive:
            return
        self._trace_cycle(w)
        w.alive, w.generation, w.waiting_since = False, w.generation + 1, None
        self._log_event("worker_failed", w.index)
        if self.rounds:
            self.barrier.drop(w.index)
            if self.barrier.complete:
                self._finish_sync_round()
        else:
            self._release_waiting()

    def _on_rejoin(self, w: SimWorker) -> None:
        if w.alive:
            return
        live = self._live()
        w.alive, w.ready_at = True, self.now
        w.clock = min((o.clock for o in live), default=w.clock)   # rejoin at the slowest live clock
        self._log_event("worker_rejoined", w.index)
        if self.rounds:
            if not self.barrier.expected:              # everyone was dead: start a fresh round
                self._start_sync_round()
            # otherwise it joins at the next round
        else:
            self._start(w)

    def _maybe_corrupt(self, w: SimWorker, grad: torch.Tensor) -> torch.Tensor:
        """Fault injection (``corrupt``): a faulty worker sends NaN gradients with some probability."""
        rate = self.cfg.corrupt.get(w.index, 0.0)
        if rate > 0 and self.timing.rng.random() < rate:
            return torch.full_like(grad, math.nan)
        return grad

    def _log_event(self, what: str, worker: int, **extra: Any) -> None:
        self.recorder.event(what, worker, time_s=self.now, version=self.server.version, **extra)

    # ------------------------------------------------------------ progress

    @property
    def epoch(self) -> float:
        return self.samples / self.num_train

    @property
    def finished(self) -> bool:
        """Training is over: enough samples consumed (the epoch cap), the target or the budget reached
        (:mod:`dcasgd.engine.budget`), or the model diverged."""
        return self.diverged or self.samples >= self.target_samples or self.recorder.stop.ended_by is not None

    @property
    def stop_requested(self) -> bool:
        """Stop early with a checkpoint (``stop_after_updates``, or a worker over ``max_refused``)."""
        cfg = self.cfg
        return bool((cfg.stop_after_updates and self.server.version >= cfg.stop_after_updates) or
                    (cfg.max_refused and int(self.server.refused.max()) >= cfg.max_refused))

    def _after_update(self) -> None:
        if cfg_every := self.cfg.checkpoint_every:
            self._checkpoint_due = self._checkpoint_due or self.server.version % cfg_every == 0
        if self.recorder.evaluation_due(self.epoch) or self.finished:
            self._evaluate()
        self.recorder.show_progress(self.epoch, self.server.version)

    def _evaluate(self) -> None:
        self.recorder.evaluate(self.server.weights, self.server_buffers, version=self.server.version,
                               epoch=self.epoch, time_s=self.now, lr=self.server.lr)

    # ------------------------------------------------------------ main loop

    def run(self) -> SimResult:
        """Simulate to the end (or a stop); write the summary.  A run that fails (the user's code raised,
        the disk filled) still writes a summary saying so (``outcome: "failed"``), then raises."""
        try:
            resume = self._load_resume(self.ctx.resume_dir) if self.ctx.resume_dir is not None else None
            open_run_dir(self.ctx)                         # (after the checkpoint's checks: bad input writes nothing)
            try:
                return self._run(resume)
            except RunFailed as exc:
                self._write_failure(exc)
                raise
        finally:
            if self.pool is not None:
                self.pool.close()

    def _run(self, resume: tuple[Path, dict[str, Any]] | None) -> SimResult:
        cfg = self.cfg
        if resume is not None:
            self._resume(self.ctx.resume_dir, *resume)
        else:
            self._open_trace(append=False)
            self.recorder.open(lr=lambda: self.server.lr)
            self._evaluate()                               # error at epoch 0
            for worker, at, rejoin in cfg.failures:
                self._schedule(at, FAIL, worker)
                if rejoin is not None:
                    self._schedule(rejoin, REJOIN, worker)
            if self.rounds:
                self._start_sync_round()
            elif self.consistency.mode == "rennala":
                self._start_rennala_step()
            else:
                for w in self.workers:
                    self._start(w)
        handlers = {FINISH: self._on_finish, FAIL: self._on_fail, REJOIN: self._on_rejoin}
        with watching():                                   # a signal only asks the loop to stop
            while self.events and not (self.finished or self.stop_requested or STOP.requested):
                if self._checkpoint_due:                       # between events: a clean cut
                    self._save_checkpoint()
                if self.recorder.stop.over_budget(self.events[0].time):
                    self.now = cfg.time_budget                 # the budget ends before the next event
                    self.recorder.stop.end_at_budget()
                    break
                event = heapq.heappop(self.events)
                w = self.workers[event.worker]
                if event.kind == FINISH and (not w.alive or event.generation != w.generation):
                    continue                                   # the worker died while computing
                self.now = event.time
                handlers[event.kind](w)
        outcome = self._outcome()
        if outcome in ("stopped", "max_refused", "interrupted"):
            if outcome != "interrupted" or (cfg.checkpoint_every and self.ctx.out is not None):
                self._save_checkpoint()
            self._log_event("stopped_early", -1, reason={"max_refused": "max_refused",
                                                         "interrupted": signal_name(STOP.signum)}.get(
                                                             outcome, "stop_after_updates"))
        elif outcome == "no_live_workers":
            self._log_event("stopped_no_live_workers", -1)
        for w in self.workers:
            self._trace_cycle(w)                           # the cycles still in flight (after the checkpoint)
        if self.diverged:
            self.recorder.mark_diverged(self.server.version)
        last = self.recorder.evals[-1]
        if last["version"] != self.server.version or (self.recorder.stop.ended_by == "time_budget"
                                                      and last["time_s"] < self.now):
            self._evaluate()                               # (under a budget: an evaluation at the budget)
        self.recorder.show_progress(self.epoch, self.server.version, force=True)
        self.recorder.close()
        if self.trace is not None:
            self.trace.close()
        summary = write_summary(self.ctx.out, self._summary(outcome))
        return SimResult(summary, self.server.weights.clone(), self.server_buffers.clone(),
                         self.recorder.metrics.records)

    def _summary(self, outcome: str, **extra: Any) -> dict[str, Any]:
        return self.recorder.summary(
            updates=self.server.version, gradients=self.gradients, epoch=self.epoch, outcome=outcome,
            backend="sim", sim_time_s=self.now, refused_per_worker=self.server.refused.tolist(),
            clipped_updates=self.server.clipped, speeds=self.timing.speed,
            server_bytes_per_param=self.server.bytes_per_param(),
            stopped_early=outcome in ("stopped", "max_refused", "interrupted"),
            **self._dropped_jobs(),
            **({"probe": self.probe.summary()} if hasattr(self.probe, "summary") else {}),
            **self.resume_record, **extra)

    def _write_failure(self, exc: RunFailed) -> None:
        """Best effort: a summary that says the run failed and why (the disk may be what failed)."""
        closers = [self.recorder.close if self.recorder.metrics is not None else None,
                   self.trace.close if self.trace is not None else None,
                   lambda: write_summary(self.ctx.out, self._summary("failed", error=str(exc),
                                                                     error_type=type(exc).__name__))]
        for close in filter(None, closers):           # each on its own: one failing leaves the others to try
            try:
                close()
            except (RunFailed, OSError):
                pass

    def _dropped_jobs(self) -> dict[str, Any]:
        """Summary fields of the modes that drop jobs: counts per worker and the simulated seconds spent."""
        if not self.consistency.drops_jobs:
            return {}
        return {"discarded_per_worker": list(self.discarded), "cancelled_per_worker": list(self.cancelled),
                "wasted_s_per_worker": [round(s, 9) for s in self.wasted_s]}

    def _outcome(self) -> str:
        """How the run ended (:data:`dcasgd.engine.context.OUTCOMES`)."""
        cfg = self.cfg
        if self.diverged:
            return "diverged"
        if not self.finished and self.stop_requested:
            return "max_refused" if cfg.max_refused and int(self.server.refused.max()) >= cfg.max_refused \
                else "stopped"
        if not self.finished and STOP.requested:
            return "interrupted"
        return "finished" if self.finished else "no_live_workers"

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the run depends on; with it a resumed run is bit-identical."""
        self.metrics.flush()
        return {
            "format": SIM_STATE_FORMAT,
            "config": self.cfg.to_dict(),
            "server": self.server.state_dict(),
            "server_buffers": self.server_buffers.clone(),
            "workers": [{"weights": None if w.weights is None else w.weights.clone(), "buffers": w.buffers,
                         "base_version": w.base_version, "clock": w.clock, "start_clock_gap": w.start_clock_gap,
                         "alive": w.alive, "generation": w.generation, "waiting_since": w.waiting_since,
                         "ready_at": w.ready_at, "cycle": w.cycle, "started_at": w.started_at,
                         "stream": w.stream.state_dict()} for w in self.workers],
            "events": [[e.time, e.seq, e.kind, e.worker, e.generation] for e in self.events],
            "barrier": {"expected": sorted(self.barrier.expected), "received": list(self.barrier.received),
                        "total": self.barrier.total, "quorum": self.barrier.quorum},
            "batch": self.batch.state_dict(),
            "dropped": {"discarded": list(self.discarded), "cancelled": list(self.cancelled),
                        "wasted_s": list(self.wasted_s)},
            "timing": {"rng": json.dumps(self.timing.rng.bit_generator.state), "drawn": list(self.timing.drawn)},
            "recorder": json.dumps(self.recorder.state_dict()),
            "probe": self.probe.state_dict() if hasattr(self.probe, "state_dict") else None,
            "scalars": {"seq": self.seq, "now": self.now, "samples": self.samples, "gradients": self.gradients},
            "metrics": self.metrics.mark(),             # length and SHA-256 of metrics.jsonl, fsynced first
            "trace": self.trace.mark() if self.trace is not None else None,
            "run_id": self.ctx.run_id,
            "torch_threads": torch.get_num_threads(),
            "torch_threads_history": self.threads_history + [torch.get_num_threads()],
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("format") != SIM_STATE_FORMAT:
            raise CheckpointError(f"not a simulator checkpoint of this version (format {sd.get('format')!r}, "
                                  f"expected {SIM_STATE_FORMAT!r})")
        self.server.load_state_dict(sd["server"])
        self.server_buffers = sd["server_buffers"]
        for w, ws in zip(self.workers, sd["workers"], strict=True):
            w.weights, w.buffers, w.base_version = ws["weights"], ws["buffers"], ws["base_version"]
            w.clock, w.start_clock_gap, w.alive = ws["clock"], ws["start_clock_gap"], ws["alive"]
            w.generation, w.waiting_since = ws["generation"], ws["waiting_since"]
            w.ready_at, w.cycle, w.started_at = ws.get("ready_at", 0.0), ws.get("cycle"), ws.get("started_at", 0.0)
            w.stream.load_state_dict(ws["stream"])
        self.events = [Event(*e) for e in sd["events"]]
        heapq.heapify(self.events)
        self.barrier.expected = set(sd["barrier"]["expected"])
        self.barrier.received = list(sd["barrier"]["received"])
        self.barrier.total = sd["barrier"]["total"]
        self.barrier.quorum = sd["barrier"].get("quorum")
        if "batch" in sd:
            self.batch.load_state_dict(sd["batch"])
            dropped = sd["dropped"]
            self.discarded, self.cancelled = list(dropped["discarded"]), list(dropped["cancelled"])
            self.wasted_s = list(dropped["wasted_s"])
        self.timing.rng.bit_generator.state = json.loads(sd["timing"]["rng"])
        self.timing.drawn = list(sd["timing"]["drawn"])
        self.recorder.load_state_dict(json.loads(sd["recorder"]))
        if sd["probe"] is not None and hasattr(self.probe, "load_state_dict"):
            self.probe.load_state_dict(sd["probe"])
        for key, value in sd["scalars"].items():
            setattr(self, key, value)

    def _save_checkpoint(self) -> None:
        save_checkpoint(self.ctx.out / "checkpoints", self.state_dict(), self.server.version,
                        keep=self.cfg.keep_checkpoints)
        self._checkpoint_due = False

    def _load_resume(self, directory: Path) -> tuple[Path, dict[str, Any]]:
        """The newest good checkpoint of ``directory``, checked to belong to this run (nothing written)."""
        path, sd = load_resume_checkpoint(directory)
        check_resumable(sd.get("config", {}), self.cfg, path)
        check_same_run(sd.get("run_id"), directory, path)
        if sd.get("format") != SIM_STATE_FORMAT:
            raise CheckpointError(f"checkpoint {path}: not a simulator checkpoint of this version (format "
                                  f"{sd.get('format')!r}, expected {SIM_STATE_FORMAT!r})")
        return path, sd

    def _resume(self, directory: Path, path: Path, sd: dict[str, Any]) -> None:
        """Continue from checkpoint ``sd``; cut metrics.jsonl back to the length it recorded.

        The metrics file must still hold the bytes the checkpoint recorded; when it does not (its tail
        was lost in a crash, or it was truncated), resuming in place is refused, and a resume into a new
        ``--out`` starts a fresh history there from the checkpoint instead of inventing bytes.
        """
        check_thread_count(sd.get("torch_threads"), path)
        self.load_state_dict(sd)
        self.threads_history = list(sd.get("torch_threads_history") or [])
        if any(count != torch.get_num_threads() for count in self.threads_history):
            self.resume_record["torch_threads_history"] = self.threads_history + [torch.get_num_threads()]
        self._continue_histories(directory, path, sd)
        self._open_trace(append=True)
        self.recorder.open(lr=lambda: self.server.lr, append=True)

    def _continue_histories(self, directory: Path, path: Path, sd: dict[str, Any]) -> None:
        """metrics.jsonl and trace.jsonl go on from the bytes the checkpoint recorded (length and SHA-256).

        When a file no longer holds them, resuming in place is refused; a resume into a new ``--out``
        starts both files afresh there (``history_from_version`` in the summary).
        """
        marks = {"metrics.jsonl": sd.get("metrics") or {"bytes": sd["metrics_bytes"], "sha256": None},
                 "trace.jsonl": sd.get("trace") or (None if sd.get("trace_bytes") is None
                                                    else {"bytes": sd["trace_bytes"], "sha256": None})}
        marks = {name: mark for name, mark in marks.items() if mark is not None}
        problems = [p for p in (metrics_prefix_problem(directory / name, mark) for name, mark in marks.items()) if p]
        if directory.resolve() == self.ctx.out.resolve():
            if problems:
                raise CheckpointError(f"cannot resume {directory} in place: {problems[0]}; to go on from checkpoint "
                                      f"{path.name} with a fresh history, resume into a new directory: "
                                      f"dcasgd train --resume {shlex.quote(str(directory))} --out NEW")
            for name, mark in marks.items():
                with open(directory / name, "r+b") as f:
                    f.truncate(mark["bytes"])
        elif problems:
            print(f"dcasgd: warning: {problems[0]}; {self.ctx.out} starts a fresh history at the checkpoint "
                  f"(version {self.server.version})", file=sys.stderr)
            for name in marks:
                (self.ctx.out / name).write_bytes(b"")
            self.resume_record["history_from_version"] = self.server.version
        else:
            for name, mark in marks.items():
                with open(directory / name, "rb") as f:
                    (self.ctx.out / name).write_bytes(f.read(mark["bytes"]))

    def _open_trace(self, append: bool) -> None:
        if self.ctx.out is not None:
            self.trace = MetricsWriter(self.ctx.out / "trace.jsonl", append=append)


def run_sim(cfg: TrainConfig, probe: Any = None, task: Any = None) -> SimResult:
    """Check ``cfg``, load the data (or use ``task``), simulate, write metrics.jsonl and summary.json."""
    return Simulator(prepare_run(cfg, task), probe=probe).run()
