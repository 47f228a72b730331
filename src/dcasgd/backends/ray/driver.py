"""The driver: starts the actors, drains the update log, evaluates, checkpoints, watches the workers."""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import ray.exceptions
import torch

from ...compute.flat import FlatModel
from ...compute.task import Task, worker_task
from ...config import ConfigError, TrainConfig
from ...core.consistency import parse_consistency
from ...engine import signals
from ...errors import RunFailed, UserCodeError
from ...core.server import shard_ranges
from ...engine.context import RunContext, open_run_dir, prepare_run, write_summary
from ...engine.probe import CompensationProbe
from ...engine.recorder import Recorder
from ...engine.resume import check_resumable, check_same_run, load_resume_checkpoint
from ...engine.speeds import achieved_slowdowns, emulated_slowdowns, reference_workers
from ...engine.timing import trace_record
from ...io.checkpoint import CheckpointError, save_checkpoint
from .cluster import (SERVER_RESOURCE, WORKER_RESOURCE, RayBackendError, ServerLost, connect_or_explain,
                      local_ray_options, loopback_only)
from . import shm
from .shard import LeadServer, ServerShard
from .worker import RayWorker

CHECKPOINT_FORMAT = "dcasgd.ray/2"
RESTART_WAIT_S = 120.0                # how long a restarting worker may take before it counts as dead


@dataclass
class _Actors:
    shards: list[Any]
    coordinator: Any
    workers: list[Any]


@dataclass
class Instrumentation:
    """Hooks into a Ray run for tests, the soak test and benchmarks; a normal run uses none.

    - ``actor_options``: ``{"server": {...}, "worker": {...}}`` merged into the
      ``.options()`` of the server/coordinator actors and of the worker actors
      (e.g. ``{"resources": {"ps": 1}}`` to place them);
    - ``on_tick(run)``: called from the driver loop every ``tick_s`` seconds or so;
    - ``worker_hooks``: ``{m: hooks}`` for worker m (:class:`~dcasgd.backends.ray.worker.RayWorker`);
    - ``time_limit_s``: stop granting gradients after this many seconds of training
      (``stop_reason: "time_limit"``).
    """

    actor_options: dict[str, dict] = field(default_factory=dict)
    on_tick: Callable[["RayRun"], None] | None = None
    tick_s: float = 0.25
    worker_hooks: dict[int, dict[str, Any]] = field(default_factory=dict)
    time_limit_s: float | None = None


class RayRun:
    """One training job on Ray; :meth:`run` returns the summary (and writes summary.json).

    ``task`` is the user's model, data, loss and metric (default: the
    configuration's names); ``instrument`` hooks for tests (:class:`Instrumentation`).
    """

    def __init__(self, cfg: TrainConfig, task: Task | None = None, instrument: Instrumentation | None = None) -> None:
        self.cfg = cfg
        self.task = task
        self.instrument = instrument or Instrumentation()
        self.actor_options = self.instrument.actor_options
        self.on_tick = self.instrument.on_tick
        self.tick_s = self.instrument.tick_s
        self.worker_hooks = self.instrument.worker_hooks
        self.time_limit_s = self.instrument.time_limit_s
        self.actors: _Actors | None = None
        self.lr = cfg.lr                          # the server's lr at the last evaluation (TensorBoard)
        self.version = 0
        self.epoch = 0.0
        self.done = False
        self.shm_prefix = shm.run_prefix()                # the run's shared-memory files (same-node workers)
        self.final_weights: torch.Tensor | None = None    # the weights the final error was measured on
        self.final_buffers: torch.Tensor | None = None

    # ------------------------------------------------------------ setup

    def _check_device(self) -> None:
        if self.cfg.device != "cuda":
            return
        if self.cfg.address is None and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but torch.cuda.is_available() is False on this machine "
                              "(CPU-only torch build or no GPU); use --device cpu")

    def _load_resume(self) -> dict[str, Any] | None:
        run_dir = self.ctx.resume_dir
        if run_dir is None:
            return None
        path, state = load_resume_checkpoint(run_dir)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {path}: not a Ray-backend checkpoint (format "
                                  f"{state.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
        check_resumable(state["config"], self.cfg, path)
        check_same_run(state.get("run_id"), run_dir, path)
        state["path"] = str(path)
        state["lost_updates"] = max(0, _last_version_seen(run_dir) - int(state["version"]))
        return state

    def _connect(self, num_params: int, data_bytes: int) -> bool:
        """Connect to Ray; returns True when this run started (and so must stop) it."""
        if ray.is_initialized():
            return False
        if self.cfg.address:
            connect_or_explain(self.cfg.address, self.cfg.connect_timeout)
            ray.init(address=self.cfg.address, log_to_driver=True)
            return True
        loopback_only()
        ray.init(**local_ray_options(num_params, data_bytes, self.cfg.workers, self.cfg.servers))
        return True

    def _placement(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """.options() for server-side actors and for workers: resources, CPUs, GPUs."""
        cfg = self.cfg
        total = ray.cluster_resources()
        server: dict[str, Any] = {"num_cpus": 0}
        worker: dict[str, Any] = {}
        worker_cpus = total.get("CPU", 1.0)
        if total.get(SERVER_RESOURCE):
            server["resources"] = {SERVER_RESOURCE: 0.001}
        if total.get(WORKER_RESOURCE):
            worker["resources"] = {WORKER_RESOURCE: min(1.0, total[WORKER_RESOURCE] / cfg.workers)}
            worker_cpus = sum(n["Resources"].get("CPU", 0) for n in ray.nodes()
                              if n.get("Alive") and n["Resources"].get(WORKER_RESOURCE))
        worker["num_cpus"] = min(1.0, max(worker_cpus, 0.01) / cfg.workers)
        if cfg.device == "cuda":
            gpus = total.get("GPU", 0)
            if not gpus:
                raise ConfigError("device 'cuda' requested but the Ray cluster has no GPUs "
                                  "(ray start ... --num-gpus N on a machine with CUDA)")
            worker["num_gpus"] = min(1.0, gpus / cfg.workers)
        server.update(self.actor_options.get("server", {}))
        worker.update(self.actor_options.get("worker", {}))
        return server, worker

    def _start_actors(self, ctx: RunContext, flat: FlatModel, resume: dict[str, Any] | None) -> None:
        cfg = self.cfg
        server_opts, worker_opts = self._placement()
        init_ref = ray.put(flat.params.numpy())

        def shard_args(k: int) -> dict[str, Any]:
            start, end = self.ranges[k]
            return {"weights": init_ref, "rule": cfg.rule, "num_workers": cfg.workers, "lr": cfg.lr,
                    "start": start, "end": end, "index": k, "rule_params": cfg.rule_params(),
                    "backup_dtype": cfg.backup_dtype, "clip_norm": cfg.clip_norm, "consistency": cfg.consistency,
                    "schedule": ctx.schedule,
                    "num_train": ctx.data.num_train, "log_updates": k == 0, "buffers": flat.buffers.numpy()}

        coordinator_args = {"num_workers": cfg.workers, "consistency": cfg.consistency,
                            "target_samples": self.target_samples, "stop_after_updates": cfg.stop_after_updates,
                            "checkpoint_every": cfg.checkpoint_every, "max_refused": cfg.max_refused,
                            "start": dict(resume["coordinator"]) if resume else None,
                            "probe_every": cfg.probe_every, "num_train": ctx.data.num_train,
                            "reference_workers": reference_workers(cfg)}
        # a nested ObjectRef is not resolved for us: shard 0 gets the array itself
        lead = ray.remote(LeadServer).options(max_restarts=0, **server_opts).remote(
            {**shard_args(0), "weights": flat.params.numpy()}, coordinator_args, self.shm_prefix)
        shard_cls = ray.remote(ServerShard)
        shards = [lead] + [shard_cls.options(max_restarts=0, **server_opts).remote(**shard_args(k))
                           for k in range(1, cfg.servers)]
        if resume is not None:
            ray.get([s.load_state.remote(sd) for s, sd in zip(shards, resume["shards"])])
        coordinator = lead
        # the user's tensors go through the object store (zero-copy on one node); built-in data sets are
        # read from each worker's own disk, and a lazy Dataset travels as itself (or its factory) in the task
        x_ref = y_ref = None
        if self.worker_task.make_source is None:
            x_ref, y_ref = ray.put(ctx.data.train_x.numpy()), ray.put(ctx.data.train_y.numpy())
        worker_cls = ray.remote(RayWorker)
        task_ref = ray.put(self.worker_task)                                # cloudpickled once for all workers
        workers = [worker_cls.options(max_restarts=cfg.worker_restarts, max_task_retries=0, **worker_opts).remote(
            m, cfg, x_ref, y_ref, task_ref, shards, self.ranges, coordinator, self.worker_hooks.get(m))
            for m in range(cfg.workers)]
        self.actors = _Actors(shards, coordinator, workers)
        self._keep = (init_ref, x_ref, y_ref, task_ref)   # constructor arguments a restarted worker needs again
        try:
            infos = ray.get([s.info.remote() for s in shards], timeout=600)
            self.placement = {"servers": [i["node_id"] for i in infos],
                              "workers": ray.get([w.node_id.remote() for w in workers], timeout=600)}
        except ray.exceptions.GetTimeoutError:
            raise RayBackendError(f"the actors could not be placed within 600 s: the cluster lacks the CPUs/GPUs "
                                  f"or resources asked for (server {server_opts}, worker {worker_opts})") from None
        except ray.exceptions.RayActorError as exc:
            raise RayBackendError(f"an actor failed to start: {exc}") from None
        self.server_bytes = sum(i["bytes"] for i in infos)
        self.pause_for_eval = ray.get_runtime_context().get_node_id() in self.placement["workers"]
        self.eval_pause_s, self.eval_pauses = 0.0, 0         # seconds training stood still for evaluations; how often
        self.ckpt_pauses = 0                                  # checkpoint pauses taken (the coordinator numbers them)
        self.t0 = time.time() - self.elapsed_before       # time_s: wall seconds of training (continued on resume)

    # ------------------------------------------------------------ main

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._check_device()
        ctx = self.ctx = prepare_run(cfg, self.task)
        resume = self._load_resume()
        data = ctx.data
        self.flat = FlatModel(ctx.model)
        self.recorder = Recorder(ctx, self.flat)
        self.recorder.eval_threads = 1           # the workers own the cores; OpenMP spinning costs 10x
        self.target_samples = math.ceil(cfg.epochs * data.num_train)
        self.worker_task = worker_task(ctx.task, cfg)
        try:                                               # bad input fails here, before Ray starts
            self.ranges = shard_ranges(self.flat.tensor_sizes, cfg.servers)
        except ValueError as exc:
            raise ConfigError(f"servers: {exc}") from None
        self._init_bookkeeping(resume)
        data_bytes = 0 if self.worker_task.make_source else data.train_x.numel() * 4 + data.train_y.numel() * 8
        owns_ray = self._connect(self.flat.num_params, data_bytes)
        signals.install()                    # Ray's start-up replaced the SIGTERM handler with its own
        try:
            self._start_actors(ctx, self.flat, resume)
            self._open_outputs(resume)
            try:
                with signals.watching():         # a signal only asks the loop to stop granting
                    self._loop()
            except ServerLost as exc:
                self._server_lost(exc)
                raise
            except RunFailed as exc:
                self._failed(exc)
                raise
            summary = self._finish()
        finally:
            self._close_outputs()
            self._stop_actors()
            shm.remove(self.shm_prefix)
            if owns_ray:
                ray.shutdown()
        return summary

    def _init_bookkeeping(self, resume: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self.probe = CompensationProbe.from_config(cfg)       # its records come from the workers
        self.probe_epochs: dict[int, float] = {}              # version of a probed push -> epoch
        self.checkpoints: list[dict[str, Any]] = []
        self.gradients = 0
        self.restarts = [0] * cfg.workers
        self.worker_pids: list[int | None] = [None] * cfg.workers
        self.status: dict[str, Any] = {"refused": [0] * cfg.workers, "wait_s": [0.0] * cfg.workers,
                                       "lost_gradients": [0] * cfg.workers}
        self.durations: list[list[float]] = [[0.0, 0] for _ in range(cfg.workers)]
        self.cycles: list[list[float]] = [[0.0, 0] for _ in range(cfg.workers)]   # cycle_s sum and count
        self.stop_reason = None
        self.worker_time = {"compute_s": 0.0, "exchange_s": 0.0, "slowdown_s": 0.0, "loop_s": 0.0, "gradients": 0}
        self.told_to_stop: list[int] = []                     # workers whose time is in worker_time
        self.lost_updates, self.resumed_from, elapsed = 0, None, 0.0
        if resume is not None:
            d = resume["driver"]
            self.recorder.load_state_dict(d["recorder"])
            self.gradients = int(d["gradients"])
            self.durations = [list(x) for x in d["durations"]]
            self.cycles = [list(x) for x in d.get("cycles", self.cycles)]
            if self.probe is not None and d.get("probe"):
                self.probe.load_state_dict(d["probe"])
            self.version, self.epoch = int(resume["version"]), float(d["epoch"])
            self.lost_updates = int(resume["lost_updates"])
            self.resumed_from = {"checkpoint": resume["path"], "version": self.version,
                                 "lost_updates": self.lost_updates}
            elapsed = float(d["elapsed_s"])
        self.start_version = self.version
        self.last_ckpt_version = self.version if resume is not None else -1
        self.elapsed_before = elapsed
        self.t0 = time.time() - elapsed

    @property
    def diverged(self) -> bool:
        return self.recorder.diverged

    def _open_outputs(self, resume: dict[str, Any] | None) -> None:
        out = self.ctx.out
        open_run_dir(self.ctx)
        if resume is not None and self.ctx.resume_dir.resolve() != out.resolve():
            for name in ("metrics.jsonl", "trace.jsonl"):              # a resumed copy continues its history
                source = self.ctx.resume_dir / name
                if source.is_file():
                    shutil.copyfile(source, out / name)
        append = resume is not None and (out / "metrics.jsonl").exists()
        self.recorder.open(lr=lambda: self.lr, append=append)
        self.trace = None if out is None else open(out / "trace.jsonl", "a" if append else "w", encoding="utf-8")
        if resume is not None:
            self._log_event("resumed", -1, version=self.version, lost_updates=self.lost_updates,
                            checkpoint=resume["path"])
        else:
            self._evaluate(time_s=self.elapsed_before)        # error at epoch 0, before the training clock starts

    def _close_outputs(self) -> None:
        if getattr(self, "trace", None) is not None:
            self.trace.close()
            self.trace = None
        self.recorder.close()

    def _stop_actors(self) -> None:
        if self.actors is None:
            return
        for actor in [*self.actors.workers, *self.actors.shards]:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = None

    def _loop(self) -> None:
        a = self.actors
        self.loop_start = time.perf_counter()
        self.t0 = time.time() - self.elapsed_before         # the training clock (time_s) starts here
        self.pending = {w.run.remote(): m for m, w in enumerate(a.workers)}
        self.restarting: dict[int, float] = {}          # worker -> when its restart was asked for
        self.resubmit_at: dict[int, float] = {}         # worker -> when to call run() again
        if self.pause_for_eval:
            self._server_call(a.coordinator.pause_for_evaluations.remote(self.cfg.eval_every,
                                                                        self.recorder.next_eval_epoch))
        event_ref = a.coordinator.wait_event.remote(self.tick_s)
        stop_asked = False
        while self.pending or self.resubmit_at:
            reason = None if stop_asked else self._stop_reason_now()
            if reason is not None:
                stop_asked = True
                self._server_call(a.coordinator.request_stop.remote(reason))
            for m, at in list(self.resubmit_at.items()):
                if time.time() >= at:
                    del self.resubmit_at[m]
                    self.pending[a.workers[m].run.remote()] = m
            ready, _ = ray.wait([*self.pending, event_ref], num_returns=1, timeout=5.0)
            status = None
            if event_ref in ready:
                status = self._server_call(event_ref)
                event_ref = a.coordinator.wait_event.remote(self.tick_s)
            done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in done:
                self._worker_exit(self.pending.pop(ref), ref)
            self._drain()
            if status is not None:
                self._on_status(status)
            if not self.pause_for_eval and self.recorder.evaluation_due(self.epoch):
                self._evaluate()
            if self.on_tick is not None:
                self.on_tick(self)
            self.recorder.show_progress(self.epoch, self.version)
        self.done = True
        self.loop_s = time.perf_counter() - self.loop_start - self.eval_pause_s
        # The wait_event call still outstanding takes (and empties) the coordinator's events and probe
        # records when it wakes: read its answer, or what it took is lost; then whatever came after it.
        self._on_status(self._server_call(event_ref))
        self._on_status(self._server_call(a.coordinator.wait_event.remote(0)))
        self._drain()

    def _stop_reason_now(self) -> str | None:
        """Why training should stop now, if it should: a signal, the test hook's time limit, the target error reached
        by an evaluation, or the time budget (wall seconds of training) spent (:mod:`dcasgd.engine.budget`)."""
        if signals.STOP.requested:                     # Ctrl-C / SIGTERM: stop granting, then finish
            return "interrupted"
        if self.time_limit_s is not None and time.perf_counter() - self.loop_start >= self.time_limit_s:
            return "time_limit"
        stop = self.recorder.stop
        if stop.ended_by is None and stop.over_budget(time.time() - self.t0):
            stop.end_at_budget()
        return {"target": "target_error", "time_budget": "time_budget"}.get(stop.ended_by)

    def _server_call(self, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            raise ServerLost(f"a server actor died ({type(exc).__name__}); the server state since the last "
                             f"checkpoint is lost") from None

    def _on_status(self, status: dict[str, Any]) -> None:
        self.status = status
        for record in status["events"]:
            if record["event"] == "worker_rejoined":
                self.restarting.pop(record["worker"], None)
            extra = {k: v for k, v in record.items() if k not in ("event", "worker", "t", "version")}
            self._log_event(record["event"], record["worker"], time_s=record["t"] - self.t0, version=self.version,
                            **extra)
        self.recorder.diverged = self.recorder.diverged or status["diverged"]
        self.stop_reason = status["stop_reason"]
        self.worker_pids = status.get("pids", self.worker_pids)     # (fault tests kill these)
        for record in status.get("probes", ()):
            self._probe_record(record)
        if self.probe is not None:
            self.probe.pushes = int(status.get("probe_pushes", self.probe.pushes))   # counted by the coordinator
        if status["checkpoint_ready"] > self.ckpt_pauses:     # numbered: a later status may still show one
            self.ckpt_pauses = status["checkpoint_ready"]     # that was taken (its checkpoint_done not yet in)
            self._drain()                                     # the log up to the pause, then the snapshot
            self._checkpoint()
            self._server_call(self.actors.coordinator.checkpoint_done.remote())
        if status.get("evaluation_ready", 0) > self.eval_pauses:   # (a later status may still show it ready)
            self.eval_pauses = status["evaluation_ready"]
            self._evaluate_at_mark()

    def _worker_exit(self, m: int, ref: Any) -> None:
        try:
            tallies = ray.get(ref)
            for key in ("compute_s", "exchange_s", "slowdown_s", "loop_s"):
                self.worker_time[key] += tallies.get(key, 0.0)
            self.worker_time["gradients"] += tallies.get("gradients", 0)
            self.told_to_stop.append(m)
            return                                            # stopped when told
        except ray.exceptions.RayTaskError as exc:            # run() raised while its process lived
            if isinstance(exc.cause, UserCodeError):         # the user's model or loss raised there
                raise exc.cause from None
            if self._server_dead():
                raise ServerLost("a server shard died while workers were pushing") from None
            raise RayBackendError(f"worker {m} failed: {exc}") from None
        except ray.exceptions.RayActorError as exc:           # the worker process died
            since = self.restarting.get(m)
            if (since is not None and isinstance(exc, ray.exceptions.ActorUnavailableError)
                    and time.time() - since < RESTART_WAIT_S):
                self.resubmit_at[m] = time.time() + 0.2     # still restarting: call run() again shortly
                return
        self.restarting.pop(m, None)
        a = self.actors
        self._server_call_all([s.drop_worker.remote(m) for s in a.shards])   # shards first: sync rounds
        if self._server_call(a.coordinator.worker_failed.remote(m)):          # (not: a restart that failed)
            self._log_event("worker_failed", m)
        if self.restarts[m] < self.cfg.worker_restarts:       # Ray restarts the process; run it again
            self.restarts[m] += 1
            self.restarting[m] = time.time()
            self.pending[a.workers[m].run.remote()] = m

    def _server_call_all(self, refs: list[Any]) -> list[Any]:
        return [self._server_call(r) for r in refs]

    def _server_dead(self) -> bool:
        a = self.actors
        refs = [s.ping.remote() for s in a.shards]
        try:
            ray.get(refs, timeout=30)
            return False
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            return False

    def _drain(self) -> None:
        for r in self._server_call(self.actors.shards[0].drain.remote()):
            for key in ("t_pull", "t_push", "t_applied"):
                if r.get(key) is not None:
                    r[key] -= self.t0                          # absolute wall clock -> seconds since start
            self.version = max(self.version, int(r["version"]))
            self.epoch = float(r["epoch"])
            if r.get("probe"):
                self.probe_epochs[int(r["version"])] = self.epoch
            self.gradients += 1
            if "loss" in r:
                self.recorder.add_loss(r["loss"])
            if "duration_s" in r:
                self.durations[r["worker"]][0] += r["duration_s"]
                self.durations[r["worker"]][1] += 1
            if r.get("cycle_s") is not None:
                self.cycles[r["worker"]][0] += r["cycle_s"]
                self.cycles[r["worker"]][1] += 1
            self.recorder.update(version=r["version"], worker=r["worker"], staleness=int(r["staleness"]),
                                 loss=r.get("loss"), time_s=r["t_applied"], epoch=r["epoch"],
                                 clock=r.get("clock"), clock_gap=r.get("clock_gap"))
            if self.trace is not None:
                self.trace.write(json.dumps(trace_record(r), sort_keys=True) + "\n")
        if self.trace is not None:
            self.trace.flush()

    def _probe_record(self, record: dict[str, Any]) -> None:
        """A worker's compensation-probe record: a ``probe`` line and one more record for the summary."""
        if self.probe is None:
            return
        record = {**record, "epoch": self.probe_epochs.pop(record["version"], self.epoch)}
        self.probe.records.append(record)
        self.recorder.metrics.write("probe", **record)


    def _pull_weights(self) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        results = self._server_call_all([s.weights.remote() for s in self.actors.shards])
        weights = torch.from_numpy(np.concatenate([r[0] for r in results]))
        buffers = torch.from_numpy(np.array(results[0][2]))
        return weights, buffers, int(results[0][1]), float(results[0][3])

    def _evaluate_at_mark(self) -> None:
        """The coordinator stopped training at an evaluation mark (the driver shares a node with workers).

        Evaluating meanwhile would take the CPU from the workers on this node and make them look
        slow, so training stands still from the mark (every granted gradient applied) until the
        evaluation is done; ``t0`` then moves on by that time, so ``time_s`` and ``training_s`` count
        training only (``eval_pause_s`` in the summary is the total).
        """
        still_at = time.time()
        self._drain()
        if not self.done:
            self._evaluate(time_s=still_at - self.t0)
        held = time.time() - still_at                        # (training goes on once the call below lands)
        self._server_call(self.actors.coordinator.evaluation_done.remote())
        self.t0 += held
        self.eval_pause_s += held

    def _evaluate(self, time_s: float | None = None) -> None:
        """Evaluate the shards' current weights; ``time_s`` (default: now) is the training time they stand for."""
        weights, buffers, version, lr = self._pull_weights()
        self.lr = lr
        self.version = max(self.version, version)
        self.recorder.stats.wait_s = [float(w) for w in self.status["wait_s"]]
        self.recorder.evaluate(weights, buffers, version=version, epoch=self.epoch,
                               time_s=time.time() - self.t0 if time_s is None else time_s, lr=lr)
        self.final_weights, self.final_buffers = weights, buffers

    def _staleness(self) -> dict[str, Any]:
        self.recorder.stats.wait_s = [float(w) for w in self.status["wait_s"]]
        return self.recorder.stats.summary()

    def _log_event(self, what: str, worker: int, time_s: float | None = None, version: int | None = None,
                   **extra: Any) -> None:
        self.recorder.event(what, worker, time_s=time.time() - self.t0 if time_s is None else time_s,
                            version=self.version if version is None else version,
                            worker_event=what not in ("checkpoint", "resumed"), **extra)
        self.recorder.metrics.flush()

    # ------------------------------------------------------------ checkpoints

    def _checkpoint(self) -> None:
        cfg = self.cfg
        if not cfg.checkpoint_every or self.version == self.last_ckpt_version:
            return
        a = self.actors
        shard_states = self._server_call_all([s.state.remote() for s in a.shards])
        versions = {int(sd["core"]["version"]) for sd in shard_states}
        version = int(shard_states[0]["core"]["version"])
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": version,
            "config": cfg.to_dict(),
            "run_id": self.ctx.run_id,
            "ranges": [list(r) for r in self.ranges],
            "shards": shard_states,
            "coordinator": self._server_call(a.coordinator.coordinator_state.remote()),
            "driver": {"recorder": self.recorder.state_dict(), "gradients": self.gradients, "epoch": self.epoch,
                       "durations": self.durations, "cycles": self.cycles, "elapsed_s": time.time() - self.t0,
                       "probe": self.probe.state_dict() if self.probe is not None else None},
        }
        path = save_checkpoint(self.ctx.out / "checkpoints", state, version, keep=cfg.keep_checkpoints)
        self.last_ckpt_version = version
        record = {"version": version, "path": str(path), "time_s": time.time() - self.t0}
        if len(versions) > 1:
            record["shard_versions"] = sorted(versions)
        self.checkpoints.append(record)
        self._log_event("checkpoint", -1, version=version, path=str(path))

    def _server_lost(self, exc: ServerLost) -> None:
        """Write what is known: the updates since the last checkpoint are lost."""
        last_ckpt = max(self.last_ckpt_version, 0) if self.cfg.checkpoint_every else 0
        self.lost_updates = max(0, self.version - last_ckpt)
        self._log_event("server_failed", -1, lost_updates=self.lost_updates)
        summary = self._summary_fields("failed")
        summary.update({"server_failed": True, "error": str(exc), "error_type": type(exc).__name__,
                        "lost_updates": self.lost_updates,
                        "last_checkpoint_version": last_ckpt if self.last_ckpt_version >= 0 else None})
        write_summary(self.ctx.out, summary)

    def _failed(self, exc: RunFailed) -> None:
        """Best effort: a summary saying the run failed and why (a worker's code raised, the disk filled)."""
        try:
            summary = self._summary_fields("failed")
            summary.update({"error": str(exc), "error_type": type(exc).__name__})
            write_summary(self.ctx.out, summary)
        except (RunFailed, OSError):
            pass

    # ------------------------------------------------------------ the end

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.stop_reason is None and not self.diverged:
            self._log_event("stopped_no_live_workers", -1)
        elif self.stop_reason in ("stop_after_updates", "max_refused", "time_limit"):
            self._log_event("stopped_early", -1, reason=self.stop_reason)
        elif self.stop_reason == "interrupted":
            self._log_event("stopped_early", -1, reason=signals.signal_name(signals.STOP.signum))
        if self.diverged:
            self.recorder.mark_diverged(self.version)
        elif not self.recorder.evals or self.recorder.evals[-1]["version"] != self.version:
            self._evaluate()
        if cfg.checkpoint_every and not self.diverged:
            self._checkpoint()
        self.recorder.show_progress(self.epoch, self.version, force=True)
        infos = self._server_call_all([s.info.remote() for s in self.actors.shards])
        self.clipped = max(i["clipped"] for i in infos)
        self.step_time = infos[0].get("step_time", {})
        if self.final_weights is None or self.recorder.evals[-1]["version"] != self.version:
            self.final_weights, self.final_buffers, _, _ = self._pull_weights()
        summary = write_summary(self.ctx.out, self._summary_fields())
        return summary

    def _outcome(self) -> str:
        """How the run ended (:data:`dcasgd.engine.context.OUTCOMES`)."""
        if self.diverged:
            return "diverged"
        if self.stop_reason == "interrupted":
            return "interrupted"
        if self.stop_reason == "max_refused":
            return "max_refused"
        if self.stop_reason in ("stop_after_updates", "time_limit"):
            return "stopped"
        finished = ("target", "target_error", "time_budget")       # the epoch cap, the target error, the budget
        return "finished" if self.stop_reason in finished else "no_live_workers"

    def _time_split(self) -> dict[str, float] | None:
        """Where a worker's time went, in ms per gradient (workers that stopped when told; with one shard the
        lead's side of the exchange too): compute, the exchange with the server (of which the server's push
        and pull), emulated slowness, training held still for the driver's evaluations (``eval_pause_s``),
        and the rest (batch selection, waiting for the driver).  With one shard the hold falls inside the
        exchange (the grant comes with the push's reply), so it is taken out of it."""
        t = self.worker_time
        n = t["gradients"]
        if not n:
            return None
        step = getattr(self, "step_time", {}) or {}
        held_each = self.status.get("held_s") or [0.0] * self.cfg.workers
        held = sum(held_each[m] for m in self.told_to_stop)
        exchange = t["exchange_s"] - held if self.cfg.servers == 1 else t["exchange_s"]
        ms = {"compute": t["compute_s"], "exchange": max(0.0, exchange), "emulated_slowdown": t["slowdown_s"],
              "evaluation_pause": held}
        ms["other"] = max(0.0, t["loop_s"] - sum(ms.values()))
        out = {k: 1e3 * v / n for k, v in ms.items()}
        if step.get("steps"):
            out["server_push"] = 1e3 * step["push_s"] / step["steps"]
            out["server_pull"] = 1e3 * step["pull_s"] / step["steps"]
        return out

    def _summary_fields(self, outcome: str | None = None) -> dict[str, Any]:
        wall = time.perf_counter() - self.recorder.wall_start
        staleness = self._staleness()
        means = [s / c if c else None for s, c in self.durations]
        fastest = min((x for x in means if x), default=None)
        cycle_means = [s / c if c else None for s, c in self.cycles]
        return self.recorder.summary(
            updates=self.version, gradients=self.gradients, epoch=self.epoch, outcome=outcome or self._outcome(),
            backend="ray",
            updates_per_s=(self.version - self.start_version) / max(getattr(self, "loop_s", wall), 1e-9),
            training_s=getattr(self, "loop_s", None),
            eval_pause_s=self.eval_pause_s,
            wait_s_per_worker=staleness["wait_s_per_worker"],
            refused_per_worker=list(self.status["refused"]),
            lost_gradients_per_worker=list(self.status.get("lost_gradients", [])),
            clipped_updates=getattr(self, "clipped", None),   # with S > 1 shards: the most of any shard
            speeds=[x / fastest if (x and fastest) else None for x in means],
            compute_s_per_gradient=means,
            emulated_slowdown=emulated_slowdowns(self.cfg),
            achieved_slowdown=achieved_slowdowns(cycle_means, emulated_slowdowns(self.cfg)),
            cycle_s_per_gradient=cycle_means,
            server_bytes_per_param=self.server_bytes / self.flat.num_params,
            servers=self.cfg.servers,
            shard_ranges=[list(r) for r in self.ranges],
            placement=self.placement,
            stop_reason=self.stop_reason,
            lost_updates=self.lost_updates,
            resumed_from=self.resumed_from,
            checkpoints=self.checkpoints,
            worker_restarts_used=self.restarts,
            time_per_gradient_ms=self._time_split(),
            **self._dropped_jobs(),
            **({"probe": self.probe.summary()} if self.probe is not None else {}))


    def _dropped_jobs(self) -> dict[str, Any]:
        """The modes that drop jobs: pushes discarded and jobs cancelled per worker (found on arrival, so a
        dropped job's compute time was spent in full)."""
        if not parse_consistency(self.cfg.consistency).drops_jobs:
            return {}
        return {"discarded_per_worker": list(self.status.get("discarded", [0] * self.cfg.workers)),
                "cancelled_per_worker": list(self.status.get("cancelled", [0] * self.cfg.workers))}


def _last_version_seen(run_dir: Path) -> int:
    """Highest version a previous run in ``run_dir`` reported (metrics.jsonl, else summary.json)."""
    best = 0
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        with open(metrics, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("kind") == "event" and record.get("event") == "resumed":
                    best = int(record.get("version", 0))             # versions restart from the checkpoint
                elif isinstance(record.get("version"), int) and record.get("kind") in ("update", "eval"):
                    best = max(best, record["version"])
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            best = max(best, int(json.loads(summary.read_text(encoding="utf-8")).get("updates", 0)))
        except (ValueError, TypeError):
            pass
    return best


def run_ray(cfg: TrainConfig, task: Task | None = None, instrument: Instrumentation | None = None) -> dict[str, Any]:
    """Check ``cfg``, train on Ray (a local loopback Ray unless ``cfg.address``), return the summary.

    ``task``: the user's model, data, loss and metric (default: the configuration's names);
    ``instrument``: hooks for tests (:class:`Instrumentation`).
    """
    return RayRun(cfg, task, instrument).run()
