"""Server update rules: pure arithmetic on flat float32 tensors.

Each rule turns one pushed gradient ``g`` (computed by worker m at the weights
``backup`` it pulled, ``tau`` versions ago) into an in-place update of the
flat weights ``w``::

    sgd        d = g + wd*w                                    ; w -= lr * d
    staleness  d = g + wd*w                                    ; w -= lr / max(1, tau) * d
    dc-asgd-c  d = g + lam * g*g*(w - backup) + wd*w           ; w -= lr * d
    dc-asgd-a  ms = m*ms + (1-m)*g*g
               d = g + lam0/sqrt(ms + eps) * g*g*(w - backup) + wd*w ; w -= lr * d

With ``momentum`` > 0 the direction ``d`` goes through torch.optim.SGD's
heavy-ball buffer first (``buf = momentum*buf + d``, the first step takes
``buf = d``; ``w -= lr * buf``).  For the DC rules momentum is applied to the
compensated gradient, as the paper's momentum variants do.

A rule is a small object with ``init(num_params, num_workers) -> state`` and
``apply_(w, g, backup, staleness, lr, state, worker)``; the state is a plain
dict of tensors (so it checkpoints with ``torch.save``).  Rules know nothing of
workers beyond an index into per-worker state, and nothing of time, Ray or
files.

Difference from MXNet's ``DCASGD`` optimizer: MXNet keeps *one* previous
weight per parameter (the weights before the last update, whoever pushed it),
so with M workers its correction uses ``w - w_prev`` of one step, not the
delay of the pushing worker.  Here, as in Algorithm 2 of Zheng et al. (ICML
2017) and Microsoft's Multiverso updater, the server keeps a backup per
worker: the weights that worker pulled, so ``w - backup`` spans exactly the
``tau`` updates the gradient missed.  MeanSquare (``ms``) is one global buffer
by default; ``per_worker_ms=True`` keeps one per worker as Multiverso does.

All updates are in place.  For P >= 1M parameters the whole update runs as
one fused loop compiled by ``torch.compile`` (:mod:`dcasgd.kernels`): one pass
over memory, no temporaries of size P.  Below that (or with
``DCASGD_NO_COMPILE=1``, or without a C++ compiler) an eager chain of in-place
torch ops does the same maths, using the ``scratch`` buffer of the state for
the DC correction term (and, for dc-asgd-a, one temporary for sqrt(ms + eps)).
The two paths agree to float32 rounding; which one runs depends only on P and
the environment, so a run stays bit-for-bit reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import kernels
from ..errors import InputError
from ..names import DEFAULT_LR, RULE_DEFAULTS, RULES

# Paper defaults (Zheng et al. 2017, Section 6).
DEFAULT_HYPER = {"lr": DEFAULT_LR, **{k: v for k, v in RULE_DEFAULTS.items() if k != "per_worker_ms"}}


class RuleError(InputError):
    """An unknown rule name or an out-of-range hyperparameter."""


State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """One update rule with its hyperparameters fixed at construction."""

    name: str
    momentum: float = RULE_DEFAULTS["momentum"]
    wd: float = RULE_DEFAULTS["wd"]
    lam: float = RULE_DEFAULTS["lam"]
    lam0: float = RULE_DEFAULTS["lam0"]
    m: float = RULE_DEFAULTS["m"]
    eps: float = RULE_DEFAULTS["eps"]
    per_worker_ms: bool = RULE_DEFAULTS["per_worker_ms"]

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise RuleError(f"unknown rule {self.name!r}; choose one of {', '.join(RULES)}")
        _check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _check_range("wd", self.wd, 0.0, math.inf)
        _check_range("lam", self.lam, 0.0, math.inf)
        _check_range("lam0", self.lam0, 0.0, math.inf)
        _check_range("m", self.m, 0.0, 1.0, hi_open=True)
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise RuleError(f"eps must be > 0, got {self.eps}")

    @property
    def needs_backup(self) -> bool:
        """True for rules that read the weights the pushing worker pulled."""
        return self.name.startswith("dc-")

    def init(self, num_params: int, num_workers: int) -> State:
        """Zero state for a flat vector of ``num_params`` float32 parameters."""
        state: State = {"step": torch.zeros((), dtype=torch.int64)}
        if self.momentum > 0:
            state["momentum_buffer"] = torch.zeros(num_params)
        if self.needs_backup or self.wd:
            state["scratch"] = torch.zeros(num_params)
        if self.name == "dc-asgd-a":
            rows = num_workers if self.per_worker_ms else 1
            state["mean_square"] = torch.zeros(rows, num_params)
        return state

    def apply_(self, w: torch.Tensor, g: torch.Tensor, backup: torch.Tensor | None,
               staleness: int, lr: float, state: State, worker: int = 0) -> None:
        """Update ``w`` (and ``state``) in place with gradient ``g``.

        Large vectors go through one fused kernel (:mod:`dcasgd.kernels`);
        the eager in-place chain below is the same maths op by op.
        """
        step_lr = self.step_lr(lr, staleness)
        if self.needs_backup and backup is None:
            raise RuleError(f"rule {self.name} needs the pushing worker's backup weights")
        if self._apply_fused(w, g, backup, step_lr, state, worker):
            state["step"] += 1
            return
        direction = g
        if self.needs_backup:
            direction = self._compensate(w, g, backup, state, worker)
        if self.wd:
            if direction is g:
                direction = state["scratch"].copy_(g)
            direction.add_(w, alpha=self.wd)
        if self.momentum > 0:
            buf = state["momentum_buffer"]
            if int(state["step"]) == 0:
                buf.copy_(direction)
            else:
                buf.mul_(self.momentum).add_(direction)
            direction = buf
        w.add_(direction, alpha=-step_lr)
        state["step"] += 1

    def step_lr(self, lr: float, staleness: int) -> float:
        """The learning rate this push is applied with (``staleness`` divides it for that rule)."""
        return lr / max(1, staleness) if self.name == "staleness" else lr

    def bounds(self, g_norm: float, w_norm: float, backup_norm: float, buf_norm: float) -> tuple[float, float, float]:
        """Upper bounds for one update, from L2 norms (each also bounds every element's magnitude).

        Given ``||g|| <= g_norm``, ``||w|| <= w_norm``, ``||backup|| <= backup_norm`` and
        ``||buf|| <= buf_norm`` (momentum buffer), returns ``(peak, direction, buffer)``:

        - ``peak``: every intermediate of the update, elementwise, is at most this
          (for the DC rules ``g*g*(w - backup)`` before its factor: ``g_norm**2 * (w_norm + backup_norm)``);
        - ``direction``: ``||d||`` for ``d = g + correction + wd*w``.  The dc-asgd-a
          factor obeys ``lam0 / sqrt(ms + eps) * g*g <= lam0 * |g| / sqrt(1 - m)``,
          since the updated ``ms >= (1 - m) * g*g``;
        - ``buffer``: ``||momentum*buf + d||`` (``direction`` without momentum).

        The server uses them to prove that an update leaves finite weights before
        applying it (:meth:`dcasgd.server.ServerCore.push`).
        """
        gap = w_norm + backup_norm
        peak = max(g_norm, w_norm, g_norm * g_norm * gap * max(1.0, self.lam, self.lam0)) if self.needs_backup \
            else max(g_norm, w_norm)
        if self.name == "dc-asgd-c":
            correction = self.lam * g_norm * g_norm * gap
        elif self.name == "dc-asgd-a":
            correction = self.lam0 * g_norm / math.sqrt(1.0 - self.m) * gap
        else:
            correction = 0.0
        direction = g_norm + correction + self.wd * w_norm
        buffer = self.momentum * buf_norm + direction if self.momentum > 0 else direction
        return max(peak, direction, buffer), direction, buffer

    def warm_up(self, num_params: int, backup_dtype: torch.dtype | None = torch.float32) -> bool:
        """Compile now the fused kernel :meth:`apply_` will use for ``num_params`` parameters.

        True if one is ready; False where pushes of that size take no kernel
        (plain sgd/staleness, below the threshold, no compiler).
        """
        family = self._kernel_family()
        return family is not None and kernels.warm_up(family, bool(self.momentum), backup_dtype, num_params)

    def _kernel_family(self) -> str | None:
        """The fused kernel family this rule's update takes, or None: plain sgd/staleness
        (no momentum, no wd) is one ``add_`` already, a single pass with no kernel."""
        if not (self.needs_backup or self.momentum or self.wd):
            return None
        return self.name if self.needs_backup else "sgd"

    def _apply_fused(self, w: torch.Tensor, g: torch.Tensor, backup: torch.Tensor | None,
                     step_lr: float, state: State, worker: int) -> bool:
        """The whole update as one kernel; False (nothing touched) where none applies."""
        family = self._kernel_family()
        if family is None or not kernels.use_fused(w.numel()):
            return False
        ms = state["mean_square"][worker if self.per_worker_ms else 0] if self.name == "dc-asgd-a" else None
        coef = self.lam0 if self.name == "dc-asgd-a" else self.lam
        return kernels.fused_update(family, w, g, backup, ms, state.get("momentum_buffer"), lr=step_lr,
                                    wd=self.wd, coef=coef, m=self.m, eps=self.eps, momentum=self.momentum,
                                    first=int(state["step"]) == 0)

    def _compensate(self, w: torch.Tensor, g: torch.Tensor, backup: torch.Tensor | None,
                    state: State, worker: int) -> torch.Tensor:
        """scratch = g + lam_eff * g*g*(w - backup); returns scratch.

        One pass over memory per op; dc-asgd-a needs one P-sized temporary
        (sqrt(ms + eps)) on this path, the fused kernel none.
        """
        if backup is None:
            raise RuleError(f"rule {self.name} needs the pushing worker's backup weights")
        scratch = state["scratch"]
        torch.sub(w, backup, out=scratch)          # w - backup
        scratch.mul_(g).mul_(g)                    # g*g*(w - backup)
        # The order of these ops is part of the results: the committed studies were computed
        # with exactly this rounding, so keep it (the fused kernel is used only for P >= 1M).
        if self.name == "dc-asgd-c":
            scratch.mul_(self.lam)
        else:
            ms = state["mean_square"][worker if self.per_worker_ms else 0]
            ms.mul_(self.m).addcmul_(g, g, value=1.0 - self.m)
            scratch.mul_(self.lam0).div_(ms.add(self.eps).sqrt_())   # lam0 / sqrt(ms + eps)
        return scratch.add_(g)


def _check_range(name: str, value: float, lo: float, hi: float, hi_open: bool = False) -> None:
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok or math.isnan(value):
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise RuleError(f"{name} must be in {bound}, got {value}")


def make_rule(name: str, **hyper: float) -> Rule:
    """Build a rule by registry name; unknown keywords are an error."""
    allowed = {"momentum", "wd", "lam", "lam0", "m", "eps", "per_worker_ms"}
    unknown = set(hyper) - allowed
    if unknown:
        raise RuleError(f"unknown hyperparameter(s) {sorted(unknown)} for rule {name!r}; "
                        f"allowed: {sorted(allowed)}")
    return Rule(name, **hyper)


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a function of (fractional) epoch.

    ``constant``: lr.  ``step``: lr * gamma**(number of milestones <= epoch)
    (the paper: gamma 0.1 at epochs 80 and 120 of 160).  ``cosine``:
    lr * (1 + cos(pi * epoch / total_epochs)) / 2.  A linear warm-up over
    ``warmup_epochs`` multiplies any of them by (epoch / warmup_epochs).
    """

    base_lr: float
    kind: str = "constant"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    total_epochs: float = 1.0
    warmup_epochs: float = 0.0
    _kinds: tuple[str, ...] = field(default=("constant", "step", "cosine"), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.base_lr > 0 and math.isfinite(self.base_lr)):
            raise RuleError(f"lr must be > 0, got {self.base_lr}")
        if self.kind not in self._kinds:
            raise RuleError(f"unknown lr schedule {self.kind!r}; choose one of {', '.join(self._kinds)}")
        if self.warmup_epochs < 0 or self.total_epochs <= 0:
            raise RuleError("warmup_epochs must be >= 0 and total_epochs > 0")

    def __call__(self, epoch: float) -> float:
        lr = self.base_lr
        if self.kind == "step":
            lr *= self.gamma ** sum(1 for mark in self.milestones if epoch >= mark)
        elif self.kind == "cosine":
            lr *= 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.total_epochs) / self.total_epochs))
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs:
            lr *= epoch / self.warmup_epochs
        return lr


ScheduleFn = Callable[[float], float]
