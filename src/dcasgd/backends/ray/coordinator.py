"""The coordinator: worker clocks, consistency waits, grants, stop, checkpoint and evaluation pauses.

Plain asyncio, no Ray: the Ray backend runs it inside the lead server actor
(:class:`dcasgd.backends.ray.shard.LeadServer`), and its tests run it on an
event loop of their own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from ...core.consistency import parse_consistency
from ...engine.recorder import advance_eval_mark


@dataclass
class _Grant:
    go: bool
    reason: str = ""
    clock: int = 0
    clock_gap: int = 0
    members: list[int] = field(default_factory=list)
    probe: bool = False          # also measure the delay compensation for this gradient (--probe-every)


REFERENCE_CYCLES = 32             # the reference cycle is the mean of the unslowed workers' last this many


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

    The modes that drop jobs (:mod:`dcasgd.core.consistency`; one shard, the
    coordinator's own LeadServer): grants go as in ``async``, except that an
    ``msync`` worker whose gradient waits in shard 0's open batch
    (:attr:`batch_holds`) waits until that step is applied.  A push the shard
    dropped (``discarded``/``cancelled`` in the report) gives its grant back
    and is counted per worker; the worker pulls the current weights with its
    next grant.  In ``msync`` and ``rennala`` a grant is a gradient, not an
    update: the updates are shard 0's version (:attr:`server_version`).

    Emulated slowness: the ``reference_workers`` (the unslowed ones, when
    some are slowed) report each gradient's cycle (:meth:`observe_cycle`);
    every grant carries ``ref_cycle_s``, the mean of their last
    ``REFERENCE_CYCLES`` cycles, which a slowed worker's
    :class:`~dcasgd.engine.speeds.SlowdownPacer` multiplies by its factor.
    A grant also says how long this call held the worker: ``wait_s``
    (consistency waits, checkpoint pauses) and ``held_s`` (evaluation pauses).
    """

    def __init__(self, num_workers: int, consistency: str, target_samples: int, stop_after_updates: int = 0,
                 checkpoint_every: int = 0, max_refused: int = 0, start: dict[str, Any] | None = None,
                 probe_every: int = 0, num_train: int = 1, reference_workers: list[int] | None = None) -> None:
        start = start or {}
        self.M = num_workers
        self.consistency = parse_consistency(consistency)
        self.sync = self.consistency.mode == "sync"
        self.batched = self.consistency.mode in ("msync", "rennala")   # shard 0 averages a batch per update
        self.per_grant = not (self.sync or self.batched)               # one granted gradient = one update
        self.discarded = list(start.get("discarded", [0] * num_workers))   # pushes dropped on arrival
        self.cancelled = list(start.get("cancelled", [0] * num_workers))   # ... or whose step was over
        self.batch_holds: Callable[[int], bool] = lambda worker: False     # (set by LeadServer)
        self.server_version: Callable[[], int] | None = None               # (set by LeadServer)
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
        self.ckpt_ready, self.ckpt_pauses = False, 0        # a checkpoint pause is ready; how many so far
        # evaluation pauses (pause_for_evaluations): training stops at each mark while the driver evaluates
        self.num_train, self.eval_every, self.next_eval_epoch = num_train, 0.0, 0.0
        self.eval_ready, self.eval_pauses = False, 0        # a pause is ready; how many so far (numbers them)
        self.held_s, self.hold_since = 0.0, 0.0    # timer seconds paused for evaluations, when this pause began
        self.held_wait_s = [0.0] * num_workers    # per worker: seconds of its waits that fell in those pauses
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
        self.reference_workers = frozenset(reference_workers or ())
        self.reference_cycles: deque[float] = deque(maxlen=REFERENCE_CYCLES)

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
        entered, held_before = self.timer(), self._held_clock()
        async with self.cond:
            if generation != self.generation[worker]:
                return vars(_Grant(False, "superseded"))
            if report is not None:
                self._report(worker, report)
            self.pending_n[worker] = num_samples
            if self.sync:
                self.waiting.add(worker)
            self._check_pauses()
            self.cond.notify_all()
            while True:
                if generation != self.generation[worker] or worker not in self.live:
                    return vars(_Grant(False, "dead"))
                grant = self._decide_sync(worker) if self.sync else self._decide_async(worker)
                if grant is not None:
                    held = self._held_clock() - held_before
                    waited = (self.timer() - entered) - held
                    self.wait_s[worker] += waited
                    self.held_wait_s[worker] += held
                    if not grant.go:
                        self.live.discard(worker)
                        self.finished.add(worker)
                        self.waiting.discard(worker)
                        self._attention.set()
                    self.cond.notify_all()
                    return {**vars(grant), "wait_s": waited, "held_s": held, "ref_cycle_s": self.reference_cycle_s}
                await self.cond.wait()

    async def applied(self, worker: int, num_samples: int = 0) -> None:
        """Shard 0 applied worker's granted gradient (called from shard 0's push, same process).

        A push that arrives after its worker was declared dead (its grant given
        back) still counts: shard 0 applied it, so it is taken back from the grants.
        """
        async with self.cond:
            if self.unapplied[worker] is None and not self.sync and num_samples:
                self.granted_samples += num_samples
                self.granted_updates += self.per_grant
                self.unapplied[worker] = num_samples
                if self.lost[worker]:
                    self.lost[worker] -= 1
            self._count_applied(worker)
            self._read_version()
            self.cond.notify_all()

    def observe_cycle(self, worker: int, cycle_s: float | None) -> None:
        """A gradient of ``worker`` was applied after a cycle of ``cycle_s`` seconds (holds left out)."""
        if worker in self.reference_workers and cycle_s is not None and cycle_s > 0:
            self.reference_cycles.append(float(cycle_s))

    @property
    def reference_cycle_s(self) -> float | None:
        """The unslowed workers' mean cycle over their last ``REFERENCE_CYCLES`` gradients (None: none yet)."""
        return sum(self.reference_cycles) / len(self.reference_cycles) if self.reference_cycles else None

    def _count_applied(self, worker: int) -> None:
        n = self.unapplied[worker]
        if n is None:
            return
        self.unapplied[worker] = None
        self.clock[worker] += 1
        self.applied_samples += n
        if self.per_grant:
            self.applied_updates += 1

    def _read_version(self) -> None:
        """msync, rennala: the updates applied are shard 0's version (a batch may have just been applied)."""
        if self.batched and self.server_version is not None:
            self.applied_updates = self.server_version()

    def _release(self, worker: int, lost: bool = False) -> None:
        """Forget worker's grant; one that never reached shard 0 is given back (``lost``: the worker died)."""
        n = self.unapplied[worker]
        if n is not None:
            self.granted_samples -= n
            self.lost[worker] += bool(lost)
            if self.per_grant:
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
        elif report.get("discarded") or report.get("cancelled"):
            self._release(worker)                # no gradient applied: the grant goes back
            (self.discarded if report.get("discarded") else self.cancelled)[worker] += 1
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
        """No new grants: a checkpoint or an evaluation is due."""
        return self._checkpoint_due() or self._evaluation_due()

    def _checkpoint_due(self) -> bool:
        return bool(self.ckpt_every) and (self.granted_updates if self.per_grant else self.applied_updates) >= self.next_ckpt

    def _evaluation_due(self) -> bool:
        """The granted samples reach the next evaluation mark (epochs) before the end of training."""
        return (bool(self.eval_every) and self.granted_samples < self.target_samples
                and self.granted_samples / self.num_train + 1e-12 >= self.next_eval_epoch)

    def _quiet(self) -> bool:
        """No gradient in flight: every granted one has reached every shard (sync: no round open)."""
        return (not self.round_active) if self.sync else all(n is None for n in self.inflight)

    def _decide_async(self, worker: int) -> _Grant | None:
        reason = self._stop()
        if reason:
            return _Grant(False, reason)
        if self.granted_samples >= self.target_samples or (self.stop_after and self.per_grant
                                                           and self.granted_updates >= self.stop_after):
            return None            # in-flight gradients reach the target unless their worker dies (or are dropped)
        if self._paused():
            return None
        live_clocks = [self.clock[o] for o in self.live]
        if not self.consistency.may_start(self.clock[worker], live_clocks):
            return None
        if self.consistency.mode == "msync" and self.batch_holds(worker):
            return None            # one gradient per worker per step: wait for this step to be applied
        n = self.pending_n[worker]
        self.granted_updates += self.per_grant
        self.granted_samples += n
        self.inflight[worker] = self.unapplied[worker] = n
        probe = False
        if self.probe_every and not self.batched:      # (a batch's mean has no delay to probe, as in sync)
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

    def _check_pauses(self) -> None:
        """Tell the driver (attention) once a due checkpoint or evaluation finds no gradient in flight."""
        if not self._quiet():
            return
        if not self.ckpt_ready and self._checkpoint_due():
            self.ckpt_ready = True
            self.ckpt_pauses += 1
            self._attention.set()
        if not self.eval_ready and self._evaluation_due():
            self.eval_ready, self.hold_since = True, self.timer()
            self.eval_pauses += 1
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
            self._read_version()                 # (the shard, told first, may have applied a smaller msync quorum)
            if self.sync and self.round_active and worker in self.members and worker not in self.reported:
                self.members.discard(worker)
                if not self.members:
                    self.granted_updates -= 1
                    self.round_active = False
                self._maybe_end_round()
            self._check_pauses()
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

    def _held_clock(self) -> float:
        """Timer seconds training has stood still for evaluations so far (``wait_s`` leaves them out)."""
        return self.held_s + (self.timer() - self.hold_since if self.eval_ready else 0.0)

    async def pause_for_evaluations(self, eval_every: float, next_eval_epoch: float) -> None:
        """From now on stop granting at every ``eval_every`` epochs of granted samples, from ``next_eval_epoch``
        on, until the driver has evaluated (``evaluation_ready`` in :meth:`status`, then :meth:`evaluation_done`)."""
        async with self.cond:
            self.eval_every, self.next_eval_epoch = eval_every, next_eval_epoch

    async def evaluation_done(self) -> None:
        """The driver evaluated the weights at the mark: training goes on to the next mark."""
        async with self.cond:
            if self.eval_ready:
                self.held_s += self.timer() - self.hold_since
            self.eval_ready = False
            self.next_eval_epoch = advance_eval_mark(self.next_eval_epoch, self.granted_samples / self.num_train,
                                                     self.eval_every)
            self._check_pauses()
            self.cond.notify_all()

    async def checkpoint_done(self) -> None:
        async with self.cond:
            self.ckpt_ready = False
            while self.ckpt_every and self.next_ckpt <= self.applied_updates:
                self.next_ckpt += self.ckpt_every
            self._check_pauses()
            self.cond.notify_all()

    async def request_stop(self, reason: str) -> None:
        async with self.cond:
            self.stop_reason = self.stop_reason or reason
            self.cond.notify_all()

    def status(self) -> dict[str, Any]:
        events, self.events = self.events, []
        probes, self.probes = self.probes, []
        return {"events": events, "probes": probes, "probe_pushes": self.probe_pushes, "pids": list(self.pids),
                "lost_gradients": list(self.lost), "discarded": list(self.discarded),
                "cancelled": list(self.cancelled),
                "checkpoint_ready": self.ckpt_pauses if self.ckpt_ready else 0,
                "evaluation_ready": self.eval_pauses if self.eval_ready else 0,
                "stop_reason": self._stop(),
                "diverged": self.diverged, "refused": list(self.refused), "wait_s": list(self.wait_s),
                "held_s": list(self.held_wait_s), "live": sorted(self.live), "finished": sorted(self.finished),
                "updates": self.applied_updates, "samples": self.applied_samples, "clock": list(self.clock)}

    async def coordinator_state(self) -> dict[str, Any]:
        return {"updates": self.applied_updates, "samples": self.applied_samples, "clock": list(self.clock),
                "refused": list(self.refused), "wait_s": list(self.wait_s), "lost_gradients": list(self.lost),
                "probe_pushes": self.probe_pushes, "discarded": list(self.discarded),
                "cancelled": list(self.cancelled)}
