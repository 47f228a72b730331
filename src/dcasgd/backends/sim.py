"""A deterministic event-driven cluster in one process.

M workers share one :class:`~dcasgd.core.server.ServerCore`.  Every gradient is
real: worker m computes it on its own mini-batch at exactly the weights it
pulled; only the clock is simulated.  One gradient cycle of worker m takes::

    comm_time (pull) + compute_time(m) + comm_time (push)        simulated seconds
    compute_time(m) = base_time * speed[m] * straggler[m] * exp(jitter * z),  z ~ N(0, 1)

where ``speed`` comes from ``--speeds`` or is drawn ``exp(hetero_sigma * z)``
per worker, and ``z`` is drawn from a numpy Generator seeded by the run's
seed, so a seed fixes every bit.  ``--replay FILE`` takes compute times from
a recorded trace instead (see :func:`load_trace`).

An event queue orders finish, failure and rejoin events by (time, sequence
number); ties go to the earlier-scheduled event, so equal-speed workers run
round robin and async staleness settles at exactly M-1.

Consistency (:mod:`dcasgd.core.consistency`): ``async`` applies each push on arrival;
``ssp:S`` holds a worker whose clock is more than S ahead of the slowest live
worker's until the slowest catches up (the wait is simulated time, counted
per worker); ``sync`` starts a round with every live worker at the same
weights and applies the average of their gradients when the slowest finishes.

Batches: worker m's indices come from its :class:`~dcasgd.compute.worker.BatchStream`;
tensor data without augmentation or a ``step_fn`` is index-selected inline
(:meth:`Simulator._gradient`, the path every committed run was made with), anything
else goes through a :class:`~dcasgd.compute.batches.BatchReader` per worker (a lazy
Dataset, seeded transforms, ``loader_workers`` processes shared by all workers).

What is the simulator's own: the event heap, the clock and the timing model.
Evaluations, metrics lines, staleness statistics, events and the summary go
through the shared :class:`~dcasgd.engine.recorder.Recorder`.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..compute.batches import BatchReader, DatasetSource, LoaderPool
from ..compute.flat import FlatModel
from ..compute.worker import BatchStream, compute_gradient, compute_step, gradient_key
from ..config import TrainConfig
from ..core.consistency import SyncBarrier, parse_consistency
from ..core.kernels import all_finite
from ..core.server import NonFiniteUpdate, PushRejected, ServerCore
from ..errors import InputError
from ..engine.context import RunContext, open_run_dir, prepare_run, write_summary
from ..engine.probe import CompensationProbe
from ..engine.recorder import Recorder
from ..engine.resume import check_resumable, load_resume_checkpoint
from ..engine.speeds import worker_speeds
from ..io.checkpoint import CheckpointError, save_checkpoint

FINISH, FAIL, REJOIN = "finish", "fail", "rejoin"
SIM_STATE_FORMAT = "dcasgd.sim/2"


class TraceError(InputError):
    """A replay trace that is missing, malformed or lacks a worker."""


def load_trace(path: str | Path, num_workers: int) -> list[list[float]]:
    """Per-worker compute durations from a JSONL trace.

    Each line is an object with ``worker`` (int) and ``duration_s`` (compute
    seconds of one gradient, > 0); other keys (a Ray run also records
    ``seq``, ``base_version``, ``version``, ``staleness``, ``t_pull``,
    ``t_push``) are ignored.  Worker m's k-th gradient in the simulation takes
    its k-th recorded duration, cycling when the trace runs out.
    """
    durations: list[list[float]] = [[] for _ in range(num_workers)]
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"replay trace {path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise TraceError(f"replay trace {path}: not a text file of JSON lines") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            worker, duration = int(record["worker"]), float(record["duration_s"])
        except (ValueError, KeyError, TypeError):
            raise TraceError(f"replay trace {path}, line {number}: need an object with "
                             f"'worker' and 'duration_s'") from None
        if not 0 <= worker < num_workers or not (duration > 0 and math.isfinite(duration)):
            continue  # other workers of a larger run, or a marker line
        durations[worker].append(duration)
    missing = [m for m, d in enumerate(durations) if not d]
    if missing:
        raise TraceError(f"replay trace {path} has no durations for worker(s) {missing}")
    return durations


class Timing:
    """Compute time of each gradient: the model above, or a replayed trace."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.rng = np.random.default_rng(cfg.seed)
        self.speed = worker_speeds(cfg, self.rng)
        self.base_time, self.jitter = cfg.base_time, cfg.jitter
        self.trace = load_trace(cfg.replay, cfg.workers) if cfg.replay else None
        self.drawn = [0] * cfg.workers

    def compute_time(self, worker: int) -> float:
        k = self.drawn[worker]
        self.drawn[worker] += 1
        if self.trace is not None:
            return self.trace[worker][k % len(self.trace[worker])]
        noise = math.exp(self.jitter * self.rng.standard_normal()) if self.jitter > 0 else 1.0
        return self.base_time * self.speed[worker] * noise


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
    generation: int = 0      # bumped on failure: invalidates the in-flight finish event
    waiting_since: float | None = None


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
        self.recorder = Recorder(ctx, self.flat)
        self.probe = probe if probe is not None else CompensationProbe.from_config(cfg)
        self.events: list[Event] = []
        self.seq = 0
        self.now = 0.0
        self.samples = 0                     # training samples consumed by applied gradients
        self.gradients = 0                   # gradients computed and pushed
        self.target_samples = math.ceil(cfg.epochs * n)
        self._checkpoint_due = False

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
        cycle = self.cfg.comm_time + self.timing.compute_time(w.index) + self.cfg.comm_time
        self._schedule(self.now + cycle, FINISH, w.index, w.generation)

    def _start_sync_round(self) -> None:
        live = self._live()
        self.barrier.start({w.index for w in live})
        for w in live:
            self._start(w)

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
        result = compute_step(self.flat, w.weights, w.buffers, batch, key, self.step, copy=self.probe is not None)
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
                                  loss_fn=self.loss_fn)
        return result, (x, y, key), len(batch)

    def _on_finish(self, w: SimWorker) -> None:
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
        if self.consistency.mode == "sync":
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
        self._after_update()
        if not self.finished:
            self._start_sync_round()

    def _record_update(self, w: SimWorker, staleness: int, loss: float, clock: int) -> None:
        self.recorder.update(version=self.server.version + (self.consistency.mode == "sync"), worker=w.index,
                             staleness=staleness, loss=loss, time_s=self.now, epoch=self.epoch, clock=clock,
                             clock_gap=w.start_clock_gap)

    def _on_fail(self, w: SimWorker) -> None:
        if not w.alive:
            return
        w.alive, w.generation, w.waiting_since = False, w.generation + 1, None
        self._log_event("worker_failed", w.index)
        if self.consistency.mode == "sync":
            self.barrier.drop(w.index)
            if self.barrier.complete:
                self._finish_sync_round()
        else:
            self._release_waiting()

    def _on_rejoin(self, w: SimWorker) -> None:
        if w.alive:
            return
        live = self._live()
        w.alive = True
        w.clock = min((o.clock for o in live), default=w.clock)   # rejoin at the slowest live clock
        self._log_event("worker_rejoined", w.index)
        if self.consistency.mode == "sync":
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
        """Training is over: enough samples consumed, or the model diverged."""
        return self.diverged or self.samples >= self.target_samples

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
        try:
            return self._run()
        finally:
            if self.pool is not None:
                self.pool.close()

    def _run(self) -> SimResult:
        cfg = self.cfg
        open_run_dir(self.ctx)
        if self.ctx.resume_dir is not None:
            self._resume(self.ctx.resume_dir)
        else:
            self.recorder.open(lr=lambda: self.server.lr)
            self._evaluate()                               # error at epoch 0
            for worker, at, rejoin in cfg.failures:
                self._schedule(at, FAIL, worker)
                if rejoin is not None:
                    self._schedule(rejoin, REJOIN, worker)
            if self.consistency.mode == "sync":
                self._start_sync_round()
            else:
                for w in self.workers:
                    self._start(w)
        handlers = {FINISH: self._on_finish, FAIL: self._on_fail, REJOIN: self._on_rejoin}
        while self.events and not (self.finished or self.stop_requested):
            if self._checkpoint_due:                       # between events: a clean cut
                self._save_checkpoint()
            event = heapq.heappop(self.events)
            w = self.workers[event.worker]
            if event.kind == FINISH and (not w.alive or event.generation != w.generation):
                continue                                   # the worker died while computing
            self.now = event.time
            handlers[event.kind](w)
        outcome = self._outcome()
        if outcome in ("stopped", "max_refused"):
            self._save_checkpoint()
            self._log_event("stopped_early", -1, reason="max_refused" if outcome == "max_refused"
                            else "stop_after_updates")
        elif outcome == "no_live_workers":
            self._log_event("stopped_no_live_workers", -1)
        if self.diverged:
            self.recorder.mark_diverged(self.server.version)
        if self.recorder.evals[-1]["version"] != self.server.version:
            self._evaluate()
        self.recorder.show_progress(self.epoch, self.server.version, force=True)
        self.recorder.close()
        summary = self.recorder.summary(
            updates=self.server.version, gradients=self.gradients, epoch=self.epoch, outcome=outcome,
            backend="sim", sim_time_s=self.now, refused_per_worker=self.server.refused.tolist(),
            clipped_updates=self.server.clipped, speeds=self.timing.speed,
            server_bytes_per_param=self.server.bytes_per_param(),
            stopped_early=outcome in ("stopped", "max_refused"),
            **({"probe": self.probe.summary()} if hasattr(self.probe, "summary") else {}))
        summary = write_summary(self.ctx.out, summary)
        return SimResult(summary, self.server.weights.clone(), self.server_buffers.clone(),
                         self.recorder.metrics.records)

    def _outcome(self) -> str:
        """How the run ended (:data:`dcasgd.engine.context.OUTCOMES`)."""
        cfg = self.cfg
        if self.diverged:
            return "diverged"
        if not self.finished and self.stop_requested:
            return "max_refused" if cfg.max_refused and int(self.server.refused.max()) >= cfg.max_refused \
                else "stopped"
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
                         "stream": w.stream.state_dict()} for w in self.workers],
            "events": [[e.time, e.seq, e.kind, e.worker, e.generation] for e in self.events],
            "barrier": {"expected": sorted(self.barrier.expected), "received": list(self.barrier.received),
                        "total": self.barrier.total},
            "timing": {"rng": json.dumps(self.timing.rng.bit_generator.state), "drawn": list(self.timing.drawn)},
            "recorder": json.dumps(self.recorder.state_dict()),
            "probe": self.probe.state_dict() if hasattr(self.probe, "state_dict") else None,
            "scalars": {"seq": self.seq, "now": self.now, "samples": self.samples, "gradients": self.gradients},
            "metrics_bytes": self.metrics.tell(),
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
            w.stream.load_state_dict(ws["stream"])
        self.events = [Event(*e) for e in sd["events"]]
        heapq.heapify(self.events)
        self.barrier.expected = set(sd["barrier"]["expected"])
        self.barrier.received = list(sd["barrier"]["received"])
        self.barrier.total = sd["barrier"]["total"]
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

    def _resume(self, directory: Path) -> None:
        """Load the newest good checkpoint of ``directory`` and cut metrics.jsonl back to its length."""
        path, sd = load_resume_checkpoint(directory)
        check_resumable(sd.get("config", {}), self.cfg, path)
        self.load_state_dict(sd)
        metrics_path = self.ctx.out / "metrics.jsonl"
        source = directory / "metrics.jsonl"
        if source.resolve() != metrics_path.resolve():
            metrics_path.write_bytes(source.read_bytes()[:sd["metrics_bytes"]])
        else:
            with open(metrics_path, "r+b") as f:
                f.truncate(sd["metrics_bytes"])
        self.recorder.open(lr=lambda: self.server.lr, append=True)


def run_sim(cfg: TrainConfig, probe: Any = None, task: Any = None) -> SimResult:
    """Check ``cfg``, load the data (or use ``task``), simulate, write metrics.jsonl and summary.json."""
    return Simulator(prepare_run(cfg, task), probe=probe).run()
