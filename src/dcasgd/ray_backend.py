"""The parameter server on Ray: sharded server actors, worker actors, a coordinator.

Processes::

    driver (run_ray, the CLI process)   evaluates, writes metrics/trace/checkpoints, watches workers
    LeadServer actor                    ServerShard 0 and the Coordinator (clocks, consistency waits,
                                        grants, stop and checkpoint pauses) in one asyncio actor
    ServerShard actors k = 1..S-1       a ServerCore over slice [start_k, end_k) of the flat vector
    RayWorker actors m = 0..M-1         model + data, loops pull -> gradient -> push

One gradient of worker m::

    grant = coordinator.next(m, report of the last gradient, batch size)   # may wait (ssp, sync, pause)
    (w_k, v_k) = shard_k.pull(m)             for every k, in parallel      # shard k records w_bak(m)
    g = grad f(w; batch)                                                   # worker.compute_gradient
    shard_k.push(m, seq, v_k, g[start_k:end_k], n)  for every k            # ServerCore.push, rule applied

Transport: weights and gradients travel as flat float32 numpy arrays through
Ray's object store, one object per shard and direction (no per-tensor calls);
on one node a reader gets a zero-copy view of shared memory.  BatchNorm
float buffers ride with the push to shard 0, which keeps the latest.

Exactly-once pushes: every push carries (worker, seq, base_version).  A shard
remembers the last seq it applied per worker and answers a seq it has already
applied with the version that push produced, so a retried push is applied
once, never twice.

Consistency (``consistency.py``) lives in the coordinator, an asyncio object: a
worker blocked by ``ssp:S`` or by the ``sync`` barrier awaits an
``asyncio.Condition`` inside ``Coordinator.next`` (no polling).  ``sync``
rounds are averaged on each shard by a :class:`~dcasgd.consistency.SyncBarrier`
and applied as one update.  The coordinator also hands out gradients
("grants") so that exactly ``ceil(epochs * N)`` samples (or
``stop_after_updates`` updates) are applied, and pauses grants every
``checkpoint_every`` updates until the driver has written a consistent
checkpoint of every shard.

Records: shard 0 logs every applied push in version order (worker, seq,
base_version, version, staleness, times, loss); the driver drains the log into
``metrics.jsonl`` (same ``update``/``eval``/``staleness``/``event`` lines as
the simulator, ``time_s`` = wall seconds since the start) and ``trace.jsonl``
(which :func:`dcasgd.sim.load_trace` replays).

Compensation probe (``--probe-every K``): the coordinator marks every K-th
async grant; that worker reads the shards' current weights (and the
MeanSquare row of dc-asgd-a) right before it pushes, then scores the delayed,
DC and Taylor estimates with :func:`dcasgd.probe.compensation_metrics` and
sends the record with its next report; the driver writes ``probe`` lines and
``summary["probe"]`` through a :class:`~dcasgd.probe.CompensationProbe`.

No arithmetic on weights here: updates happen in ServerCore and its rule,
sync averaging in SyncBarrier.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import ray
import ray.exceptions
import torch

from .checkpoint import CheckpointError, save_checkpoint
from .config import ConfigError, TrainConfig, check_address
from .errors import RunFailed
from .consistency import SyncBarrier, parse_consistency
from .flat import FlatModel, _views
from .kernels import all_finite
from .models import build_model
from .probe import CompensationProbe, compensation_metrics, effective_lam
from .rules import make_rule
from .run import (RunContext, advance_eval_mark, check_resumable, load_resume_checkpoint, open_run_dir, prepare_run,
                  write_summary)
from .server import NonFiniteUpdate, PushRejected, ServerCore, shard_ranges
from .sim import worker_speeds
from .telemetry import Progress, StalenessStats
from .tensorboard import open_metrics
from .worker import BatchStream, compute_gradient, evaluate

CHECKPOINT_FORMAT = "dcasgd.ray/1"
SERVER_RESOURCE = "dcasgd_server"     # custom resource that pins server actors (ray start --resources)
WORKER_RESOURCE = "dcasgd_worker"     # custom resource that pins worker actors
PUSH_TIMEOUT_S = 120.0                # a push unanswered this long is retried (same seq: applied once)
PUSH_RETRIES = 3
RESTART_WAIT_S = 120.0                # how long a restarting worker may take before it counts as dead
INLINE_BYTES = 100 * 1024             # Ray sends smaller objects inline, larger ones via the object store

__all__ = ["run_ray", "RayRun", "ServerShard", "Coordinator", "RayWorker", "RayBackendError", "ServerLost",
           "init_local_ray", "local_ray_options", "loopback_only", "pull_all", "push_all"]


class RayBackendError(RunFailed):
    """The Ray run could not go on (a worker raised, the cluster lacks a resource)."""


class ServerLost(RayBackendError):
    """A server shard or the coordinator died; resume from the last checkpoint with --resume."""


# ====================================================================== local Ray


def loopback_only() -> None:
    """Make a Ray started from this process use 127.0.0.1 and listen on loopback only.

    Ray turns an explicit ``_node_ip_address="127.0.0.1"`` into the machine's
    routable address (and its gRPC servers then listen on every interface)
    unless cluster mode is off; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` turns
    it off for this process and the Ray processes it starts.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants   # read at call time by services.get_node_ip_address
    ray_constants.ENABLE_RAY_CLUSTER = False


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def local_ray_options(num_params: int = 0, data_bytes: int = 0, num_workers: int = 1,
                      num_servers: int = 1) -> dict[str, Any]:
    """ray.init arguments for a private Ray on this machine, bound to loopback, sized to the job.

    Object store: the training set once, a few copies of the flat vector per
    actor, 128 MiB slack; at least 256 MiB, at most 30% of RAM.
    """
    need = 2 * data_bytes + 8 * (num_workers + num_servers + 2) * num_params * 4 + 128 * 1024**2
    store = int(min(max(need, 256 * 1024**2), 0.3 * _physical_memory()))
    return {"address": "local", "num_cpus": os.cpu_count() or 1, "object_store_memory": store,
            "include_dashboard": False, "_node_ip_address": "127.0.0.1"}


def init_local_ray(**overrides: Any) -> None:
    """Start a private loopback-only Ray (``local_ray_options`` updated by ``overrides``)."""
    loopback_only()
    options = {**local_ray_options(), **overrides}
    ray.init(**options)


# ====================================================================== server shard


class ServerShard:
    """A ServerCore over one slice of the flat vector, with exactly-once pushes and an update log.

    ``weights`` is the whole initial flat vector (numpy or tensor); this shard
    keeps ``weights[start:end]``.  With ``consistency="sync"`` pushes of one
    round are summed in a SyncBarrier and applied as their average when every
    expected worker has pushed (or died).  Shard 0 (``log_updates``) logs each
    applied push and keeps the BatchNorm buffers.
    """

    def __init__(self, weights: Any, rule: str = "sgd", num_workers: int = 1, lr: float = 0.1, *,
                 start: int = 0, end: int | None = None, index: int = 0, rule_params: dict | None = None,
                 backup_dtype: str = "float32", clip_norm: float = 0.0, consistency: str = "async",
                 schedule: Callable[[float], float] | None = None, num_train: int = 0,
                 log_updates: bool = False, buffers: Any = None,
                 torch_threads: int | None = 1) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        flat = np.asarray(weights, dtype=np.float32).reshape(-1)
        end = flat.size if end is None else end
        self.index, self.start, self.end = index, start, end
        self.core = ServerCore(torch.from_numpy(np.array(flat[start:end])), rule, num_workers, lr, offset=start,
                               backup_dtype=getattr(torch, backup_dtype), clip_norm=clip_norm, **(rule_params or {}))
        self.core.warm_up()                       # a large shard compiles its kernel now, not in a push
        self.num_workers = num_workers
        self.sync = parse_consistency(consistency).mode == "sync"
        self.schedule, self.num_train = schedule, num_train
        self.last_seq = [0] * num_workers        # seq numbers start at 1
        self.last_version = [0] * num_workers    # version the last applied seq produced
        self.samples = 0                         # training samples in applied gradients
        self.log: list[dict[str, Any]] | None = [] if log_updates else None
        self.buffers = (torch.from_numpy(np.array(buffers, dtype=np.float32).reshape(-1))
                        if buffers is not None else torch.zeros(0))
        self.barrier = SyncBarrier()
        self.replies_before_next_call = True      # a plain actor; LeadServer (asyncio) sets False
        self.round_active = False
        self.round_base: dict[int, int] = {}
        self.dead: set[int] = set()

    # ------------------------------------------------------------ pull

    def pull(self, worker: int) -> tuple[np.ndarray, int, np.ndarray | None]:
        """(weights slice, version, BatchNorm buffers or None) as this call's reply; records w_bak(worker).

        The weights go back as the reply itself, never as a ``ray.put`` ObjectRef
        inside it: Ray keeps about 0.5 KB in the actor for every reply that
        nests an ObjectRef the actor put (ray-project/ray#47274), a leak over a
        long run.  In a plain actor the reply is serialised before the next
        call runs, so the live weights go out with one copy (into the object
        store); where other calls may run meanwhile (``replies_before_next_call``
        False: the asyncio LeadServer) they are cloned first.
        """
        live = self.replies_before_next_call and self.core.num_params * 4 > INLINE_BYTES
        weights, version = self.core.pull(worker, copy=not live)
        buffers = None
        if self.log is not None:
            buffers = (self.buffers if self.replies_before_next_call else self.buffers.clone()).numpy()
        return weights.numpy(), version, buffers

    def weights(self) -> tuple[np.ndarray, int, np.ndarray, float]:
        """(weights slice copy, version, buffers, lr) for evaluation; records no backup."""
        return self.core.weights.clone().numpy(), self.core.version, self.buffers.clone().numpy(), self.core.lr

    def probe_weights(self, worker: int) -> tuple[np.ndarray, int, np.ndarray | None]:
        """For the compensation probe: (weights slice copy, version, MeanSquare row or None); no backup.

        The row is the one ``worker``'s next push would update (dc-asgd-a), as it is now;
        :func:`dcasgd.probe.effective_lam` turns it into ``lam_eff`` for that push.
        """
        self._check_worker(worker)
        ms = self.core.state.get("mean_square")
        row = None if ms is None else ms[worker if self.core.rule.per_worker_ms else 0].clone().numpy()
        return self.core.weights.clone().numpy(), self.core.version, row

    # ------------------------------------------------------------ push

    def push(self, worker: int, seq: int, base_version: int, grad: Any, num_samples: int,
             meta: dict[str, Any] | None = None, buffers: Any = None,
             members: Sequence[int] | None = None) -> int:
        """Apply gradient ``seq`` of ``worker`` (computed at ``base_version``); returns the version.

        A ``seq`` at or below the last one applied for ``worker`` is a retry:
        nothing is applied and the version that push produced is returned.
        """
        received = time.time()
        self._check_worker(worker)
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise PushRejected(f"worker {worker}: seq must be an int >= 1, got {seq!r}")
        if seq <= self.last_seq[worker]:
            return self.last_version[worker]
        g = _readonly_tensor(grad)
        if self.sync:
            logged_version, staleness = self._push_sync(worker, g, base_version, num_samples, members)
            version = self.core.version
        else:
            self._set_lr(self.samples + num_samples)
            staleness = self.core.version - base_version if isinstance(base_version, int) else 0
            version = logged_version = self.core.push(worker, g, base_version)   # PushRejected: counted there
            self.samples += num_samples
        self.last_seq[worker], self.last_version[worker] = seq, version
        if buffers is not None and self.log is not None:
            b = _readonly_tensor(buffers)
            if b.numel() == self.buffers.numel() and b.numel():
                self.buffers.copy_(b)                              # latest pushed statistics win
        if self.log is not None:
            meta = meta or {}
            self.log.append({"worker": worker, "seq": seq, "base_version": base_version,
                             "version": logged_version,
                             "staleness": staleness, "n": num_samples,
                             "epoch": self.samples / self.num_train if self.num_train else 0.0,
                             "t_applied": received, "t_push": meta.get("t_push", received),
                             **{k: meta[k] for k in ("t_pull", "duration_s", "loss", "clock", "clock_gap", "probe")
                                if k in meta}})
        return version

    def _push_sync(self, worker: int, g: torch.Tensor, base_version: int, num_samples: int,
                   members: Sequence[int] | None) -> tuple[int, int]:
        """Add to this round's barrier; the last expected push applies the average.

        Returns (the version this round produces, staleness), as the simulator records them.
        """
        if not self.round_active:
            expected = set(members if members is not None else range(self.num_workers)) - self.dead
            self.barrier.start(expected)
            self.round_active, self.round_base = True, {}
        self.core.validate(worker, g, base_version)
        if worker not in self.barrier.expected or worker in self.barrier.received:
            self.core.refused[worker] += 1
            raise PushRejected(f"worker {worker}: not expected in this sync round "
                               f"(expected {sorted(self.barrier.expected)})")
        self.barrier.add(worker, g)
        self.round_base[worker] = base_version
        self.samples += num_samples
        staleness = self.core.version - base_version
        round_version = self.core.version + 1
        self._maybe_finish_round()
        return round_version, staleness

    def _maybe_finish_round(self) -> None:
        if not self.round_active:
            return
        if self.barrier.complete:
            first = min(self.barrier.received)
            self._set_lr(self.samples)
            self.core.push(first, self.barrier.average(), self.round_base[first])
            self.round_active = False
        elif not (self.barrier.expected - set(self.barrier.received)) and not self.barrier.received:
            self.round_active = False                                # everyone of the round died

    def _set_lr(self, samples: int) -> None:
        if self.schedule is not None and self.num_train:
            self.core.lr = float(self.schedule(samples / self.num_train))

    def _check_worker(self, worker: int) -> None:
        if isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker < self.num_workers:
            raise PushRejected(f"unknown worker {worker!r}: this server has workers 0..{self.num_workers - 1}")

    # ------------------------------------------------------------ membership

    def join(self, worker: int) -> int:
        """A worker (re)starts: it is expected in sync rounds again; returns its last applied seq."""
        self._check_worker(worker)
        self.dead.discard(worker)
        return self.last_seq[worker]

    def drop_worker(self, worker: int) -> int:
        """A worker died: sync rounds stop waiting for it.  Returns the version."""
        self._check_worker(worker)
        self.dead.add(worker)
        if self.sync and self.round_active:
            self.barrier.drop(worker)
            self._maybe_finish_round()
        return self.core.version

    # ------------------------------------------------------------ driver side

    def drain(self) -> list[dict[str, Any]]:
        """The update log since the last drain, in version order (shard 0 only)."""
        out, self.log = (self.log, []) if self.log is not None else ([], None)
        return out

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "end": self.end, "version": self.core.version,
                "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
                "bytes": self.core.bytes_per_param() * self.core.num_params, "counters": self.core.counters(),
                "last_seq": list(self.last_seq), "samples": self.samples, "lr": self.core.lr,
                "clipped": self.core.clipped}

    def ping(self) -> int:
        return self.core.version

    def pid(self) -> int:
        """This actor's process id (fault tests kill it with SIGKILL)."""
        return os.getpid()

    def rss(self) -> int:
        """Resident set size of this actor's process in bytes (soak test)."""
        return _rss_bytes()

    def state(self) -> dict[str, Any]:
        """Everything to continue exactly: ServerCore.state_dict plus seqs, samples and buffers."""
        return {"core": self.core.state_dict(), "start": self.start, "end": self.end,
                "last_seq": list(self.last_seq), "last_version": list(self.last_version),
                "samples": self.samples, "buffers": self.buffers.clone()}

    def load_state(self, sd: dict[str, Any]) -> int:
        if (sd.get("start"), sd.get("end")) != (self.start, self.end):
            raise CheckpointError(f"checkpoint shard covers [{sd.get('start')}, {sd.get('end')}), this shard "
                                  f"[{self.start}, {self.end}): resume with the same --servers and model")
        self.core.load_state_dict(sd["core"])
        self.last_seq, self.last_version = list(sd["last_seq"]), list(sd["last_version"])
        self.samples = int(sd["samples"])
        if sd["buffers"].numel() == self.buffers.numel():
            self.buffers.copy_(sd["buffers"])
        return self.core.version


def _rss_bytes() -> int:
    """VmRSS of this process in bytes (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _readonly_tensor(array: Any) -> torch.Tensor:
    """A float32 tensor over ``array`` without copying (object-store arrays are read-only)."""
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)              # "not writable": we only read it
        return torch.from_numpy(np.asarray(array))


# ====================================================================== coordinator


@dataclass
class _Grant:
    go: bool
    reason: str = ""
    clock: int = 0
    clock_gap: int = 0
    members: list[int] = field(default_factory=list)
    probe: bool = False          # also measure the delay compensation for this gradient (--probe-every)


class Coordinator:
    """Worker clocks, consistency waits, grants, stop and checkpoint pauses (asyncio; in LeadServer).

    Grants: a worker gets its next gradient only while the samples and
    updates granted so far are below the targets; a worker that died before
    its gradient reached shard 0 releases its grant.  So the run applies
    exactly the gradients the targets ask for, and a worker asked to stop has
    nothing in flight.  ``ssp:S`` and ``sync`` waits and checkpoint pauses
    await one asyncio.Condition.

    Two marks per granted gradient: *unapplied* until shard 0 has applied it
    (:meth:`applied`, called in shard 0's process: counts samples, updates and
    the worker's clock) and *in flight* until the worker reports that every
    shard has it (:meth:`next`: ends sync rounds, lets a checkpoint start).
    """

    def __init__(self, num_workers: int, consistency: str, target_samples: int, stop_after_updates: int = 0,
                 checkpoint_every: int = 0, max_refused: int = 0, start: dict[str, Any] | None = None,
                 probe_every: int = 0) -> None:
        start = start or {}
        self.M = num_workers
        self.consistency = parse_consistency(consistency)
        self.sync = self.consistency.mode == "sync"
        self.target_samples, self.stop_after = target_samples, stop_after_updates
        self.ckpt_every, self.max_refused = checkpoint_every, max_refused
        self.applied_updates = self.granted_updates = int(start.get("updates", 0))
        self.applied_samples = self.granted_samples = int(start.get("samples", 0))
        self.clock = list(start.get("clock", [0] * num_workers))
        self.refused = list(start.get("refused", [0] * num_workers))
        self.wait_s = list(start.get("wait_s", [0.0] * num_workers))
        self.lost = list(start.get("lost_gradients", [0] * num_workers))   # granted, never applied: worker died
        self.probe_every = probe_every
        self.probe_pushes = int(start.get("probe_pushes", 0))               # async grants counted for the probe
        self.probes: list[dict[str, Any]] = []                              # probe records not yet drained
        self.pids: list[int | None] = [None] * num_workers                  # worker processes, as they joined
        self.next_ckpt = (self.applied_updates // checkpoint_every + 1) * checkpoint_every if checkpoint_every else 0
        self.live = set(range(num_workers))
        self.finished: set[int] = set()
        self.generation = [0] * num_workers
        self.inflight: list[int | None] = [None] * num_workers     # samples of a gradient not yet on all shards
        self.unapplied: list[int | None] = [None] * num_workers    # ... not yet applied by shard 0
        self.pending_n = [0] * num_workers
        self.stop_reason: str | None = None
        self.diverged = False
        self.ckpt_ready = False
        self.events: list[dict[str, Any]] = []
        # sync rounds
        self.waiting: set[int] = set()
        self.round_id, self.round_active = 0, False
        self.members: set[int] = set()
        self.reported: set[int] = set()
        self.last_round = [0] * num_workers
        self._cond: asyncio.Condition | None = None
        self._attention: asyncio.Event | None = None
        self.timer: Callable[[], float] = time.perf_counter    # seconds, for wait_s (tests set a fake one)

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond, self._attention = asyncio.Condition(), asyncio.Event()
        return self._cond

    # ------------------------------------------------------------ worker calls

    async def worker_join(self, worker: int, pid: int | None = None) -> dict[str, Any]:
        """Worker (re)starts (in process ``pid``); a restarted worker rejoins at the slowest live clock."""
        async with self.cond:
            self.pids[worker] = pid
            self.generation[worker] += 1
            self.finished.discard(worker)
            self._release(worker, lost=True)
            if worker not in self.live:
                others = [self.clock[o] for o in self.live]
                self.live.add(worker)
                self.clock[worker] = min(others, default=self.clock[worker])
                self._event("worker_rejoined", worker)
            self.cond.notify_all()
            return {"generation": self.generation[worker], "clock": self.clock[worker]}

    async def next(self, worker: int, generation: int, report: dict[str, Any] | None,
                   num_samples: int) -> dict[str, Any]:
        """Report the last gradient; wait until the next one may start (or the run stops)."""
        entered = self.timer()
        async with self.cond:
            if generation != self.generation[worker]:
                return vars(_Grant(False, "superseded"))
            if report is not None:
                self._report(worker, report)
            self.pending_n[worker] = num_samples
            if self.sync:
                self.waiting.add(worker)
            self._check_checkpoint()
            self.cond.notify_all()
            while True:
                if generation != self.generation[worker] or worker not in self.live:
                    return vars(_Grant(False, "dead"))
                grant = self._decide_sync(worker) if self.sync else self._decide_async(worker)
                if grant is not None:
                    self.wait_s[worker] += self.timer() - entered
                    if not grant.go:
                        self.live.discard(worker)
                        self.finished.add(worker)
                        self.waiting.discard(worker)
                        self._attention.set()
                    self.cond.notify_all()
                    return vars(grant)
                await self.cond.wait()

    async def applied(self, worker: int, num_samples: int = 0) -> None:
        """Shard 0 applied worker's granted gradient (called from shard 0's push, same process).

        A push that arrives after its worker was declared dead (its grant given
        back) still counts: shard 0 applied it, so it is taken back from the grants.
        """
        async with self.cond:
            if self.unapplied[worker] is None and not self.sync and num_samples:
                self.granted_samples += num_samples
                self.granted_updates += 1
                self.unapplied[worker] = num_samples
                if self.lost[worker]:
                    self.lost[worker] -= 1
            self._count_applied(worker)
            self.cond.notify_all()

    def _count_applied(self, worker: int) -> None:
        n = self.unapplied[worker]
        if n is None:
            return
        self.unapplied[worker] = None
        self.clock[worker] += 1
        self.applied_samples += n
        if not self.sync:
            self.applied_updates += 1

    def _release(self, worker: int, lost: bool = False) -> None:
        """Forget worker's grant; one that never reached shard 0 is given back (``lost``: the worker died)."""
        n = self.unapplied[worker]
        if n is not None:
            self.granted_samples -= n
            self.lost[worker] += bool(lost)
            if not self.sync:
                self.granted_updates -= 1
        self.unapplied[worker] = self.inflight[worker] = None

    def _report(self, worker: int, report: dict[str, Any]) -> None:
        if report.get("probe") is not None:
            self.probes.append(report["probe"])
            self._attention.set()
        if self.inflight[worker] is None:
            return
        if report.get("applied"):
            self._count_applied(worker)          # (already counted when shard 0 told us)
            self.inflight[worker] = None
        else:
            self._release(worker)
            self.refused[worker] += 1
            if report.get("error"):
                self._event("push_refused", worker, reason=report["error"])
            if report.get("nonfinite"):
                self.diverged = True
                self.stop_reason = self.stop_reason or "diverged"
                self._event("diverged", worker)
            if self.max_refused and self.refused[worker] >= self.max_refused:
                self.stop_reason = self.stop_reason or "max_refused"
        if self.sync and worker in self.members:
            self.reported.add(worker)
            self._maybe_end_round()

    def _maybe_end_round(self) -> None:
        if self.round_active and self.members <= self.reported:
            self.round_active = False
            if self.reported:
                self.applied_updates += 1

    def _stop(self) -> str | None:
        if self.stop_reason:
            return self.stop_reason
        if self.applied_samples >= self.target_samples:
            return "target"
        if self.stop_after and self.applied_updates >= self.stop_after:
            return "stop_after_updates"
        return None

    def _paused(self) -> bool:
        return bool(self.ckpt_every) and (self.applied_updates if self.sync else self.granted_updates) >= self.next_ckpt

    def _decide_async(self, worker: int) -> _Grant | None:
        reason = self._stop()
        if reason:
            return _Grant(False, reason)
        if self.granted_samples >= self.target_samples or (self.stop_after and self.granted_updates >= self.stop_after):
            return None            # in-flight gradients reach the target unless their worker dies
        if self._paused():
            return None
        live_clocks = [self.clock[o] for o in self.live]
        if not self.consistency.may_start(self.clock[worker], live_clocks):
            return None
        n = self.pending_n[worker]
        self.granted_updates += 1
        self.granted_samples += n
        self.inflight[worker] = self.unapplied[worker] = n
        probe = False
        if self.probe_every:
            self.probe_pushes += 1
            probe = self.probe_pushes % self.probe_every == 0
        return _Grant(True, clock=self.clock[worker], clock_gap=self.clock[worker] - min(live_clocks), probe=probe)

    def _decide_sync(self, worker: int) -> _Grant | None:
        if self.round_active and worker in self.members and self.last_round[worker] < self.round_id:
            return self._grant_round(worker)
        if not self.round_active and self.live and self.live <= self.waiting:
            reason = self._stop()
            if reason:
                return _Grant(False, reason)
            if self._paused():
                return None
            self.round_id += 1
            self.members, self.reported, self.round_active = set(self.live), set(), True
            self.granted_updates += 1
            self.granted_samples += sum(self.pending_n[o] for o in self.members)
            return self._grant_round(worker)
        return None

    def _grant_round(self, worker: int) -> _Grant:
        self.last_round[worker] = self.round_id
        self.waiting.discard(worker)
        self.inflight[worker] = self.unapplied[worker] = self.pending_n[worker]
        live_clocks = [self.clock[o] for o in self.live]
        return _Grant(True, clock=self.clock[worker], clock_gap=self.clock[worker] - min(live_clocks),
                      members=sorted(self.members))

    def _check_checkpoint(self) -> None:
        if self.ckpt_ready or not self.ckpt_every or not self._paused():
            return
        quiet = (not self.round_active) if self.sync else all(n is None for n in self.inflight)
        if quiet:
            self.ckpt_ready = True
            self._attention.set()

    def _event(self, what: str, worker: int, **extra: Any) -> None:
        self.events.append({"event": what, "worker": worker, "t": time.time(),
                            "version": self.applied_updates, **extra})
        if self._attention is not None:
            self._attention.set()

    # ------------------------------------------------------------ driver calls

    async def worker_failed(self, worker: int) -> bool:
        """The driver saw worker die: release its grant, stop waiting for it.

        Returns whether it was live (False: it died again before rejoining).
        """
        async with self.cond:
            was_live = worker in self.live
            self.generation[worker] += 1
            self.live.discard(worker)
            self.waiting.discard(worker)
            self._release(worker, lost=True)
            if self.sync and self.round_active and worker in self.members and worker not in self.reported:
                self.members.discard(worker)
                if not self.members:
                    self.granted_updates -= 1
                    self.round_active = False
                self._maybe_end_round()
            self._check_checkpoint()
            self.cond.notify_all()
            return was_live

    async def wait_event(self, timeout: float) -> dict[str, Any]:
        """Return the status when something needs the driver, or after ``timeout`` seconds."""
        self.cond  # noqa: B018 - creates the primitives in this loop
        try:
            await asyncio.wait_for(self._attention.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._attention.clear()
        return self.status()

    async def checkpoint_done(self) -> None:
        async with self.cond:
            self.ckpt_ready = False
            while self.ckpt_every and self.next_ckpt <= self.applied_updates:
                self.next_ckpt += self.ckpt_every
            self._check_checkpoint()
            self.cond.notify_all()

    async def request_stop(self, reason: str) -> None:
        async with self.cond:
            self.stop_reason = self.stop_reason or reason
            self.cond.notify_all()

    def status(self) -> dict[str, Any]:
        events, self.events = self.events, []
        probes, self.probes = self.probes, []
        return {"events": events, "probes": probes, "probe_pushes": self.probe_pushes, "pids": list(self.pids),
                "lost_gradients": list(self.lost),
                "checkpoint_ready": self.ckpt_ready, "stop_reason": self._stop(),
                "diverged": self.diverged, "refused": list(self.refused), "wait_s": list(self.wait_s),
                "live": sorted(self.live), "finished": sorted(self.finished), "updates": self.applied_updates,
                "samples": self.applied_samples, "clock": list(self.clock)}

    async def coordinator_state(self) -> dict[str, Any]:
        return {"updates": self.applied_updates, "samples": self.applied_samples, "clock": list(self.clock),
                "refused": list(self.refused), "wait_s": list(self.wait_s), "lost_gradients": list(self.lost),
                "probe_pushes": self.probe_pushes}


class LeadServer:
    """Shard 0 and the coordinator in one asyncio actor: one process fewer to start per run.

    Ray runs the plain (shard) methods of an asyncio actor one at a time on its
    event-loop thread, so pushes stay serial; the coordinator's coroutines
    wait on the same loop without blocking it.
    """

    def __init__(self, shard: dict[str, Any], coordinator: dict[str, Any]) -> None:
        self.shard = ServerShard(**shard)
        self.shard.replies_before_next_call = False   # a coroutine may run while a reply is serialised
        self.coordinator = Coordinator(**coordinator)

    # shard 0
    def pull(self, worker: int):
        return self.shard.pull(worker)

    def weights(self):
        return self.shard.weights()

    def probe_weights(self, worker: int):
        return self.shard.probe_weights(worker)

    def pid(self) -> int:
        return self.shard.pid()

    def rss(self) -> int:
        return self.shard.rss()

    async def push(self, worker: int, seq: int, base_version: int, grad: Any, num_samples: int,
                   meta: dict[str, Any] | None = None, buffers: Any = None,
                   members: Sequence[int] | None = None) -> int:
        before = self.shard.last_seq[worker] if isinstance(worker, int) and 0 <= worker < self.shard.num_workers else 0
        # plain code: atomic on the event loop
        version = self.shard.push(worker, seq, base_version, grad, num_samples, meta, buffers, members)
        if seq > before:                                             # applied now, not a retry
            await self.coordinator.applied(worker, num_samples)
        return version

    def join(self, worker: int) -> int:
        return self.shard.join(worker)

    def drop_worker(self, worker: int) -> int:
        return self.shard.drop_worker(worker)

    def drain(self) -> list[dict[str, Any]]:
        return self.shard.drain()

    def info(self) -> dict[str, Any]:
        return self.shard.info()

    def ping(self) -> int:
        return self.shard.ping()

    def state(self) -> dict[str, Any]:
        return self.shard.state()

    def load_state(self, sd: dict[str, Any]) -> int:
        return self.shard.load_state(sd)

    # coordinator
    async def worker_join(self, worker: int, pid: int | None = None) -> dict[str, Any]:
        return await self.coordinator.worker_join(worker, pid)

    async def next(self, worker: int, generation: int, report: dict[str, Any] | None,
                   num_samples: int) -> dict[str, Any]:
        return await self.coordinator.next(worker, generation, report, num_samples)

    async def worker_failed(self, worker: int) -> bool:
        return await self.coordinator.worker_failed(worker)

    async def wait_event(self, timeout: float) -> dict[str, Any]:
        return await self.coordinator.wait_event(timeout)

    async def checkpoint_done(self) -> None:
        await self.coordinator.checkpoint_done()

    async def request_stop(self, reason: str) -> None:
        await self.coordinator.request_stop(reason)

    async def coordinator_state(self) -> dict[str, Any]:
        return await self.coordinator.coordinator_state()


# ====================================================================== transport


def pull_all(shards: Sequence[Any], ranges: Sequence[tuple[int, int]], worker: int,
             out: np.ndarray) -> tuple[list[int], np.ndarray | None]:
    """Pull every shard in parallel into ``out`` (float32, length P); returns (versions, buffers)."""
    results = ray.get([s.pull.remote(worker) for s in shards])
    versions = []
    for (start, end), (weights, version, _) in zip(ranges, results):
        np.copyto(out[start:end], weights)
        versions.append(version)
    buffers = results[0][2]
    buffers = None if buffers is None else np.array(buffers)
    del results                                                  # release the object-store views
    return versions, buffers


def push_all(shards: Sequence[Any], ranges: Sequence[tuple[int, int]], worker: int, seq: int,
             base_versions: Sequence[int], grad: np.ndarray, num_samples: int,
             meta: dict[str, Any] | None = None, buffers: np.ndarray | None = None,
             members: Sequence[int] | None = None, after_send: Callable[[], None] | None = None) -> list[int]:
    """Push each shard its slice (one object-store put per shard, in parallel); returns the versions.

    A push that times out or finds its shard briefly unavailable is sent again
    with the same seq and object; the shard applies it once.  ``after_send``
    (tests) runs between sending and reading the answers.
    """
    if len(shards) == 1:
        refs = [ray.put(grad)]
    else:
        refs = [ray.put(grad[start:end]) for start, end in ranges]

    def send(k: int):
        return shards[k].push.remote(worker, seq, base_versions[k], refs[k], num_samples,
                                     meta if k == 0 else None, buffers if k == 0 else None, members)

    pending = {k: send(k) for k in range(len(shards))}
    if after_send is not None:
        after_send()
    versions: list[int] = [0] * len(shards)
    for attempt in range(PUSH_RETRIES + 1):
        retry = {}
        for k, ref in pending.items():
            try:
                versions[k] = ray.get(ref, timeout=PUSH_TIMEOUT_S)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
                if attempt == PUSH_RETRIES:
                    raise
                retry[k] = send(k)
        if not retry:
            break
        pending = retry
    return versions


# ====================================================================== worker


def _flat_to_device(flat: FlatModel, device: torch.device) -> FlatModel:
    """Move a FlatModel's flat buffers to ``device`` and re-point parameters, grads and buffers at them."""
    params = [p for p in flat.module.parameters() if p.requires_grad]
    # copy=True: new buffers even for the same device, so the re-pointing below is exercised on CPU too
    flat.params, flat.grads = flat.params.to(device, copy=True), flat.grads.to(device, copy=True)
    for p, view, gview in zip(params, _views(flat.params, params), _views(flat.grads, params)):
        p.data = view
        p.grad = gview
    owners = flat._buffer_owners
    old = [getattr(mod, name) for mod, name in owners]
    flat.buffers = flat.buffers.to(device, copy=True)
    for (mod, name), view in zip(owners, _views(flat.buffers, old)):
        setattr(mod, name, view)
    flat.module.to(device)                                       # integer buffers (num_batches_tracked)
    return flat


def emulated_pause(slowdown: float, busy_s: float) -> float:
    """Seconds a worker ``slowdown`` times slower than the fastest sleeps after a round trip that kept it
    busy ``busy_s`` seconds: ``(slowdown - 1) * busy_s``, so the round trip takes ``slowdown * busy_s``."""
    return max(0.0, (slowdown - 1.0) * busy_s)


def emulated_slowdowns(cfg: TrainConfig) -> list[float]:
    """Each worker's emulated slow-down k_m = speed[m] / min(speed) (>= 1; the fastest is 1)."""
    speeds = worker_speeds(cfg)
    fastest = min(speeds)
    return [s / fastest for s in speeds]


class RayWorker:
    """Worker m: a model, the training set (zero-copy from the object store) and the gradient loop.

    Emulated speeds (``--speeds``, ``--hetero-sigma``, ``--stragglers``): with
    ``k = speed[m] / min(speed)`` from :func:`dcasgd.sim.worker_speeds`, the
    worker sleeps ``(k - 1) * t`` after each round trip (pull, gradient, push)
    that kept it busy ``t`` seconds, so its round trips take about k times as
    long as they would (waits for the coordinator are not stretched).

    ``hooks`` (tests only): ``compute_delay_s`` sleeps after each gradient (a
    slow worker), ``push_pause_s`` sleeps after the push is sent and before
    its answer is read (a window in which to kill the process mid-push;
    ``push_pause_mark`` names a file that says "pid seq" during that sleep).
    """

    def __init__(self, index: int, cfg: TrainConfig, train_x: np.ndarray, train_y: np.ndarray,
                 num_classes: int, shards: list[Any], ranges: list[tuple[int, int]], coordinator: Any,
                 hooks: dict[str, Any] | None = None) -> None:
        torch.set_num_threads(1)
        self.index, self.cfg = index, cfg
        self.hooks = dict(hooks or {})
        self.slowdown = emulated_slowdowns(cfg)[index]
        self.shards, self.ranges, self.coord = shards, ranges, coordinator
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device 'cuda': worker {index} sees no CUDA device (torch.cuda.is_available() "
                              f"is False on {os.uname().nodename})")
        self.device = torch.device(cfg.device)
        self.x, self.y = _readonly_tensor(train_x), _readonly_tensor(train_y)
        self.flat = FlatModel(build_model(cfg.model, tuple(self.x.shape[1:]), num_classes, seed=cfg.seed))
        if self.device.type != "cpu":
            _flat_to_device(self.flat, self.device)
        # pulled weights land in the model's own flat parameters on CPU (then loading them is free)
        self.weights = self.flat.params if self.device.type == "cpu" else torch.zeros(self.flat.num_params)
        self.buffers = torch.zeros(self.flat.buffers.numel())
        self.stream = BatchStream(len(self.y), index, cfg.workers, cfg.batch_size, cfg.seed)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self) -> dict[str, Any]:
        """Pull, compute, push until the coordinator says stop; returns this worker's tallies."""
        m, cfg = self.index, self.cfg
        seq = max(ray.get([s.join.remote(m) for s in self.shards]))    # continue after the last applied seq
        generation = ray.get(self.coord.worker_join.remote(m, os.getpid()))["generation"]
        report, gradients = None, 0
        w_np = self.weights.numpy()
        while True:
            batch = self.stream.next()
            grant = ray.get(self.coord.next.remote(m, generation, report, int(batch.numel())))
            if not grant["go"]:
                return {"worker": m, "gradients": gradients, "reason": grant["reason"]}
            t_pull, granted = time.time(), time.perf_counter()
            base, buffers = pull_all(self.shards, self.ranges, m, w_np)
            if buffers is not None and buffers.size == self.buffers.numel():
                self.buffers.copy_(torch.from_numpy(buffers))
            x, y = self.x.index_select(0, batch), self.y.index_select(0, batch)   # (5x x[batch])
            key = ((cfg.seed * 1_000_003 + m) * 1_000_003 + grant["clock"]) % (2**63)
            started = time.perf_counter()
            if self.device.type != "cpu":
                x, y = x.to(self.device), y.to(self.device)
            result = compute_gradient(self.flat, self.weights, self.buffers, x, y, key)
            grad = result.grad.cpu()
            if self.hooks.get("compute_delay_s"):
                time.sleep(self.hooks["compute_delay_s"])
            duration = time.perf_counter() - started
            seq += 1
            now = self._pull_now() if grant.get("probe") else None      # the weights this push will meet
            report = self._push(seq, base, grad, result.buffers.cpu(), result.loss, int(batch.numel()), {
                "t_pull": t_pull, "t_push": time.time(), "duration_s": max(duration, 1e-9),
                "loss": result.loss, "clock": grant["clock"], "clock_gap": grant["clock_gap"],
                **({"probe": True} if now is not None else {})},
                grant["members"] or None)
            gradients += bool(report["applied"])
            if now is not None and report["applied"]:
                report["probe"] = self._probe(now, base, grad, x, y, key, report["version"])
            if self.slowdown > 1:                                     # an emulated slow worker
                time.sleep(emulated_pause(self.slowdown, time.perf_counter() - granted))

    def _push(self, seq: int, base: list[int], grad: torch.Tensor, buffers: torch.Tensor, loss: float,
              n: int, meta: dict[str, Any], members: list[int] | None) -> dict[str, Any]:
        g = grad.numpy()
        bad = [] if all_finite(grad) else [
            k for k, (start, end) in enumerate(self.ranges) if not np.isfinite(g[start:end]).all()]
        if bad:
            # the server refuses non-finite values: send only the slices that have them, so no shard
            # applies part of a gradient another shard refused
            for k in bad:
                start, end = self.ranges[k]
                try:
                    ray.get(self.shards[k].push.remote(self.index, seq, base[k], g[start:end], n))
                except PushRejected:
                    pass
            return {"applied": False, "nonfinite": True, "loss": loss}
        try:
            versions = push_all(self.shards, self.ranges, self.index, seq, base, g, n, meta,
                                buffers.numpy() if buffers.numel() else None, members,
                                after_send=self._push_pause(seq) if self.hooks.get("push_pause_s") else None)
        except NonFiniteUpdate as exc:       # the update would overflow: the model diverged
            return {"applied": False, "nonfinite": True, "error": str(exc), "loss": loss}
        except PushRejected as exc:
            return {"applied": False, "error": str(exc), "loss": loss}
        return {"applied": True, "loss": loss, "version": versions[0]}

    def _push_pause(self, seq: int) -> Callable[[], None]:
        """Test hook: sleep ``push_pause_s`` with the push sent and unanswered; while asleep the
        file ``push_pause_mark`` (if given) holds "pid seq", so a test can kill the process mid-push."""
        def pause() -> None:
            mark = self.hooks.get("push_pause_mark")
            if mark:
                Path(mark).write_text(f"{os.getpid()} {seq}", encoding="ascii")
            time.sleep(float(self.hooks["push_pause_s"]))
            if mark:
                Path(mark).unlink(missing_ok=True)
        return pause

    # ------------------------------------------------------------ compensation probe (--probe-every)

    def _pull_now(self) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """The server's current weights (no backup recorded), version and MeanSquare state, just before a push."""
        results = ray.get([s.probe_weights.remote(self.index) for s in self.shards])
        weights = torch.from_numpy(np.concatenate([r[0] for r in results]))
        rows = [r[2] for r in results]
        ms = None if rows[0] is None else torch.from_numpy(np.concatenate(rows))
        return weights, int(results[0][1]), ms

    def _probe(self, now: tuple[torch.Tensor, int, torch.Tensor | None], base: list[int], grad: torch.Tensor,
               x: torch.Tensor, y: torch.Tensor, key: int, version: int) -> dict[str, Any]:
        """One :mod:`dcasgd.probe` record for the gradient just pushed (measured after the push).

        ``w_now`` is what the shards held right before the push was sent; other
        workers' pushes may land in between, so ``staleness`` here is
        ``version of w_now - base_version`` and ``push_staleness`` the staleness the
        push was applied with.  ``lam_eff`` (dc-asgd-a) comes from the MeanSquare row
        read together with ``w_now``, updated with this gradient on a copy, as in
        the simulator (:func:`dcasgd.probe.effective_lam`).
        """
        weights_now, version_now, ms = now
        rule = make_rule(self.cfg.rule, **self.cfg.rule_params())
        state = {"mean_square": ms[None]} if ms is not None else {}
        lam_eff, lam, form = effective_lam(rule, state, grad, 0)
        dev = self.device
        if isinstance(lam_eff, torch.Tensor):
            lam_eff = lam_eff.to(dev)
        metrics = compensation_metrics(self.flat, self.weights.clone().to(dev), weights_now.to(dev),
                                       self.buffers.to(dev), x, y, key, grad.clone().to(dev), lam_eff)
        return {"version": version, "worker": self.index, "staleness": version_now - base[0],
                "push_staleness": version - 1 - base[0], "version_now": version_now, **metrics,
                "lam": lam, "lam_form": form}


# ====================================================================== driver


@dataclass
class _Actors:
    shards: list[Any]
    coordinator: Any
    workers: list[Any]


class RayRun:
    """One training job on Ray; :meth:`run` returns the summary (and writes summary.json).

    ``actor_options`` (internal): ``{"server": {...}, "worker": {...}}`` merged
    into the ``.options()`` of the server/coordinator actors and of the
    worker actors (e.g. ``{"resources": {"ps": 1}}`` to place them).
    ``on_tick(run)`` (internal, for tests) is called from the driver loop.
    ``worker_hooks`` (internal, for tests): ``{m: hooks}`` for :class:`RayWorker`.
    ``time_limit_s`` (internal, soak test): stop granting gradients after this
    many seconds of training (``stop_reason: "time_limit"``).
    """

    def __init__(self, cfg: TrainConfig, *, actor_options: dict[str, dict] | None = None,
                 on_tick: Callable[["RayRun"], None] | None = None, tick_s: float = 0.25,
                 worker_hooks: dict[int, dict[str, Any]] | None = None, time_limit_s: float | None = None) -> None:
        self.cfg = cfg
        self.actor_options = actor_options or {}
        self.on_tick = on_tick
        self.tick_s = tick_s
        self.worker_hooks = worker_hooks or {}
        self.time_limit_s = time_limit_s
        self.actors: _Actors | None = None
        self.lr = cfg.lr                          # the server's lr at the last evaluation (TensorBoard)
        self.eval_wall_s = 0.0
        self.version = 0
        self.epoch = 0.0
        self.done = False

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
        state["path"] = str(path)
        state["lost_updates"] = max(0, _last_version_seen(run_dir) - int(state["version"]))
        return state

    def _connect(self, num_params: int, data_bytes: int) -> bool:
        """Connect to Ray; returns True when this run started (and so must stop) it."""
        if ray.is_initialized():
            return False
        if self.cfg.address:
            check_reachable(self.cfg.address)
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
                    "num_train": len(ctx.data.train_y), "log_updates": k == 0, "buffers": flat.buffers.numpy()}

        coordinator_args = {"num_workers": cfg.workers, "consistency": cfg.consistency,
                            "target_samples": self.target_samples, "stop_after_updates": cfg.stop_after_updates,
                            "checkpoint_every": cfg.checkpoint_every, "max_refused": cfg.max_refused,
                            "start": dict(resume["coordinator"]) if resume else None,
                            "probe_every": cfg.probe_every}
        # a nested ObjectRef is not resolved for us: shard 0 gets the array itself
        lead = ray.remote(LeadServer).options(max_restarts=0, **server_opts).remote(
            {**shard_args(0), "weights": flat.params.numpy()}, coordinator_args)
        shard_cls = ray.remote(ServerShard)
        shards = [lead] + [shard_cls.options(max_restarts=0, **server_opts).remote(**shard_args(k))
                           for k in range(1, cfg.servers)]
        if resume is not None:
            ray.get([s.load_state.remote(sd) for s, sd in zip(shards, resume["shards"])])
        coordinator = lead
        x_ref, y_ref = ray.put(ctx.data.train_x.numpy()), ray.put(ctx.data.train_y.numpy())
        worker_cls = ray.remote(RayWorker)
        workers = [worker_cls.options(max_restarts=cfg.worker_restarts, max_task_retries=0, **worker_opts).remote(
            m, cfg, x_ref, y_ref, ctx.data.num_classes, shards, self.ranges, coordinator, self.worker_hooks.get(m))
            for m in range(cfg.workers)]
        self.actors = _Actors(shards, coordinator, workers)
        self._keep = (init_ref, x_ref, y_ref)     # constructor arguments a restarted worker needs again
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
        self.t0 = time.time() - self.elapsed_before       # time_s: wall seconds of training (continued on resume)

    # ------------------------------------------------------------ main

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._check_device()
        ctx = self.ctx = prepare_run(cfg)
        resume = self._load_resume()
        data = ctx.data
        self.flat = FlatModel(ctx.model)
        self.target_samples = math.ceil(cfg.epochs * len(data.train_y))
        try:                                               # bad input fails here, before Ray starts
            self.ranges = shard_ranges(self.flat.tensor_sizes, cfg.servers)
        except ValueError as exc:
            raise ConfigError(f"servers: {exc}") from None
        self._init_bookkeeping(resume)
        data_bytes = data.train_x.numel() * 4 + data.train_y.numel() * 8
        owns_ray = self._connect(self.flat.num_params, data_bytes)
        try:
            self._start_actors(ctx, self.flat, resume)
            self._open_outputs(resume)
            try:
                self._loop()
            except ServerLost as exc:
                self._server_lost(exc)
                raise
            summary = self._finish()
        finally:
            self._close_outputs()
            self._stop_actors()
            if owns_ray:
                ray.shutdown()
        return summary

    def _init_bookkeeping(self, resume: dict[str, Any] | None) -> None:
        cfg = self.cfg
        self.stats = StalenessStats(cfg.workers)
        self.probe = CompensationProbe.from_config(cfg)       # its records come from the workers
        self.probe_epochs: dict[int, float] = {}              # version of a probed push -> epoch
        self.evals: list[dict[str, Any]] = []
        self.events_log: list[dict[str, Any]] = []
        self.checkpoints: list[dict[str, Any]] = []
        self.gradients, self.loss_sum, self.loss_count = 0, 0.0, 0
        self.next_eval_epoch, self.last_error = 0.0, None
        self.restarts = [0] * cfg.workers
        self.worker_pids: list[int | None] = [None] * cfg.workers
        self.status: dict[str, Any] = {"refused": [0] * cfg.workers, "wait_s": [0.0] * cfg.workers,
                                       "lost_gradients": [0] * cfg.workers}
        self.durations: list[list[float]] = [[0.0, 0] for _ in range(cfg.workers)]
        self.diverged, self.stop_reason = False, None
        self.lost_updates, self.resumed_from, elapsed = 0, None, 0.0
        if resume is not None:
            d = resume["driver"]
            self.stats.load_state_dict(d["stats"])
            self.evals, self.events_log = list(d["evals"]), list(d["events"])
            self.gradients, self.next_eval_epoch = int(d["gradients"]), float(d["next_eval_epoch"])
            self.last_error = self.evals[-1]["test_error"] if self.evals else None
            self.durations = [list(x) for x in d["durations"]]
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
        self.wall_start = time.perf_counter()

    def _open_outputs(self, resume: dict[str, Any] | None) -> None:
        out = self.ctx.out
        open_run_dir(self.ctx)
        if resume is not None and self.ctx.resume_dir.resolve() != out.resolve():
            for name in ("metrics.jsonl", "trace.jsonl"):              # a resumed copy continues its history
                source = self.ctx.resume_dir / name
                if source.is_file():
                    shutil.copyfile(source, out / name)
        append = resume is not None and (out / "metrics.jsonl").exists()
        self.metrics = open_metrics(out / "metrics.jsonl", self.cfg.tensorboard, lr=lambda: self.lr, append=append)
        self.trace = open(out / "trace.jsonl", "a" if append else "w", encoding="utf-8")
        self.progress = Progress(self.cfg.epochs, enabled=self.cfg.progress)
        if resume is not None:
            self._log_event("resumed", -1, version=self.version, lost_updates=self.lost_updates,
                            checkpoint=resume["path"])
        else:
            self._evaluate()                                  # error at epoch 0

    def _close_outputs(self) -> None:
        for name in ("metrics", "trace"):
            handle = getattr(self, name, None)
            if handle is not None:
                handle.close()
                setattr(self, name, None)
        if getattr(self, "progress", None) is not None:
            self.progress.close()
            self.progress = None

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
        self.pending = {w.run.remote(): m for m, w in enumerate(a.workers)}
        self.restarting: dict[int, float] = {}          # worker -> when its restart was asked for
        self.resubmit_at: dict[int, float] = {}         # worker -> when to call run() again
        event_ref = a.coordinator.wait_event.remote(self.tick_s)
        stop_asked = False
        while self.pending or self.resubmit_at:
            if (self.time_limit_s is not None and not stop_asked
                    and time.perf_counter() - self.loop_start >= self.time_limit_s):
                stop_asked = True
                self._server_call(a.coordinator.request_stop.remote("time_limit"))
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
            if self.epoch + 1e-12 >= self.next_eval_epoch:
                self._evaluate()
            if self.on_tick is not None:
                self.on_tick(self)
            self.progress.update(self.epoch, self._train_loss(), self.last_error, self.version, self.stats)
        self.done = True
        self.loop_s = time.perf_counter() - self.loop_start
        # The wait_event call still outstanding takes (and empties) the coordinator's events and probe
        # records when it wakes: read its answer, or what it took is lost; then whatever came after it.
        self._on_status(self._server_call(event_ref))
        self._on_status(self._server_call(a.coordinator.wait_event.remote(0)))
        self._drain()

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
        self.diverged = self.diverged or status["diverged"]
        self.stop_reason = status["stop_reason"]
        self.worker_pids = status.get("pids", self.worker_pids)     # (fault tests kill these)
        for record in status.get("probes", ()):
            self._probe_record(record)
        if self.probe is not None:
            self.probe.pushes = int(status.get("probe_pushes", self.probe.pushes))   # counted by the coordinator
        if status["checkpoint_ready"]:
            self._drain()                                     # the log up to the pause, then the snapshot
            self._checkpoint()
            self._server_call(self.actors.coordinator.checkpoint_done.remote())

    def _worker_exit(self, m: int, ref: Any) -> None:
        try:
            ray.get(ref)
            return                                            # stopped when told
        except ray.exceptions.RayTaskError as exc:            # run() raised while its process lived
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
            self.stats.record(r["worker"], int(r["staleness"]))
            if "loss" in r:
                self.loss_sum += r["loss"]
                self.loss_count += 1
            if "duration_s" in r:
                self.durations[r["worker"]][0] += r["duration_s"]
                self.durations[r["worker"]][1] += 1
            self.metrics.write("update", version=r["version"], worker=r["worker"], staleness=r["staleness"],
                               loss=r.get("loss"), time_s=r["t_applied"], epoch=r["epoch"],
                               clock=r.get("clock"), clock_gap=r.get("clock_gap"))
            self.trace.write(json.dumps({k: r.get(k) for k in ("worker", "seq", "base_version", "version",
                                                                 "staleness", "t_pull", "t_push", "duration_s")},
                                        sort_keys=True) + "\n")
        self.trace.flush()

    def _probe_record(self, record: dict[str, Any]) -> None:
        """A worker's compensation-probe record: a ``probe`` line and one more record for the summary."""
        if self.probe is None:
            return
        record = {**record, "epoch": self.probe_epochs.pop(record["version"], self.epoch)}
        self.probe.records.append(record)
        self.metrics.write("probe", **record)

    def _train_loss(self) -> float:
        return self.loss_sum / self.loss_count if self.loss_count else math.nan

    def _pull_weights(self) -> tuple[torch.Tensor, torch.Tensor, int, float]:
        results = self._server_call_all([s.weights.remote() for s in self.actors.shards])
        weights = torch.from_numpy(np.concatenate([r[0] for r in results]))
        buffers = torch.from_numpy(np.array(results[0][2]))
        return weights, buffers, int(results[0][1]), float(results[0][3])

    def _evaluate(self) -> None:
        started = time.perf_counter()
        weights, buffers, version, lr = self._pull_weights()
        self.lr = lr
        threads = torch.get_num_threads()
        torch.set_num_threads(1)                 # the workers own the cores; OpenMP spinning costs 10x
        try:
            error, test_loss = evaluate(self.flat, weights, buffers, self.ctx.eval_x, self.ctx.eval_y)
        finally:
            torch.set_num_threads(threads)
        self.version = max(self.version, version)
        train_loss = self.loss_sum / self.loss_count if self.loss_count else None
        record = {"epoch": self.epoch, "version": version, "time_s": time.time() - self.t0,
                  "wall_s": time.perf_counter() - self.wall_start, "test_error": error, "test_loss": test_loss,
                  "train_loss": train_loss, "lr": lr}
        self.metrics.write("eval", **{k: v for k, v in record.items() if k != "wall_s"})
        self.metrics.write("staleness", version=version, **self._staleness())
        self.metrics.flush()
        self.evals.append(record)
        self.eval_wall_s += time.perf_counter() - started
        self.last_error = error
        self.loss_sum, self.loss_count = 0.0, 0
        self.next_eval_epoch = advance_eval_mark(self.next_eval_epoch, self.epoch, self.cfg.eval_every)

    def _staleness(self) -> dict[str, Any]:
        self.stats.wait_s = [float(w) for w in self.status["wait_s"]]
        return self.stats.summary()

    def _log_event(self, what: str, worker: int, time_s: float | None = None, version: int | None = None,
                   **extra: Any) -> None:
        record = {"event": what, "worker": worker, "time_s": time.time() - self.t0 if time_s is None else time_s,
                  "version": self.version if version is None else version, **extra}
        if what not in ("checkpoint", "resumed"):           # as the simulator's worker_events
            self.events_log.append(record)
        self.metrics.write("event", **record)
        self.metrics.flush()

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
            "ranges": [list(r) for r in self.ranges],
            "shards": shard_states,
            "coordinator": self._server_call(a.coordinator.coordinator_state.remote()),
            "driver": {"stats": self.stats.state_dict(), "evals": self.evals, "events": self.events_log,
                       "gradients": self.gradients, "next_eval_epoch": self.next_eval_epoch, "epoch": self.epoch,
                       "durations": self.durations, "elapsed_s": time.time() - self.t0,
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
        summary = self._summary_fields()
        summary.update({"server_failed": True, "error": str(exc), "lost_updates": self.lost_updates,
                        "last_checkpoint_version": last_ckpt if self.last_ckpt_version >= 0 else None})
        write_summary(self.ctx.out, summary)

    # ------------------------------------------------------------ the end

    def _finish(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.stop_reason is None and not self.diverged:
            self._log_event("stopped_no_live_workers", -1)
        elif self.stop_reason in ("stop_after_updates", "max_refused", "time_limit"):
            self._log_event("stopped_early", -1, reason=self.stop_reason)
        if self.diverged:
            self.last_error = 100.0 * (1 - 1 / self.ctx.data.num_classes)     # chance level, as sim
            self.evals.append({**self.evals[-1], "version": self.version, "test_error": self.last_error})
        elif not self.evals or self.evals[-1]["version"] != self.version:
            self._evaluate()
        if cfg.checkpoint_every and not self.diverged:
            self._checkpoint()
        self.progress.update(self.epoch, self._train_loss(), self.last_error, self.version, self.stats, force=True)
        infos = self._server_call_all([s.info.remote() for s in self.actors.shards])
        self.clipped = max(i["clipped"] for i in infos)
        summary = self._summary_fields()
        write_summary(self.ctx.out, summary)
        return summary

    def _outcome(self) -> str:
        """How the run ended (:data:`dcasgd.run.OUTCOMES`)."""
        if self.diverged:
            return "diverged"
        if self.stop_reason == "max_refused":
            return "max_refused"
        if self.stop_reason in ("stop_after_updates", "time_limit"):
            return "stopped"
        return "finished" if self.stop_reason == "target" else "no_live_workers"

    def _summary_fields(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall_start
        staleness = self._staleness()
        means = [s / c if c else None for s, c in self.durations]
        fastest = min((x for x in means if x), default=None)
        return {
            "final_test_error": self.last_error,
            "eval_split": self.cfg.eval_split,
            "diverged": self.diverged,
            "updates": self.version,
            "gradients": self.gradients,
            "epochs_done": self.epoch,
            "mean_staleness": staleness["overall"]["mean"],
            "max_staleness": staleness["overall"]["max"],
            "wall_time_s": wall,
            "eval_wall_s": self.eval_wall_s,
            "updates_per_s": (self.version - self.start_version) / max(getattr(self, "loop_s", wall), 1e-9),
            "training_s": getattr(self, "loop_s", None),
            "staleness": staleness,
            "pushes_per_worker": staleness["pushes_per_worker"],
            "wait_s_per_worker": staleness["wait_s_per_worker"],
            "refused_per_worker": list(self.status["refused"]),
            "lost_gradients_per_worker": list(self.status.get("lost_gradients", [])),
            "clipped_updates": getattr(self, "clipped", None),   # with S > 1 shards: the most of any shard
            "worker_events": self.events_log,
            "speeds": [x / fastest if (x and fastest) else None for x in means],
            "compute_s_per_gradient": means,
            "emulated_slowdown": emulated_slowdowns(self.cfg),
            "curve": [{k: r[k] for k in ("epoch", "time_s", "test_error")} for r in self.evals],
            "backend": "ray",
            "config": self.cfg.to_dict(),
            "server_bytes_per_param": self.server_bytes / self.flat.num_params,
            "servers": self.cfg.servers,
            "shard_ranges": [list(r) for r in self.ranges],
            "placement": self.placement,
            "stop_reason": self.stop_reason,
            "lost_updates": self.lost_updates,
            "resumed_from": self.resumed_from,
            "checkpoints": self.checkpoints,
            "worker_restarts_used": self.restarts,
            "ignored_settings": self.ctx.ignored_settings,
            "outcome": self._outcome(),
            **({"probe": self.probe.summary()} if self.probe is not None else {}),
        }


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


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, with one line, when nothing listens at a Ray cluster address (``auto`` is Ray's to find)."""
    host_port = check_address(address)
    if host_port is None:
        return
    host, port = host_port
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"address: cannot reach a Ray cluster at {address} ({reason}); start one with "
                              f"'ray start --head' there, or leave out --address for a local Ray") from None


def run_ray(cfg: TrainConfig, *, actor_options: dict[str, dict] | None = None,
            on_tick: Callable[[RayRun], None] | None = None,
            worker_hooks: dict[int, dict[str, Any]] | None = None,
            time_limit_s: float | None = None) -> dict[str, Any]:
    """Validate ``cfg``, train on Ray (local loopback Ray unless ``cfg.address``), return the summary.

    The keywords are internal (tests, soak): see :class:`RayRun`.
    """
    return RayRun(cfg, actor_options=actor_options, on_tick=on_tick, worker_hooks=worker_hooks,
                  time_limit_s=time_limit_s).run()
