"""Consistency policies: when a push is applied and when a worker may go on.

=========  ==============================================================
``sync``   barrier: every live worker computes at the same weights; the
           round's gradients are averaged and applied as one update
           (effective batch M*b).  With a ``dc-*`` rule the delay is zero,
           so the compensation term vanishes and the rule behaves as sgd.
``async``  every push is applied on arrival; workers never wait.
``ssp:S``  pushes applied on arrival, but a worker whose clock (gradients
           pushed so far) is more than S ahead of the slowest live
           worker's clock waits before it starts its next gradient.
           ``ssp:0`` is a barrier in time (but without averaging).
=========  ==============================================================

The same objects serve the simulator and the Ray backend: they hold no
clocks of their own, only answer questions about the clocks they are shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from ..errors import InputError

MODES = ("sync", "async", "ssp:S")


class ConsistencyError(InputError):
    """A consistency string that is not ``sync``, ``async`` or ``ssp:S`` with S >= 0."""


@dataclass(frozen=True)
class Consistency:
    """A parsed consistency mode; ``bound`` is S for ``ssp``, else None."""

    mode: str
    bound: int | None = None

    @property
    def name(self) -> str:
        return f"ssp:{self.bound}" if self.mode == "ssp" else self.mode

    def may_start(self, clock: int, live_clocks: list[int]) -> bool:
        """Whether a worker at ``clock`` may start its next gradient (async, ssp)."""
        if self.mode != "ssp" or not live_clocks:
            return True
        return clock - min(live_clocks) <= self.bound


def parse_consistency(text: str) -> Consistency:
    """``"sync"``, ``"async"`` or ``"ssp:S"`` (S an integer >= 0)."""
    if text in ("sync", "async"):
        return Consistency(text)
    if isinstance(text, str) and text.startswith("ssp"):
        _, sep, bound = text.partition(":")
        if not sep or not bound.strip():
            raise ConsistencyError(f"consistency {text!r}: ssp needs a staleness bound, e.g. ssp:2")
        try:
            value = int(bound)
        except ValueError:
            raise ConsistencyError(f"consistency {text!r}: the ssp bound must be an integer >= 0") from None
        if value < 0:
            raise ConsistencyError(f"consistency {text!r}: the ssp bound must be >= 0")
        return Consistency("ssp", value)
    raise ConsistencyError(f"unknown consistency {text!r}; choose sync, async or ssp:S (e.g. ssp:2)")


@dataclass
class SyncBarrier:
    """Collects one round of gradients and averages them.

    ``add`` sums in place (one buffer of size P); ``average`` divides by the
    number of gradients received: mean over the round's workers of their
    per-batch mean gradients.
    """

    expected: set[int] = field(default_factory=set)
    received: list[int] = field(default_factory=list)
    total: torch.Tensor | None = None

    def start(self, workers: set[int]) -> None:
        self.expected, self.received, self.total = set(workers), [], None

    def add(self, worker: int, grad: torch.Tensor) -> None:
        if worker not in self.expected or worker in self.received:
            raise ValueError(f"worker {worker} is not expected in this sync round")
        self.total = grad.clone() if self.total is None else self.total.add_(grad)
        self.received.append(worker)

    def drop(self, worker: int) -> None:
        """A worker died mid-round: the round no longer waits for it."""
        self.expected.discard(worker)

    @property
    def complete(self) -> bool:
        return bool(self.received) and self.expected <= set(self.received)

    def average(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("no gradients in this sync round")
        return self.total.div_(len(self.received))

    def apply(self, server: Any, base_version: Callable[[int], int]) -> int:
        """Apply the round's average to ``server`` as one update, pushed under the round's first worker
        (``base_version(worker)``: the version it pulled); returns the new version."""
        first = min(self.received)
        return server.push(first, self.average(), base_version(first))
