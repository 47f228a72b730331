"""ServerCore: the parameter server's state and its two operations.

``pull(worker) -> (weights, version)`` hands out a copy of the flat weights
and, for rules that need it, records that copy as the worker's backup
``w_bak(m)``.  ``push(worker, grad, base_version) -> version`` checks the
gradient, computes the staleness ``tau = version - base_version`` and applies
the update rule::

    w <- rule(w, grad, w_bak(worker), tau)        version <- version + 1

A refused push (wrong shape or dtype, NaN/Inf, unknown worker, a base version
from the future, no backup for a DC rule) raises :class:`PushRejected` and
leaves weights, version, rule state and counters untouched; only the
per-worker ``refused`` counter records it.

A shard of the server is a ServerCore over a contiguous slice
``[offset, offset + len(weights))`` of the model's flat vector
(:func:`shard_ranges` cuts the slices).  No threads, no I/O: backends own
timing and transport.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .kernels import all_finite
from .rules import DEFAULT_HYPER, Rule, RuleError, make_rule

STATE_FORMAT = "dcasgd.server/1"


class PushRejected(ValueError):
    """A push the server refused; the message names the problem."""


class ShardError(ValueError):
    """A shard count that cannot split the parameters (zero, or more shards than parameters)."""


class StateMismatch(ValueError):
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
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if backup_dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"backup_dtype must be float32 or bfloat16, got {backup_dtype}")
        self.rule: Rule = make_rule(rule, **rule_params)
        self.lr = lr
        self.num_workers = num_workers
        self.offset = offset
        self.backup_dtype = backup_dtype
        if not (clip_norm >= 0 and math.isfinite(clip_norm)):
            raise ValueError(f"clip_norm must be a finite number >= 0, got {clip_norm}")
        self.clip_norm = clip_norm
        self.weights = weights.detach().clone().contiguous()
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
        self._check_worker(worker)
        if self.backups is not None:
            self.backups[worker].copy_(self.weights)
        self.backup_version[worker] = self.version
        return (self.weights.clone() if copy else self.weights), self.version

    def validate(self, worker: int, grad: torch.Tensor, base_version: int) -> None:
        """Raise PushRejected (and count it) for a push :meth:`push` would refuse; applies nothing."""
        self._check_worker(worker)
        try:
            self._check_push(worker, grad, base_version)
        except PushRejected:
            self.refused[worker] += 1
            raise

    def push(self, worker: int, grad: torch.Tensor, base_version: int) -> int:
        """Apply ``grad`` computed at ``base_version`` by ``worker``; returns the new version."""
        self.validate(worker, grad, base_version)
        staleness = self.version - base_version
        if self.clip_norm:
            grad = self._clip(grad)
        backup = self.backups[worker] if self.backups is not None else None
        self.rule.apply_(self.weights, grad, backup, staleness, self.lr, self.state, worker)
        self.version += 1
        self.pushes[worker] += 1
        self.staleness_sum[worker] += staleness
        self.staleness_max[worker] = max(int(self.staleness_max[worker]), staleness)
        return self.version

    def _clip(self, grad: torch.Tensor) -> torch.Tensor:
        """grad * min(1, clip_norm / ||grad||): the caller's tensor is never modified."""
        norm = float(torch.linalg.vector_norm(grad))
        if norm <= self.clip_norm:
            return grad
        self.clipped += 1
        return grad * (self.clip_norm / norm)

    def _check_worker(self, worker: int) -> None:
        if isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker < self.num_workers:
            raise PushRejected(f"unknown worker {worker!r}: this server has workers 0..{self.num_workers - 1}")

    def _check_push(self, worker: int, grad: torch.Tensor, base_version: int) -> None:
        if not isinstance(grad, torch.Tensor):
            raise PushRejected(f"worker {worker}: gradient must be a torch.Tensor, got {type(grad).__name__}")
        if grad.dtype != torch.float32:
            raise PushRejected(f"worker {worker}: gradient dtype {grad.dtype}, expected torch.float32")
        if grad.shape != self.weights.shape:
            raise PushRejected(f"worker {worker}: gradient shape {tuple(grad.shape)}, "
                               f"expected {tuple(self.weights.shape)}")
        if not isinstance(base_version, int) or isinstance(base_version, bool):
            raise PushRejected(f"worker {worker}: base_version must be an int, got {base_version!r}")
        if base_version > self.version or base_version < 0:
            raise PushRejected(f"worker {worker}: base_version {base_version} is not in "
                               f"[0, current version {self.version}] (from the future or negative)")
        if not all_finite(grad):                       # one pass, no P-sized temporaries
            raise PushRejected(f"worker {worker}: gradient has NaN or Inf values")
        if self.backups is not None and int(self.backup_version[worker]) < 0:
            raise PushRejected(f"worker {worker}: pushed before its first pull (rule "
                               f"{self.rule.name} needs the weights it pulled)")

    # ------------------------------------------------------------ counters

    def counters(self) -> dict[str, list[int]]:
        """Per-worker pushes, refused pushes, staleness sum and max."""
        return {"pushes": self.pushes.tolist(), "refused": self.refused.tolist(),
                "staleness_sum": self.staleness_sum.tolist(), "staleness_max": self.staleness_max.tolist()}

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
            "hyper": {k: getattr(self.rule, k) for k in ("momentum", "wd", "lam", "lam0", "m", "eps",
                                                          "per_worker_ms")},
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
