"""ServerCore: the parameter server's state and its two operations.

``pull(worker) -> (weights, version)`` hands out a copy of the flat weights
and, for rules that need it, records that copy as the worker's backup
``w_bak(m)``.  ``push(worker, grad, base_version) -> version`` checks the
gradient, computes the staleness ``tau = version - base_version`` and applies
the update rule::

    w <- rule(w, grad, w_bak(worker), tau)        version <- version + 1

A refused push (wrong shape, dtype, layout or device, NaN/Inf, unknown
worker, a base version from the future, no backup for a DC rule) raises
:class:`PushRejected` and leaves weights, version, rule state and counters
untouched; only the per-worker ``refused`` counter records it.

An accepted push leaves finite weights and rule state, for every rule, even
for a finite but huge gradient (the DC term ``g*g*(w - backup)`` overflows
float32 long before ``g`` does).  The server keeps upper bounds on the L2
norms of the weights, of each worker's backup and of the momentum buffer, and
before each update checks with :meth:`Rule.bounds` that nothing the update
computes can come near float32's limit.  That costs one read of the gradient
(``g . g``, which also proves it finite) and a few scalar operations.  When
the bounds cannot prove it, the server measures the norms exactly, and if
that still does not prove it, applies the update on a copy-protected path:
snapshot, apply, check, and restore on failure, refusing the push with
:class:`NonFiniteUpdate`.

A shard of the server is a ServerCore over a contiguous slice
``[offset, offset + len(weights))`` of the model's flat vector
(:func:`shard_ranges` cuts the slices).  No threads, no I/O: backends own
timing and transport.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import torch

from ..errors import InputError

from . import kernels
from ..names import RULE_DEFAULTS
from .rules import DEFAULT_HYPER, Rule, RuleError, make_rule

STATE_FORMAT = "dcasgd.server/1"
NORM_LIMIT = 1e36         # float32 overflows at 3.4e38: bounds below this leave a 300x margin for rounding
NORM_REMEASURE = 1e15     # a tracked norm bound above this is measured again (one read of the vector)
_G_SAFETY = 2.0           # float32 g.g may round low on long vectors: bound ||g|| by twice its estimate


class PushRejected(InputError):
    """A push the server refused; the message names the problem."""


class NonFiniteUpdate(PushRejected):
    """A finite gradient whose update would make the weights or rule state non-finite: the run diverged."""


class ShardError(InputError):
    """A shard count that cannot split the parameters (zero, or more shards than parameters)."""


class StateMismatch(InputError):
    """A state dict that does not belong to this server (rule, shape, workers)."""


class ServerCore:
    """Flat weights, version counter, per-worker backups, rule state and counters.

    Hyperparameters are keywords: ``lr``, ``momentum``, ``wd``, ``lam``
    (dc-asgd-c), ``lam0``, ``m``, ``eps`` (dc-asgd-a), ``per_worker_ms``.
    ``backup_dtype`` may be ``torch.bfloat16`` to halve backup memory.
    """

    def __init__(self, weights: torch.Tensor, rule: str = "dc-asgd-a", num_workers: int = 1,
                 lr: float = DEFAULT_HYPER["lr"], *, offset: int = 0,
                 backup_dtype: torch.dtype = torch.float32, clip_norm: float = 0.0,
                 **rule_params: Any) -> None:
        if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or weights.dtype != torch.float32:
            raise ValueError("weights must be a 1-D float32 tensor")
        if weights.layout != torch.strided or weights.device.type == "meta":
            raise ValueError(f"weights must be a dense tensor with data, got layout {weights.layout} on "
                             f"device {weights.device}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if backup_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"backup_dtype must be float32 or bfloat16, got {backup_dtype}")
        self.rule: Rule = make_rule(rule, **rule_params).resolved(num_workers)
        self.lr = lr
        self.num_workers = num_workers
        self.offset = offset
        self.backup_dtype = backup_dtype
        if not (clip_norm >= 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm must be a finite number >= 0, got {clip_norm}")
        self.clip_norm = clip_norm
        self.weights = weights.detach().clone().contiguous()
        if not math.isfinite(_norm(self.weights)):
            raise ValueError("weights must be finite (no NaN or Inf)")
        self.version = 0
        self.state = self.rule.init(self.weights.numel(), num_workers)
        self.backups = (torch.zeros(num_workers, self.weights.numel(), dtype=backup_dtype)
                        if self.rule.needs_backup else None)
        self.backup_version = torch.full((num_workers,), -1, dtype=torch.int64)
        self.pushes = torch.zeros(num_workers, dtype=torch.int64)
        self.refused = torch.zeros(num_workers, dtype=torch.int64)
        self.staleness_sum = torch.zeros(num_workers, dtype=torch.int64)
        self.staleness_max = torch.zeros(num_workers, dtype=torch.int64)
        self.clipped = 0
        self._measure_norms()

    # ------------------------------------------------------------ lr

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
            raise RuleError(f"lr must be a finite number >= 0, got {value!r}")   # 0 at a cosine schedule's end
        self._lr = float(value)

    @property
    def num_params(self) -> int:
        return self.weights.numel()

    def warm_up(self) -> bool:
        """Compile the fused update kernel now, not on the first push (see :meth:`Rule.warm_up`)."""
        return self.rule.warm_up(self.num_params, self.backups.dtype if self.backups is not None else None)

    # ------------------------------------------------------------ pull / push

    def pull(self, worker: int, copy: bool = True) -> tuple[torch.Tensor, int]:
        """The weights and their version; records the worker's backup.

        ``copy=False`` returns the live weights without a copy: the caller must
        copy or serialise them before the next push (the Ray shard does).
        """
        worker = self._check_worker(worker)
        ahead = self.rule.pull(self.weights, self.state, self.lr)        # dana: a look-ahead, else None
        sent = self.weights if ahead is None else ahead
        if self.backups is not None:
            self.backups[worker].copy_(sent)
            # bfloat16 rounds each element by at most 2**-8 of itself
            self._backup_norm[worker] = (self._w_norm if ahead is None else _norm(ahead)) * (1.0 + 2.0**-8)
        self.backup_version[worker] = self.version
        if ahead is not None:
            return ahead, self.version
        return (self.weights.clone() if copy else self.weights), self.version

    def validate(self, worker: int, grad: torch.Tensor, base_version: int) -> None:
        """Raise PushRejected (and count it) for a push :meth:`push` would refuse; applies nothing."""
        self._validated(worker, grad, base_version)

    def push(self, worker: int, grad: torch.Tensor, base_version: int) -> int:
        """Apply ``grad`` computed at ``base_version`` by ``worker``; returns the new version."""
        worker, grad, base_version, g_norm = self._validated(worker, grad, base_version)
        staleness = self.version - base_version
        if self.clip_norm:
            grad, g_norm = self._clip(grad, g_norm)
        backup = self.backups[worker] if self.backups is not None else None
        lr = self.rule.step_lr(self.lr, staleness)
        step = self._proven_step(worker, g_norm)
        if step is not None:
            self.rule.apply_(self.weights, grad, backup, staleness, self.lr, self.state, worker)
            self._w_norm += lr * step
            if max(self._w_norm, self._buf_norm, self._state_norm) > NORM_REMEASURE:
                self._measure_norms()
        else:
            self._apply_guarded(worker, grad, backup, staleness, g_norm)
        self.version += 1
        self.pushes[worker] += 1
        self.staleness_sum[worker] += staleness
        self.staleness_max[worker] = max(int(self.staleness_max[worker]), staleness)
        return self.version

    def _proven_step(self, worker: int, g_norm: float) -> float | None:
        """A bound on ``||buf|| or ||d||`` of this update if the norms prove it keeps everything finite, else None.

        Updates the momentum-buffer bound as a side effect when it returns a value.
        """
        backup_norm = self._backup_norm[worker] if self.backups is not None else 0.0
        for attempt in range(2):
            peak, buffer, state_after = self.rule.bounds(g_norm * _G_SAFETY, self._w_norm, backup_norm,
                                                         self._buf_norm, self._state_norm)
            if peak < NORM_LIMIT and self._w_norm + self.lr * buffer < NORM_LIMIT:   # (rules only lower lr)
                if self.rule.shared_momentum:
                    self._buf_norm = buffer
                elif self.rule.name == "dana":
                    self._buf_norm = max(self._buf_norm, buffer)
                self._state_norm = state_after
                return buffer
            if attempt == 0:                         # loose bounds: measure them, then try once more
                self._measure_norms()
                if self.backups is not None:
                    backup_norm = self._backup_norm[worker] = _norm(self.backups[worker])
        return None

    def _apply_guarded(self, worker: int, grad: torch.Tensor, backup: torch.Tensor | None, staleness: int,
                       g_norm: float) -> None:
        """Apply with a snapshot; restore it and refuse the push if anything became non-finite."""
        saved_w = self.weights.clone()
        saved_state = {k: v.clone() for k, v in self.state.items()}
        self.rule.apply_(self.weights, grad, backup, staleness, self.lr, self.state, worker)
        kept = [self.weights] + [v for k, v in self.state.items() if k != "scratch" and v.is_floating_point()]
        if all(kernels.all_finite(t) for t in kept):
            self._measure_norms()
            return
        self.weights.copy_(saved_w)
        for key, value in saved_state.items():
            self.state[key].copy_(value)
        self.refused[worker] += 1
        raise NonFiniteUpdate(f"worker {worker}: this update would make the weights or rule state non-finite "
                              f"(gradient norm {g_norm:.3g}, weight norm {self._w_norm:.3g}); refused, "
                              f"the model diverged")

    def _measure_norms(self) -> None:
        """Exact L2 norms of the weights, the momentum buffer(s) and the rest of the rule state
        (the bounds the proofs start from)."""
        self._w_norm = _norm(self.weights)
        buf = self.state.get("momentum_buffer", self.state.get("momenta"))
        self._buf_norm = _norm(buf) if buf is not None else 0.0
        accumulated = [_norm(t) for k, t in self.state.items()
                       if t.is_floating_point() and k not in ("scratch", "momentum_buffer", "momenta")]
        self._state_norm = max(accumulated, default=0.0)
        if not hasattr(self, "_backup_norm"):
            self._backup_norm = [0.0] * self.num_workers

    def _clip(self, grad: torch.Tensor, g_norm: float) -> tuple[torch.Tensor, float]:
        """grad * min(1, clip_norm / ||grad||): the caller's tensor is never modified."""
        norm = float(torch.linalg.vector_norm(grad))
        if norm <= self.clip_norm:
            return grad, g_norm
        self.clipped += 1
        return grad * (self.clip_norm / norm), min(g_norm, self.clip_norm)

    def _check_worker(self, worker: Any) -> int:
        """The worker id as an int (numpy integers are fine); PushRejected for anything else."""
        index = _integer(worker, f"worker id must be an integer, got {type(worker).__name__} {worker!r}")
        if not 0 <= index < self.num_workers:
            raise PushRejected(f"unknown worker {index}: this server has workers 0..{self.num_workers - 1}")
        return index

    def _validated(self, worker: Any, grad: Any, base_version: Any) -> tuple[int, torch.Tensor, int, float]:
        """Check a push; returns (worker, gradient, base_version, ||gradient||).  Counts a refusal."""
        worker = self._check_worker(worker)
        try:
            return (worker, *self._check_push(worker, grad, base_version))
        except PushRejected:
            self.refused[worker] += 1
            raise

    def _check_push(self, worker: int, grad: Any, base_version: Any) -> tuple[torch.Tensor, int, float]:
        if not isinstance(grad, torch.Tensor):
            raise PushRejected(f"worker {worker}: gradient must be a torch.Tensor, got {type(grad).__name__}")
        if grad.layout != torch.strided:
            raise PushRejected(f"worker {worker}: gradient must be a dense tensor, got layout {grad.layout}")
        if grad.device != self.weights.device:
            raise PushRejected(f"worker {worker}: gradient is on device {grad.device}, the weights on "
                               f"{self.weights.device}")
        if grad.dtype != torch.float32:
            raise PushRejected(f"worker {worker}: gradient dtype {grad.dtype}, expected torch.float32")
        if grad.shape != self.weights.shape:
            raise PushRejected(f"worker {worker}: gradient shape {tuple(grad.shape)}, "
                               f"expected {tuple(self.weights.shape)}")
        base_version = _integer(base_version, f"worker {worker}: base_version must be an int, got {base_version!r}")
        if base_version > self.version or base_version < 0:
            raise PushRejected(f"worker {worker}: base_version {base_version} is not in "
                               f"[0, current version {self.version}] (from the future or negative)")
        grad = grad.detach()
        g_norm = _norm(grad)                           # one read; non-finite exactly when grad has NaN/Inf
        if not math.isfinite(g_norm):
            raise PushRejected(f"worker {worker}: gradient has NaN or Inf values")
        if self.backups is not None and int(self.backup_version[worker]) < 0:
            raise PushRejected(f"worker {worker}: pushed before its first pull (rule "
                               f"{self.rule.name} needs the weights it pulled)")
        return grad, base_version, g_norm

    # ------------------------------------------------------------ counters

    def counters(self) -> dict[str, list[int]]:
        """Per-worker pushes, refused pushes, staleness sum and max."""
        return {"pushes": self.pushes.tolist(), "refused": self.refused.tolist(),
                "staleness_sum": self.staleness_sum.tolist(), "staleness_max": self.staleness_max.tolist()}

    @staticmethod
    def memory_bytes(num_params: int, rule: str, num_workers: int, backup_dtype: torch.dtype = torch.float32,
                     **rule_params: Any) -> int:
        """Bytes a server of ``num_params`` parameters holds: weights, rule state and backups.

        The rule state is built on the ``meta`` device, so nothing is allocated.
        """
        made = make_rule(rule, **rule_params)
        with torch.device("meta"):
            state = made.init(num_params, num_workers)
        total = 4 * num_params + sum(t.numel() * t.element_size() for t in state.values())
        if made.needs_backup:
            total += num_workers * num_params * torch.empty((), dtype=backup_dtype).element_size()
        return total

    def bytes_per_param(self) -> float:
        """Server memory per parameter in bytes: weights, rule state, backups."""
        total = self.weights.element_size() * self.num_params
        total += sum(t.numel() * t.element_size() for t in self.state.values())
        if self.backups is not None:
            total += self.backups.numel() * self.backups.element_size()
        return total / self.num_params

    # ------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, version, rule state, backups, counters."""
        return {
            "format": STATE_FORMAT,
            "rule": self.rule.name,
            "hyper": {k: getattr(self.rule, k) for k in RULE_DEFAULTS},
            "lr": self.lr,
            "num_workers": self.num_workers,
            "offset": self.offset,
            "weights": self.weights.clone(),
            "version": self.version,
            "state": {k: v.clone() for k, v in self.state.items()},
            "backups": None if self.backups is None else self.backups.clone(),
            "backup_version": self.backup_version.clone(),
            "pushes": self.pushes.clone(),
            "refused": self.refused.clone(),
            "staleness_sum": self.staleness_sum.clone(),
            "staleness_max": self.staleness_max.clone(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; a foreign or mismatched dict raises StateMismatch."""
        if not isinstance(sd, dict) or sd.get("format") != STATE_FORMAT:
            raise StateMismatch("not a dcasgd server state (missing or wrong 'format')")
        for key, mine in (("rule", self.rule.name), ("num_workers", self.num_workers), ("offset", self.offset)):
            if sd.get(key) != mine:
                raise StateMismatch(f"checkpoint {key} is {sd.get(key)!r}, this server has {mine!r}")
        weights = sd["weights"]
        if not isinstance(weights, torch.Tensor) or weights.shape != self.weights.shape:
            raise StateMismatch(f"checkpoint weights shape {getattr(weights, 'shape', None)}, "
                                f"this server has {tuple(self.weights.shape)}")
        if set(sd["state"]) != set(self.state):
            raise StateMismatch(f"checkpoint rule state keys {sorted(sd['state'])}, expected {sorted(self.state)}")
        self.weights.copy_(weights)
        self.version = int(sd["version"])
        self.lr = sd["lr"]
        for key, value in sd["state"].items():
            self.state[key].copy_(value)
        if self.backups is not None:
            self.backups.copy_(sd["backups"])
        for key in ("backup_version", "pushes", "refused", "staleness_sum", "staleness_max"):
            getattr(self, key).copy_(sd[key])
        self._measure_norms()
        if self.backups is not None:
            self._backup_norm = [_norm(row) for row in self.backups]


def shard_ranges(tensor_sizes: Sequence[int], num_shards: int) -> list[tuple[int, int]]:
    """Cut a flat vector made of tensors of ``tensor_sizes`` into ``num_shards`` slices.

    Slices are contiguous ``(start, end)`` pairs covering ``[0, P)``.  A cut
    falls on a tensor boundary unless the tensor is larger than the target
    shard size ``ceil(P / S)``; among boundaries the one nearest the running
    target is chosen, so shard sizes stay balanced.
    """
    total = sum(tensor_sizes)
    if num_shards < 1:
        raise ShardError(f"num_shards must be >= 1, got {num_shards}")
    if num_shards > total:
        raise ShardError(f"{num_shards} server shards for {total} parameters: need at most one shard per parameter")
    boundaries = [0]
    for size in tensor_sizes:
        boundaries.append(boundaries[-1] + size)
    cuts = [0]
    for k in range(1, num_shards):
        target = round(total * k / num_shards)
        nearest = min(boundaries, key=lambda b: (abs(b - target), b))
        # a cut must move forward and leave room for the shards still to come
        lo, hi = cuts[-1] + 1, total - (num_shards - k)
        if not lo <= nearest <= hi or abs(nearest - target) > math.ceil(total / num_shards) // 2:
            nearest = min(max(target, lo), hi)         # cut inside a large tensor
        cuts.append(nearest)
    cuts.append(total)
    return list(zip(cuts[:-1], cuts[1:]))


def _integer(value: Any, message: str) -> int:
    """``value`` as an int (numpy integers too, not bools); PushRejected(``message``) for anything else."""
    if isinstance(value, bool):
        raise PushRejected(message)
    try:
        return operator.index(value)
    except TypeError:
        raise PushRejected(message) from None


def _norm(t: torch.Tensor) -> float:
    """``||t||`` (L2) from one read, ``sqrt(t . t)``: inf or nan exactly when ``t`` has them.

    (Finite values whose squares overflow float32 are measured again in float64.)
    """
    flat = t.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    if not flat.numel():
        return 0.0
    squared = torch.dot(flat, flat).item()
    if math.isinf(squared) and kernels.all_finite(flat):
        return float(torch.linalg.vector_norm(flat, dtype=torch.float64))
    return math.sqrt(squared)
