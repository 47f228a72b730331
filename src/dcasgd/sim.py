"""A deterministic event-driven cluster in one process.

M workers share one :class:`~dcasgd.server.ServerCore`.  Every gradient is
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

Consistency (``consistency.py``): ``async`` applies each push on arrival;
``ssp:S`` holds a worker whose clock is more than S ahead of the slowest live
worker's until the slowest catches up (the wait is simulated time, counted
per worker); ``sync`` starts a round with every live worker at the same
weights and applies the average of their gradients when the slowest finishes.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import TrainConfig
from .errors import InputError
from .consistency import SyncBarrier, parse_consistency
from .flat import FlatModel
from .kernels import all_finite
from .run import RunContext, advance_eval_mark, check_resumable, load_resume_checkpoint, open_run_dir, prepare_run, write_summary
from .checkpoint import CheckpointError, save_checkpoint
from .probe import CompensationProbe
from .server import NonFiniteUpdate, PushRejected, ServerCore
from .telemetry import Progress, StalenessStats
from .tensorboard import open_metrics
from .worker import BatchStream, compute_gradient, evaluate

FINISH, FAIL, REJOIN = "finish", "fail", "rejoin"
SIM_STATE_FORMAT = "dcasgd.sim/1"


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


def worker_speeds(cfg: TrainConfig, rng: np.random.Generator | None = None) -> list[float]:
    """Each worker's compute-time multiplier, ``speed[m] * straggler[m]`` (dimensionless, 1 = nominal).

    ``speed`` is ``--speeds``, else ``exp(hetero_sigma * z_m)`` with ``z ~ N(0, 1)``
    drawn from ``rng`` (a fresh ``default_rng(cfg.seed)`` if none: the same
    draw the simulator makes first), else 1.  The Ray backend emulates the
    same speeds by slowing its workers down.
    """
    if cfg.speeds:
        speed = [float(s) for s in cfg.speeds]
    elif cfg.hetero_sigma > 0:
        rng = np.random.default_rng(cfg.seed) if rng is None else rng
        speed = [float(s) for s in np.exp(cfg.hetero_sigma * rng.standard_normal(cfg.workers))]
    else:
        speed = [1.0] * cfg.workers
    for worker, factor in cfg.stragglers.items():
        speed[worker] *= factor
    return speed


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


@dataclass(order=True)
class Event:
    time: float
    seq: int
    kind: str = field(compare=False)
    worker: int = field(compare=False)
    generation: int = field(compare=False, default=0)


class Simulator:
    """Runs one training job on the simulated cluster; :meth:`run` returns the summary."""

    def __init__(self, ctx: RunContext, probe: Any = None) -> None:
        cfg = self.cfg = ctx.cfg
        self.ctx = ctx
        self.consistency = parse_consistency(cfg.consistency)
        data = ctx.data
        self.flat = FlatModel(ctx.model)
        self.server = ServerCore(self.flat.params, cfg.rule, cfg.workers, cfg.lr,
                                 backup_dtype=getattr(torch, cfg.backup_dtype), clip_norm=cfg.clip_norm,
                                 **cfg.rule_params())
        self.server_buffers = self.flat.buffers.clone()   # BatchNorm statistics: the latest pushed
        self._backup_is_pulled_copy = self.server.backups is not None and self.server.backups.dtype == torch.float32
        n = len(data.train_y)
        self.workers = [SimWorker(m, BatchStream(n, m, cfg.workers, cfg.batch_size, cfg.seed))
                        for m in range(cfg.workers)]
        self.timing = Timing(cfg)
        self.barrier = SyncBarrier()
        self.stats = StalenessStats(cfg.workers)
        self.probe = probe if probe is not None else CompensationProbe.from_config(cfg)
        self.events: list[Event] = []
        self.seq = 0
        self.now = 0.0
        self.samples = 0                     # training samples consumed by applied gradients
        self.gradients = 0                   # gradients computed and pushed
        self.target_samples = math.ceil(cfg.epochs * n)
        self.next_eval_epoch = 0.0
        self.loss_sum, self.loss_count = 0.0, 0
        self.last_error: float | None = None
        self.evals: list[dict[str, Any]] = []
        self.events_log: list[dict[str, Any]] = []
        self.diverged = False
        self.eval_wall_s = 0.0                # wall seconds spent evaluating (not training)
        self._checkpoint_due = False

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

    def _gradient(self, w: SimWorker):
        batch = w.stream.next()
        key = ((self.cfg.seed * 1_000_003 + w.index) * 1_000_003 + w.clock) % (2**63)
        data = self.ctx.data
        x, y = data.train_x.index_select(0, batch), data.train_y.index_select(0, batch)   # (5x x[batch])
        # views, not copies, when nothing else computes on the model before the push (no probe)
        result = compute_gradient(self.flat, w.weights, w.buffers, x, y, key, copy=self.probe is not None)
        return result, (x, y, key)

    def _on_finish(self, w: SimWorker) -> None:
        result, batch = self._gradient(w)
        if not all_finite(result.grad):
            self.diverged = True                           # the model blew up: a result, not an error
            self._log_event("diverged", w.index)
            return
        self.gradients += 1
        self.samples += len(batch[1])
        self.loss_sum += result.loss
        self.loss_count += 1
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
            self.diverged = True
            self._log_event("diverged", w.index, reason=str(exc))
            return False
        except PushRejected as exc:
            self._log_event("push_refused", w.index, reason=str(exc))
            self._start(w)
            return False
        return True

    def _finish_sync_round(self) -> None:
        first = min(self.barrier.received)
        self.server.lr = self.ctx.schedule(self.epoch)
        try:
            self.server.push(first, self.barrier.average(), self.workers[first].base_version)
        except NonFiniteUpdate as exc:
            self.diverged = True
            self._log_event("diverged", first, reason=str(exc))
            return
        for m in self.barrier.received:
            self.stats.add_wait(m, self.now - self.workers[m].waiting_since)
            self.workers[m].waiting_since = None
        self._after_update()
        if not self.finished:
            self._start_sync_round()

    def _record_update(self, w: SimWorker, staleness: int, loss: float, clock: int) -> None:
        self.stats.record(w.index, staleness)
        self.metrics.write("update", version=self.server.version + (self.consistency.mode == "sync"),
                           worker=w.index, staleness=staleness, loss=loss, time_s=self.now,
                           epoch=self.epoch, clock=clock, clock_gap=w.start_clock_gap)

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
        record = {"event": what, "worker": worker, "time_s": self.now, "version": self.server.version, **extra}
        self.events_log.append(record)
        self.metrics.write("event", **record)

    # ------------------------------------------------------------ progress

    @property
    def epoch(self) -> float:
        return self.samples / len(self.ctx.data.train_y)

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
        if self.epoch + 1e-12 >= self.next_eval_epoch or self.finished:
            self._evaluate()
        self.progress.update(self.epoch, self.loss_sum / max(1, self.loss_count) if self.loss_count else math.nan,
                             self.last_error, self.server.version, self.stats)

    def _evaluate(self) -> None:
        started = time.perf_counter()
        error, test_loss = evaluate(self.flat, self.server.weights, self.server_buffers,
                                    self.ctx.eval_x, self.ctx.eval_y)
        self.eval_wall_s += time.perf_counter() - started
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        record = {"epoch": self.epoch, "version": self.server.version, "time_s": self.now,
                  "wall_s": time.perf_counter() - self.wall_start, "test_error": error, "test_loss": test_loss,
                  "train_loss": train_loss, "lr": self.server.lr}
        self.metrics.write("eval", **{k: v for k, v in record.items() if k != "wall_s"})
        self.metrics.write("staleness", version=self.server.version, **self.stats.summary())
        self.metrics.flush()
        self.evals.append(record)
        self.last_error = error
        self.loss_sum, self.loss_count = 0.0, 0
        self.next_eval_epoch = advance_eval_mark(self.next_eval_epoch, self.epoch, self.cfg.eval_every)

    # ------------------------------------------------------------ main loop

    def run(self) -> SimResult:
        cfg = self.cfg
        self.wall_start = time.perf_counter()
        self.progress = Progress(cfg.epochs, enabled=cfg.progress)
        open_run_dir(self.ctx)
        if self.ctx.resume_dir is not None:
            self._resume(self.ctx.resume_dir)
        else:
            self.metrics = open_metrics(self.ctx.out / "metrics.jsonl", cfg.tensorboard, lr=lambda: self.server.lr)
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
        stopped_early = not self.finished and self.stop_requested
        if self.diverged:
            outcome = "diverged"
        elif stopped_early:
            outcome = "max_refused" if cfg.max_refused and int(self.server.refused.max()) >= cfg.max_refused \
                else "stopped"
            self._save_checkpoint()
            self._log_event("stopped_early", -1, reason="max_refused" if outcome == "max_refused"
                            else "stop_after_updates")
        elif not self.finished:
            outcome = "no_live_workers"
            self._log_event("stopped_no_live_workers", -1)
        else:
            outcome = "finished"
        if self.diverged:
            self.last_error = 100.0 * (1 - 1 / self.ctx.data.num_classes)  # chance level
            self.evals.append({**self.evals[-1], "version": self.server.version, "test_error": self.last_error})
        if self.evals[-1]["version"] != self.server.version:
            self._evaluate()
        self.progress.update(self.epoch, self.evals[-1]["train_loss"] or math.nan, self.last_error,
                             self.server.version, self.stats, force=True)
        self.progress.close()
        self.metrics.close()
        summary = self._summary()
        summary["stopped_early"] = stopped_early
        summary["outcome"] = outcome
        write_summary(self.ctx.out, summary)
        return SimResult(summary, self.server.weights.clone(), self.server_buffers.clone())

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the run depends on; with it a resumed run is bit-identical."""
        self.metrics.flush()
        return {
            "format": SIM_STATE_FORMAT,
            "config": self.cfg.to_dict(),
            "server": self.server.state_dict(),
            "server_buffers": self.server_buffers.clone(),
            "workers": [{"weights": None if w.weights is None else w.weights.clone(), "buffers": w.buffers, "base_version": w.base_version,
                         "clock": w.clock, "start_clock_gap": w.start_clock_gap, "alive": w.alive,
                         "generation": w.generation, "waiting_since": w.waiting_since,
                         "stream": w.stream.state_dict()} for w in self.workers],
            "events": [[e.time, e.seq, e.kind, e.worker, e.generation] for e in self.events],
            "barrier": {"expected": sorted(self.barrier.expected), "received": list(self.barrier.received),
                        "total": self.barrier.total},
            "timing": {"rng": json.dumps(self.timing.rng.bit_generator.state), "drawn": list(self.timing.drawn)},
            "stats": self.stats.state_dict(),
            "probe": self.probe.state_dict() if hasattr(self.probe, "state_dict") else None,
            "scalars": {"seq": self.seq, "now": self.now, "samples": self.samples, "gradients": self.gradients,
                        "next_eval_epoch": self.next_eval_epoch, "loss_sum": self.loss_sum,
                        "loss_count": self.loss_count, "last_error": self.last_error, "diverged": self.diverged},
            "evals": json.dumps(self.evals),
            "events_log": json.dumps(self.events_log),
            "metrics_bytes": self.metrics.tell(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("format") != SIM_STATE_FORMAT:
            raise CheckpointError("not a simulator checkpoint (wrong or missing 'format')")
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
        self.stats.load_state_dict(sd["stats"])
        if sd["probe"] is not None and hasattr(self.probe, "load_state_dict"):
            self.probe.load_state_dict(sd["probe"])
        for key, value in sd["scalars"].items():
            setattr(self, key, value)
        self.evals = json.loads(sd["evals"])
        self.events_log = json.loads(sd["events_log"])

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
        self.metrics = open_metrics(metrics_path, self.cfg.tensorboard, lr=lambda: self.server.lr, append=True)
        self._log_resumed = str(path)

    def _summary(self) -> dict[str, Any]:
        staleness = self.stats.summary()
        return {
            "final_test_error": self.last_error,
            "eval_split": self.cfg.eval_split,
            "diverged": self.diverged,
            "updates": self.server.version,
            "gradients": self.gradients,
            "epochs_done": self.epoch,
            "mean_staleness": staleness["overall"]["mean"],
            "max_staleness": staleness["overall"]["max"],
            "wall_time_s": time.perf_counter() - self.wall_start,
            "eval_wall_s": self.eval_wall_s,
            "sim_time_s": self.now,
            "staleness": staleness,
            "pushes_per_worker": staleness["pushes_per_worker"],
            "refused_per_worker": self.server.refused.tolist(),
            "clipped_updates": self.server.clipped,
            "worker_events": self.events_log,
            "speeds": self.timing.speed,
            "curve": [{k: r[k] for k in ("epoch", "time_s", "test_error")} for r in self.evals],
            "backend": "sim",
            "ignored_settings": self.ctx.ignored_settings,
            "config": self.cfg.to_dict(),
            "server_bytes_per_param": self.server.bytes_per_param(),
            **({"probe": self.probe.summary()} if hasattr(self.probe, "summary") else {}),
        }


def run_sim(cfg: TrainConfig, probe: Any = None) -> SimResult:
    """Validate ``cfg``, load data, simulate, write metrics.jsonl and summary.json."""
    return Simulator(prepare_run(cfg), probe=probe).run()
