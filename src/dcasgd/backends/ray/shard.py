"""Server shards: a ServerCore over one slice of the flat weights, exactly-once pushes and the update log.

:class:`ServerShard` is a plain actor; :class:`LeadServer` is shard 0 and the
coordinator in one asyncio actor.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from typing import Any, Callable, Sequence

import numpy as np
import ray
import torch

from ...core.consistency import APPLY, DISCARD, GradientDiscarded, JobCancelled, JobDropped, PointBatch, \
    SyncBarrier, parse_consistency
from ...core.kernels import all_finite
from ...core.server import NonFiniteUpdate, PushRejected, ServerCore
from ...engine.context import proc_bytes
from ...engine.timing import CYCLE_PARTS, HOLD_PARTS
from ...io.checkpoint import CheckpointError
from . import shm
from .coordinator import Coordinator

INLINE_BYTES = 100 * 1024             # Ray sends smaller objects inline, larger ones via the object store


class ServerShard:
    """A ServerCore over one slice of the flat vector, with exactly-once pushes and an update log.

    ``weights`` is the whole initial flat vector (numpy or tensor); this shard
    keeps ``weights[start:end]``.  With ``consistency="sync"`` pushes of one
    round are summed in a SyncBarrier and applied as their average when every
    expected worker has pushed (or died).  Shard 0 (``log_updates``) logs each
    applied push and keeps the BatchNorm buffers.

    The modes that drop jobs need one shard (``TrainConfig.validate`` says so):
    ``msync:m`` and ``rennala:S`` buffer gradients taken at the current version
    in a :class:`~dcasgd.core.consistency.PointBatch` and apply their mean once
    min(m, live workers) (msync) or S (rennala) are in; a push taken at an older
    version belongs to a step that is over and is refused with
    :class:`~dcasgd.core.consistency.JobCancelled`.  ``ringmaster:R`` refuses a push
    whose delay is R or more with :class:`~dcasgd.core.consistency.GradientDiscarded`
    (``ringmaster-stop:R``: :class:`~dcasgd.core.consistency.JobCancelled`, the stop
    found on arrival).  A dropped push changes nothing here, not even ``last_seq``.
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
        self.consistency = parse_consistency(consistency)
        self.sync = self.consistency.mode == "sync"
        self.batched = self.consistency.mode in ("msync", "rennala")   # a PointBatch at the current version
        self.batch = PointBatch()
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
        :func:`dcasgd.engine.probe.effective_lam` turns it into ``lam_eff`` for that push.
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
        elif self.batched:
            logged_version, staleness = self._push_batched(worker, g, base_version, num_samples)
            version = self.core.version
        else:
            self._set_lr(self.samples + num_samples)
            staleness = self.core.version - base_version if isinstance(base_version, int) else 0
            self._check_arrival(worker, staleness)
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
                             **{k: meta[k] for k in ("t_pull", "duration_s", "loss", "clock", "clock_gap", "probe",
                                                     *CYCLE_PARTS, *HOLD_PARTS) if k in meta}})
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

    def _check_arrival(self, worker: int, delay: int) -> None:
        """Raise :class:`JobDropped` for a push the consistency policy drops on arrival (delay ``delay``)."""
        verdict = self.consistency.arrival(delay)
        if verdict == APPLY:
            return
        dropped = GradientDiscarded if verdict == DISCARD else JobCancelled
        raise dropped(f"worker {worker}: {dropped.kind} (delay {delay} under {self.consistency.name}, "
                      f"version {self.core.version})")

    def _push_batched(self, worker: int, g: torch.Tensor, base_version: int, num_samples: int) -> tuple[int, int]:
        """msync / rennala: add a gradient taken at the current version to its batch; the last one the step
        needs applies the batch's mean.  Returns (the version this step produces, staleness 0)."""
        self._check_arrival(worker, self.core.version - base_version if isinstance(base_version, int) else 0)
        self.core.validate(worker, g, base_version)
        if self.batch.version != self.core.version:
            self.batch.start(self.core.version, 0)
        if self.consistency.mode == "msync" and worker in self.batch.received:
            self.core.refused[worker] += 1
            raise PushRejected(f"worker {worker}: already gave its gradient to the step at version "
                               f"{self.core.version} (msync takes one per worker)")
        self.batch.add(worker, g, base_version)
        self.samples += num_samples
        step_version = self.core.version + 1
        self._maybe_step()
        return step_version, 0

    def _maybe_step(self) -> None:
        """Apply the batch's mean once it holds the gradients the step needs (msync: min(m, live workers))."""
        if self.batch.version != self.core.version or not self.batch.received:
            return
        self.batch.size = self.consistency.quorum(self.num_workers - len(self.dead))
        if self.batch.complete:
            self._set_lr(self.samples)
            self.batch.apply(self.core, lambda m: self.batch.version)

    def batch_holds(self, worker: int) -> bool:
        """Whether ``worker``'s gradient waits in the open batch (msync: it may not start the next one yet)."""
        return self.batch.version == self.core.version and worker in self.batch.received

    def _maybe_finish_round(self) -> None:
        if not self.round_active:
            return
        if self.barrier.complete:
            self._set_lr(self.samples)
            self.barrier.apply(self.core, self.round_base.__getitem__)
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
        if self.batched:
            self._maybe_step()                                       # msync: a smaller quorum may be in
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
                "samples": self.samples, "buffers": self.buffers.clone(),
                **({"batch": self.batch.state_dict()} if self.batched else {})}

    def load_state(self, sd: dict[str, Any]) -> int:
        if (sd.get("start"), sd.get("end")) != (self.start, self.end):
            raise CheckpointError(f"checkpoint shard covers [{sd.get('start')}, {sd.get('end')}), this shard "
                                  f"[{self.start}, {self.end}): resume with the same --servers and model")
        self.core.load_state_dict(sd["core"])
        self.last_seq, self.last_version = list(sd["last_seq"]), list(sd["last_version"])
        self.samples = int(sd["samples"])
        if sd["buffers"].numel() == self.buffers.numel():
            self.buffers.copy_(sd["buffers"])
        if "batch" in sd:
            self.batch.load_state_dict(sd["batch"])
        return self.core.version


def _rss_bytes() -> int:
    """VmRSS of this process in bytes (Linux /proc), else the peak from getrusage."""
    rss = proc_bytes("/proc/self/status", "VmRSS")
    if rss is not None:
        return rss
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _readonly_tensor(array: Any) -> torch.Tensor:
    """A float32 tensor over ``array`` without copying (object-store arrays are read-only)."""
    if isinstance(array, torch.Tensor):
        return array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)              # "not writable": we only read it
        return torch.from_numpy(np.asarray(array))


class LeadServer:
    """Shard 0 and the coordinator in one asyncio actor: one process fewer to start per run.

    Ray runs the plain (shard) methods of an asyncio actor one at a time on its
    event-loop thread, so pushes stay serial; the coordinator's coroutines
    wait on the same loop without blocking it.
    """

    def __init__(self, shard: dict[str, Any], coordinator: dict[str, Any], shm_prefix: str | None = None) -> None:
        self.shard = ServerShard(**shard)
        self.shard.replies_before_next_call = False   # a coroutine may run while a reply is serialised
        self.coordinator = Coordinator(**coordinator)
        self.coordinator.batch_holds = self.shard.batch_holds                 # msync waits, rennala steps:
        self.coordinator.server_version = lambda: self.shard.core.version     # ... what shard 0 holds
        self.shm_prefix = shm_prefix
        self.links: dict[int, dict[str, torch.Tensor]] = {}   # worker -> its shared files (same node only)
        self._channel: asyncio.AbstractServer | None = None    # the step socket of same-node workers
        self.spent = {"steps": 0, "push_s": 0.0, "pull_s": 0.0}   # server time inside step calls

    async def attach(self, worker: int, node_id: str) -> dict[str, str] | None:
        """Shared-memory files and the step socket for ``worker`` if it runs on this node (:mod:`.shm`),
        else None.  A restarted worker gets the same files again.
        """
        self.shard._check_worker(worker)
        here = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        if self.shm_prefix is None or node_id != here or not shm.available():
            return None
        files = shm.paths(self.shm_prefix, worker)
        if worker not in self.links:
            sizes = {"grad": self.shard.core.num_params, "weights": self.shard.core.num_params,
                     "buffers": self.shard.buffers.numel()}
            self.links[worker] = {kind: shm.create(path, sizes[kind]) for kind, path in files.items()}
        if self._channel is None:
            path = shm.socket_path(self.shm_prefix)
            self._channel = await asyncio.start_unix_server(self._serve, path=path)
            os.chmod(path, 0o600)                               # this user's processes only
        return {**files, "socket": shm.socket_path(self.shm_prefix)}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's connection: each message is a :meth:`step` call, answered in order."""
        try:
            while (message := await shm.read_message(reader)) is not None:
                try:
                    reply = await self.step(*message["step"])
                except Exception as exc:  # noqa: BLE001 - the worker raises it (the run fails, as with Ray)
                    reply = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write(shm.encode(reply))
                await writer.drain()
        except (ConnectionError, OSError):
            pass                                                # the worker died: its grant is the driver's
        finally:
            writer.close()

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
            self.coordinator.observe_cycle(worker, (meta or {}).get("cycle_s"))
            await self.coordinator.applied(worker, num_samples)
        return version

    @ray.method(enable_task_events=False)            # the hot path: no per-call task records in Ray's GCS
    async def step(self, worker: int, generation: int, push: dict[str, Any] | None, num_samples: int,
                   grad: np.ndarray | None = None) -> dict[str, Any]:
        """A whole gradient exchange in one call, for a one-shard server: push, next grant, pull.

        ``push`` (None to begin) holds ``seq``, ``base_version``, ``grad``, ``num_samples``,
        ``meta``, ``buffers`` and ``members``;
        it is applied exactly as :meth:`push` would (a retried seq is not applied twice).
        A worker off this node sends the gradient as ``grad``, an argument of its own: Ray
        hands a top-level array to an asyncio actor several times faster than one nested in
        a dict (``benchmarks/ray_transport.py``); on this node it sits in the worker's shared
        file (both None).  The
        reply: ``report`` (what became of the push), ``grant`` (the coordinator's answer for
        the next gradient of ``num_samples`` samples, which may have waited: ssp, sync,
        a checkpoint pause) and ``pulled`` (this shard's :meth:`ServerShard.pull`, when granted).
        Three messages per gradient (grant, pull, push) become one.
        """
        report: dict[str, Any] = {}
        link = self.links.get(worker)
        started = time.perf_counter()
        if push is not None:
            report["loss"] = push["meta"].get("loss")
            if grad is None:
                grad = link["grad"] if push.get("grad") is None else push["grad"]   # None: in the shared file
            if push["buffers"] == "shared":
                push = {**push, "buffers": link["buffers"]}
            try:
                report["version"] = await self.push(worker, push["seq"], push["base_version"], grad,
                                                    push["num_samples"], push["meta"], push["buffers"],
                                                    push["members"])
                report["applied"] = True
            except JobDropped as exc:                      # discarded or cancelled by the consistency policy
                report.update(applied=False, **{exc.kind: True})
            except NonFiniteUpdate as exc:                 # the update would overflow: the model diverged
                report.update(applied=False, nonfinite=True, error=str(exc))
            except PushRejected as exc:                    # (a NaN/Inf gradient is a divergence, not an error)
                nonfinite = not all_finite(_readonly_tensor(grad))
                report.update(applied=False, **({"nonfinite": True} if nonfinite else {"error": str(exc)}))
        pushed = time.perf_counter()
        grant = await self.coordinator.next(worker, generation, report or None, num_samples)
        pulled = None
        if grant["go"]:
            granted = time.perf_counter()
            pulled = self.shard.pull(worker) if link is None else self._pull_into(worker, link)
            grant["pull_s"] = time.perf_counter() - granted          # the server's part of the pull
            self.spent["pull_s"] += grant["pull_s"]
        self.spent["steps"] += 1
        self.spent["push_s"] += pushed - started
        return {"report": report, "grant": grant, "pulled": pulled}

    def _pull_into(self, worker: int, link: dict[str, torch.Tensor]) -> tuple[None, int, None]:
        """A pull written straight into the worker's shared files (weights and BatchNorm buffers):
        (None, version, None)."""
        weights, version = self.shard.core.pull(worker, copy=False)
        link["weights"].copy_(weights)                      # plain code: nothing else runs on the loop meanwhile
        if self.shard.buffers.numel():
            link["buffers"].copy_(self.shard.buffers)
        return None, version, None

    def join(self, worker: int) -> int:
        return self.shard.join(worker)

    def drop_worker(self, worker: int) -> int:
        return self.shard.drop_worker(worker)

    def drain(self) -> list[dict[str, Any]]:
        return self.shard.drain()

    def info(self) -> dict[str, Any]:
        return {**self.shard.info(), "step_time": dict(self.spent)}

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

    async def pause_for_evaluations(self, eval_every: float, next_eval_epoch: float) -> None:
        await self.coordinator.pause_for_evaluations(eval_every, next_eval_epoch)

    async def evaluation_done(self) -> None:
        await self.coordinator.evaluation_done()

    async def request_stop(self, reason: str) -> None:
        await self.coordinator.request_stop(reason)

    async def coordinator_state(self) -> dict[str, Any]:
        return await self.coordinator.coordinator_state()
