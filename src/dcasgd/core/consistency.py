"""Consistency policies: when a push is applied, buffered or dropped, and when a worker may go on.

======================  ==============================================================
``sync``                barrier: every live worker computes at the same weights; the
                        round's gradients are averaged and applied as one update
                        (effective batch M*b).  With a ``dc-*`` rule the delay is zero,
                        so the compensation term vanishes and the rule behaves as sgd.
``async``               every push is applied on arrival; workers never wait.
``ssp:S``               pushes applied on arrival, but a worker whose clock (gradients
                        pushed so far) is more than S ahead of the slowest live
                        worker's clock waits before it starts its next gradient.
                        ``ssp:0`` is a barrier in time (but without averaging).
``msync:m``             m-synchronous SGD: every live worker starts at x^k; the step
                        averages the first m gradients to arrive (at most one per
                        worker) and every worker restarts at x^{k+1}; the other jobs
                        are cancelled.  ``msync:M`` is ``sync``.
``rennala:S``           Rennala SGD (Tyurin and Richtarik, NeurIPS 2023): every
                        worker computes at x^k; the server averages the first S
                        gradients taken at x^k (a fast worker may give several:
                        after its push it computes again at x^k), steps once, and
                        every worker restarts at x^{k+1}, its job in flight cancelled.
``ringmaster:R``        Ringmaster ASGD without stops (Maranjyan, Tyurin and
                        Richtarik, ICML 2025): a gradient arriving with delay
                        tau < R is applied, one with tau >= R is discarded; either
                        way its worker restarts at the current weights.
``ringmaster-stop:R``   Ringmaster ASGD with stops: a job is cancelled as soon as its
                        delay reaches R (its worker restarts at the current weights
                        then), so no applied delay exceeds R - 1.
======================  ==============================================================

The maths.  Write x^k for the weights after k updates and tau = k - k' for
the delay of a gradient computed at x^{k'} and arriving at x^k.

- m-sync and Rennala step with a mean of gradients all taken at one point,
  ``x^{k+1} = x^k - lr * (1/B) * sum_{j<B} g_j(x^k)`` with B = m (one per
  worker) or B = S (any workers), so every applied delay is 0.  Rennala's
  time to an eps-stationary point, ``t(S) = min_m [(1/m sum_{i<=m} 1/tau_i)^-1
  (1 + S/m)] * O(L Delta / eps)`` with S ~ sigma^2/eps and tau_i the sorted
  compute times, meets the lower bound of Tyurin and Richtarik for any
  method given those times: the slow workers it leaves out are the ones
  not worth their staleness.
- Ringmaster applies ``x^{k+1} = x^k - lr * g(x^{k-tau})`` only for tau < R.
  In the reference event simulator (``vectozavr/ringmaster-lmo``,
  ``src/asynchronous/algorithm.py``) every worker keeps a delay counter:
  after each applied gradient every other worker's counter grows by one and
  the arriving worker's resets; a counter that reaches R cancels its job
  (with stops).  That counter is ``version - base_version`` of the job in
  flight, which is what :meth:`Consistency.arrival` and
  :meth:`Consistency.stops` read.  The paper proves the same optimal time
  complexity as Rennala's with R ~ max(1, sigma^2/eps).

A dropped job is one of two kinds: **discarded** (its gradient arrived and
was thrown away: ringmaster) or **cancelled** (stopped before it finished:
the step it was computing for is over, or its delay reached R with stops).
Its worker's time is spent; no gradient is applied.  A backend carries the
decision out: the simulator spends the cancelled job's simulated time and
restarts the worker at once; Ray, which cannot interrupt a running gradient,
finds out when the push arrives (:class:`GradientDiscarded`, :class:`JobCancelled`)
and the worker pulls the current weights.

The same objects serve the simulator and the Ray backend: they hold no
clocks of their own, only answer questions about the clocks and delays they
are shown.  The averages of buffered gradients are computed here
(:class:`SyncBarrier`, :class:`PointBatch`), never in a backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from ..errors import DcasgdError, InputError

MODES = ("sync", "async", "ssp:S", "msync:m", "rennala:S", "ringmaster:R", "ringmaster-stop:R")
# mode -> (least bound, what the bound is, an example)
BOUNDED = {"ssp": (0, "staleness bound", "ssp:2"), "msync": (1, "number of gradients m per step", "msync:4"),
           "rennala": (1, "batch size S", "rennala:6"), "ringmaster": (1, "delay threshold R", "ringmaster:6"),
           "ringmaster-stop": (1, "delay threshold R", "ringmaster-stop:6")}
APPLY, DISCARD, CANCEL = "apply", "discard", "cancel"     # what becomes of an arriving gradient


class ConsistencyError(InputError):
    """A consistency string that is not one of :data:`MODES` with an integer bound in range."""


class JobDropped(DcasgdError):
    """A push the consistency policy dropped (not an error: its worker pulls the current weights and goes on)."""

    kind = ""


class GradientDiscarded(JobDropped):
    """Its gradient arrived with a delay at or past the threshold (ringmaster) and was thrown away."""

    kind = "discarded"


class JobCancelled(JobDropped):
    """Its job was cancelled before its gradient could count: the step it was computing for is over
    (msync, rennala) or its delay reached the threshold (ringmaster-stop)."""

    kind = "cancelled"


@dataclass(frozen=True)
class Consistency:
    """A parsed consistency mode; ``bound`` is S, m or R for the bounded modes, else None."""

    mode: str
    bound: int | None = None

    @property
    def name(self) -> str:
        return self.mode if self.bound is None else f"{self.mode}:{self.bound}"

    @property
    def same_point(self) -> bool:
        """Every update is the mean of gradients all computed at the current weights (sync, msync, rennala)."""
        return self.mode in ("sync", "msync", "rennala")

    @property
    def drops_jobs(self) -> bool:
        """Jobs may be discarded or cancelled (msync, rennala, ringmaster, ringmaster-stop)."""
        return self.mode in ("msync", "rennala", "ringmaster", "ringmaster-stop")

    def quorum(self, live: int) -> int:
        """Gradients one update averages when ``live`` workers are alive: M (sync), min(m, M), S (rennala)."""
        if self.mode == "msync":
            return min(self.bound, live)
        return self.bound if self.mode == "rennala" else live

    def may_start(self, clock: int, live_clocks: list[int]) -> bool:
        """Whether a worker at ``clock`` may start its next gradient (async, ssp)."""
        if self.mode != "ssp" or not live_clocks:
            return True
        return clock - min(live_clocks) <= self.bound

    def arrival(self, delay: int) -> str:
        """What becomes of a gradient that arrives ``delay`` = tau updates after the weights it was computed at.

        :data:`DISCARD` for ringmaster when tau >= R; :data:`CANCEL` for a job whose step is over
        (msync, rennala: tau > 0) or whose stop came due while it computed (ringmaster-stop, tau >= R:
        a backend that cannot interrupt a job finds out here); else :data:`APPLY`.
        """
        if self.mode in ("msync", "rennala"):
            return CANCEL if delay > 0 else APPLY
        if self.mode in ("ringmaster", "ringmaster-stop") and delay >= self.bound:
            return DISCARD if self.mode == "ringmaster" else CANCEL
        return APPLY

    def stops(self, delay: int) -> bool:
        """Whether a job still computing, ``delay`` updates behind the current weights, is cancelled now
        (ringmaster-stop: as soon as its delay reaches R)."""
        return self.mode == "ringmaster-stop" and delay >= self.bound


def parse_consistency(text: str) -> Consistency:
    """``"sync"``, ``"async"``, or ``MODE:N`` for MODE in ssp (N >= 0), msync, rennala, ringmaster,
    ringmaster-stop (N >= 1)."""
    if text in ("sync", "async"):
        return Consistency(text)
    mode, sep, bound = text.partition(":") if isinstance(text, str) else ("", "", "")
    if mode in BOUNDED:
        least, what, example = BOUNDED[mode]
        if not sep or not bound.strip():
            raise ConsistencyError(f"consistency {text!r}: {mode} needs a {what}, e.g. {example}")
        try:
            value = int(bound)
        except ValueError:
            raise ConsistencyError(f"consistency {text!r}: the {mode} {what} must be an integer "
                                   f">= {least}") from None
        if value < least:
            raise ConsistencyError(f"consistency {text!r}: the {mode} {what} must be >= {least}")
        return Consistency(mode, value)
    raise ConsistencyError(f"unknown consistency {text!r}; choose sync, async, ssp:S, msync:m, rennala:S, "
                           f"ringmaster:R or ringmaster-stop:R (e.g. ssp:2, rennala:6)")


@dataclass
class GradientMean:
    """The sum of one update's gradients, then their mean, applied as one push.

    ``_add`` sums in place (one buffer of size P); :meth:`average` divides by
    the number of gradients received: the mean of the per-batch mean gradients.
    """

    received: list[int] = field(default_factory=list)
    total: torch.Tensor | None = None

    def _add(self, worker: int, grad: torch.Tensor) -> None:
        self.total = grad.clone() if self.total is None else self.total.add_(grad)
        self.received.append(worker)

    def average(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("no gradients to average")
        return self.total.div_(len(self.received))

    def apply(self, server: Any, base_version: Callable[[int], int]) -> int:
        """Apply the average to ``server`` as one update, pushed under the lowest worker that gave a
        gradient (``base_version(worker)``: the version it pulled); returns the new version."""
        first = min(self.received)
        return server.push(first, self.average(), base_version(first))


@dataclass
class SyncBarrier(GradientMean):
    """One round of gradients, one per expected worker; complete when all of them (sync) or the first
    ``quorum`` of them (msync:m: min(m, expected)) are in."""

    expected: set[int] = field(default_factory=set)
    quorum: int | None = None

    def start(self, workers: set[int], quorum: int | None = None) -> None:
        self.expected, self.received, self.total, self.quorum = set(workers), [], None, quorum

    def add(self, worker: int, grad: torch.Tensor) -> None:
        if worker not in self.expected or worker in self.received:
            raise ValueError(f"worker {worker} is not expected in this sync round")
        self._add(worker, grad)

    def drop(self, worker: int) -> None:
        """A worker died mid-round: the round no longer waits for it."""
        self.expected.discard(worker)

    @property
    def complete(self) -> bool:
        if not self.received:
            return False
        if self.quorum is None:
            return self.expected <= set(self.received)
        return len(self.expected & set(self.received)) >= min(self.quorum, len(self.expected))

    @property
    def outstanding(self) -> list[int]:
        """Expected workers whose gradient is not in: at an msync step, their jobs are cancelled."""
        return sorted(self.expected - set(self.received))


@dataclass
class PointBatch(GradientMean):
    """Gradients computed at one server version, averaged once ``size`` are in (Rennala's batch; Ray's msync
    round).  A worker may give several; one taken at another version does not belong here."""

    version: int = -1
    size: int = 1

    def start(self, version: int, size: int) -> None:
        self.version, self.size, self.received, self.total = version, size, [], None

    def add(self, worker: int, grad: torch.Tensor, base_version: int) -> None:
        if base_version != self.version:
            raise ValueError(f"a gradient taken at version {base_version} does not belong to the batch at "
                             f"version {self.version}")
        self._add(worker, grad)

    @property
    def complete(self) -> bool:
        return len(self.received) >= self.size > 0

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "size": self.size, "received": list(self.received), "total": self.total}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.version, self.size = int(sd["version"]), int(sd["size"])
        self.received, self.total = list(sd["received"]), sd["total"]
