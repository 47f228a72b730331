"""Server update rules: pure arithmetic on flat float32 tensors.

Each rule turns one pushed gradient ``g`` (computed by worker m at the weights
``backup`` it pulled, ``tau`` versions ago) into an in-place update of the
flat weights ``w``.  Every rule forms a direction ``d`` and a step size::

    sgd             d = g + wd*w                                    step lr
    staleness       d = g + wd*w                                    step lr / max(1, tau)
    delay-adaptive  d = g + wd*w                                    step lr if tau <= tau_c, else lr * tau_c / tau
                                                                    (or 0: the gradient dropped, ``delay_drop``)
    dc-asgd-c       d = g + lam * g*g*(w - backup) + wd*w           step lr
    dc-asgd-a       ms = m*ms + (1-m)*g*g
                    d = g + lam0/sqrt(ms + eps) * g*g*(w - backup) + wd*w         step lr
    gap-aware       v = b*v + (1-b)*u*u ;  C = lr_max * (sqrt(v / (1 - b**t)) + 1e-8)
                    d = (g + wd*w) / (1 + |w - backup| / C)         step lr
    adadelay        S = S + g*g ;  alpha = lr / (1 + lr * c * sqrt(S / t) * sqrt(t + tau))
                    d = g + wd*w                                    step alpha (per coordinate)
    dana            d = g + wd*w ; worker m's own momentum v_m = momentum*v_m + d ; w -= lr * v_m
                    a pull returns the look-ahead  w - lr * momentum * sum_k v_k

References: DC-ASGD, Zheng et al., ICML 2017 (Algorithm 2, Section 6);
delay-adaptive steps, Koloskova, Stich and Jaggi, NeurIPS 2022 (Theorem 8)
and Mishchenko, Bach, Even and Woodworth, NeurIPS 2022; Gap-Aware, Barkai,
Hakimi and Schuster, ICLR 2020; AdaDelay, Sra, Yu, Li and Smola, AISTATS 2016;
DANA, Hakimi, Barkai, Gabel and Schuster, 2019 (arXiv 1907.11612).  Each rule's
method docstring below gives its details and where they come from.

**Momentum** works with every rule, with one meaning: the direction ``d``
goes through torch.optim.SGD's heavy-ball buffer (``buf = momentum*buf + d``,
the first step takes ``buf = d``) and the step applies this push's step size
to ``buf``.  For the DC rules momentum acts on the compensated gradient, as
the paper's momentum variants do; for gap-aware on the penalised one; dana's
momentum is its own, one buffer per worker.

A rule is a small object with ``init(num_params, num_workers) -> state``,
``apply_(w, g, backup, staleness, lr, state, worker)`` and ``pull(w, state,
lr)``, which says what a pull returns (None: the weights themselves; dana: a
look-ahead).  The state is a plain dict of tensors (so it checkpoints with
``torch.save``).  Rules know nothing of workers beyond an index into
per-worker state, and nothing of time, Ray or files.

Difference from MXNet's ``DCASGD`` optimizer: MXNet keeps *one* previous
weight per parameter (the weights before the last update, whoever pushed it),
so with M workers its correction uses ``w - w_prev`` of one step, not the
delay of the pushing worker.  Here, as in Algorithm 2 of Zheng et al. (ICML
2017) and Microsoft's Multiverso updater, the server keeps a backup per
worker: the weights that worker pulled, so ``w - backup`` spans exactly the
``tau`` updates the gradient missed.  MeanSquare (``ms``) is one global buffer
by default; ``per_worker_ms=True`` keeps one per worker as Multiverso does.

All updates are in place.  For P >= 1M parameters sgd, staleness and the DC
rules run as one fused loop compiled by ``torch.compile``
(:mod:`dcasgd.core.kernels`): one pass over memory, no temporaries of size P.
Below that (or with ``DCASGD_NO_COMPILE=1``, or without a C++ compiler), and
always for the newer rules, an eager chain of in-place torch ops does the same
maths, using the ``scratch`` buffer of the state (and a temporary or two).
The two paths agree to float32 rounding; which one runs depends only on P and
the environment, so a run stays bit-for-bit reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
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
    tau_c: int = RULE_DEFAULTS["tau_c"]
    delay_drop: bool = RULE_DEFAULTS["delay_drop"]
    ga_beta: float = RULE_DEFAULTS["ga_beta"]
    adadelay_c: float = RULE_DEFAULTS["adadelay_c"]

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise RuleError(f"unknown rule {self.name!r}; choose one of {', '.join(RULES)}")
        _check_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _check_range("wd", self.wd, 0.0, math.inf)
        _check_range("lam", self.lam, 0.0, math.inf)
        _check_range("lam0", self.lam0, 0.0, math.inf)
        _check_range("m", self.m, 0.0, 1.0, hi_open=True)
        _check_range("ga_beta", self.ga_beta, 0.0, 1.0, hi_open=True)
        _check_range("adadelay_c", self.adadelay_c, 0.0, math.inf)
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise RuleError(f"eps must be > 0, got {self.eps}")
        if isinstance(self.tau_c, bool) or not isinstance(self.tau_c, int) or self.tau_c < 0:
            raise RuleError(f"tau_c must be an integer >= 0 (0: the number of workers), got {self.tau_c!r}")

    def resolved(self, num_workers: int) -> "Rule":
        """This rule with defaults that depend on the cluster filled in (``tau_c = 0``: ``num_workers``)."""
        return replace(self, tau_c=self.tau_c or num_workers) if self.name == "delay-adaptive" else self

    @property
    def needs_backup(self) -> bool:
        """True for rules that read the weights the pushing worker pulled."""
        return self.name.startswith("dc-") or self.name == "gap-aware"

    @property
    def shared_momentum(self) -> bool:
        """Whether the heavy-ball buffer is one for all pushes (dana keeps one per worker instead)."""
        return self.momentum > 0 and self.name != "dana"

    def init(self, num_params: int, num_workers: int) -> State:
        """Zero state for a flat vector of ``num_params`` float32 parameters."""
        state: State = {"step": torch.zeros((), dtype=torch.int64)}
        if self.shared_momentum:
            state["momentum_buffer"] = torch.zeros(num_params)
        if self.needs_backup or self.wd or self.name in ("adadelay", "dana"):
            state["scratch"] = torch.zeros(num_params)
        if self.name == "dc-asgd-a":
            rows = num_workers if self.per_worker_ms else 1
            state["mean_square"] = torch.zeros(rows, num_params)
        elif self.name == "gap-aware":
            state["gap_scale_ms"] = torch.zeros(num_params)         # v: moving mean of u*u
            state["lr_max"] = torch.zeros((), dtype=torch.float64)
        elif self.name == "adadelay":
            state["grad_sq_sum"] = torch.zeros(num_params)          # S: sum of g*g
        elif self.name == "dana":
            state["momenta"] = torch.zeros(num_workers, num_params)  # v_k, one per worker
            state["momentum_sum"] = torch.zeros(num_params)         # sum_k v_k
        return state

    def apply_(self, w: torch.Tensor, g: torch.Tensor, backup: torch.Tensor | None,
               staleness: int, lr: float, state: State, worker: int = 0) -> None:
        """Update ``w`` (and ``state``) in place with gradient ``g``.

        Large vectors go through one fused kernel (:mod:`dcasgd.core.kernels`)
        where one exists; the eager in-place chain below is the same maths op by op.
        """
        step_lr = self.step_lr(lr, staleness)
        if self.needs_backup and backup is None:
            raise RuleError(f"rule {self.name} needs the pushing worker's backup weights")
        if step_lr == 0.0 and self.name == "delay-adaptive" and self.delay_drop:
            state["step"] += 1                      # dropped: an iteration with step size 0 (Koloskova et al.)
            return
        if self._apply_fused(w, g, backup, step_lr, state, worker):
            state["step"] += 1
            return
        direction = self._direction(w, g, backup, lr, state, worker)
        if self.name == "dana":
            self._dana_step(w, direction, step_lr, state, worker)
            state["step"] += 1
            return
        if self.shared_momentum:
            buf = state["momentum_buffer"]
            if int(state["step"]) == 0:
                buf.copy_(direction)
            else:
                buf.mul_(self.momentum).add_(direction)
            direction = buf
        if self.name == "adadelay":
            w.addcmul_(self._adadelay_steps(g, step_lr, staleness, state), direction, value=-1.0)
        else:
            w.add_(direction, alpha=-step_lr)
        state["step"] += 1

    def pull(self, w: torch.Tensor, state: State, lr: float) -> torch.Tensor | None:
        """What a pull returns: None for the weights themselves, or a new tensor.

        dana sends the look-ahead ``w - lr * momentum * sum_k v_k``: where the
        weights will be once every worker's momentum has been applied once more
        (DANA-Zero, Hakimi et al. 2019, Section 4).
        """
        if self.name != "dana" or self.momentum == 0:
            return None
        return torch.add(w, state["momentum_sum"], alpha=-lr * self.momentum)

    def step_lr(self, lr: float, staleness: int) -> float:
        """The learning rate this push is applied with.

        - staleness: ``lr / max(1, tau)``.
        - delay-adaptive (Koloskova, Stich and Jaggi 2022, Theorem 8): ``lr`` while
          ``tau <= tau_c``, the concurrency (workers computing at once); above it
          ``lr * tau_c / tau`` (their bound ``1 / (4 L tau)`` when lr sits at its
          largest allowed value ``1 / (4 L tau_c)``; Mishchenko et al.'s code uses the
          same ``lr * n / max(n, tau)``), or 0 with ``delay_drop``: the gradient is
          dropped, which their analysis allows.
        """
        if self.name == "staleness":
            return lr / max(1, staleness)
        if self.name == "delay-adaptive":
            if self.tau_c == 0:
                raise RuleError("delay-adaptive needs tau_c: use Rule.resolved(num_workers) or set tau_c")
            if staleness <= self.tau_c:
                return lr
            return 0.0 if self.delay_drop else lr * self.tau_c / staleness
        return lr

    def bounds(self, g_norm: float, w_norm: float, backup_norm: float, buf_norm: float, state_norm: float
               ) -> tuple[float, float, float]:
        """Upper bounds for one update, from L2 norms (each also bounds every element's magnitude).

        Given ``||g||``, ``||w||``, ``||backup||``, ``||buf||`` (the heavy-ball buffer, or
        for dana the largest per-worker momentum) and ``state_norm`` (the largest norm
        of the rule's accumulated state: MeanSquare, gap-aware's v, AdaDelay's S),
        returns ``(peak, buffer, state_after)``:

        - ``peak``: every value the update computes, elementwise, is at most this
          (for the DC rules ``g*g*(w - backup)`` before its factor: ``g**2 * (w + backup)``);
        - ``buffer``: a bound on ``||d||``, or on the momentum buffer after it took ``d``;
          the step is at most ``lr * buffer`` (every rule's step size is at most ``lr``).
          The dc-asgd-a factor obeys ``lam0 / sqrt(ms + eps) * g*g <= lam0 * |g| / sqrt(1 - m)``,
          since the updated ``ms >= (1 - m) * g*g``; gap-aware's penalty is >= 1;
        - ``state_after``: the accumulated state after this push (a moving mean or a sum
          of squares grows by at most ``max(g, buf)**2``).

        The server uses them to prove that an update leaves finite weights before
        applying it (:meth:`dcasgd.core.server.ServerCore.push`).
        """
        gap = w_norm + backup_norm
        squares = max(g_norm, buf_norm) ** 2
        state_after = state_norm + squares if self.name in ("dc-asgd-a", "gap-aware", "adadelay") else state_norm
        peak = max(g_norm, w_norm, state_after, squares)
        correction = 0.0
        if self.name == "dc-asgd-c":
            correction = self.lam * g_norm * g_norm * gap
            peak = max(peak, g_norm * g_norm * gap * max(1.0, self.lam))
        elif self.name == "dc-asgd-a":
            correction = self.lam0 * g_norm / math.sqrt(1.0 - self.m) * gap
            peak = max(peak, g_norm * g_norm * gap * max(1.0, self.lam0))
        elif self.name == "gap-aware":
            peak = max(peak, gap)
        direction = g_norm + correction + self.wd * w_norm
        buffer = self.momentum * buf_norm + direction if self.momentum > 0 else direction
        if self.name == "dana":
            state_after = max(state_norm, buffer) * 2       # sum_k v_k changes by v_new - v_old
        return max(peak, direction, buffer, state_after), buffer, state_after

    def warm_up(self, num_params: int, backup_dtype: torch.dtype | None = torch.float32) -> bool:
        """Compile now the fused kernel :meth:`apply_` will use for ``num_params`` parameters.

        True if one is ready; False where pushes of that size take no kernel
        (plain sgd/staleness, the newer rules, below the threshold, no compiler).
        """
        family = self._kernel_family()
        return family is not None and kernels.warm_up(family, bool(self.momentum), backup_dtype, num_params)

    def _kernel_family(self) -> str | None:
        """The fused kernel family this rule's update takes, or None: plain sgd/staleness
        (no momentum, no wd) is one ``add_`` already, a single pass with no kernel; the
        newer rules run their eager chain."""
        if self.name not in ("sgd", "staleness", "dc-asgd-c", "dc-asgd-a"):
            return None
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

    def _direction(self, w: torch.Tensor, g: torch.Tensor, backup: torch.Tensor | None, lr: float,
                   state: State, worker: int) -> torch.Tensor:
        """``d`` of the module docstring (``g`` itself when it needs no change; else the scratch buffer)."""
        direction = g
        if self.name.startswith("dc-"):
            direction = self._compensate(w, g, backup, state, worker)
        if self.wd:
            if direction is g:
                direction = state["scratch"].copy_(g)
            direction.add_(w, alpha=self.wd)
        if self.name == "gap-aware":
            direction = self._penalise(w, g, direction, backup, lr, state)
        return direction

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

    def _penalise(self, w: torch.Tensor, g: torch.Tensor, direction: torch.Tensor, backup: torch.Tensor,
                  lr: float, state: State) -> torch.Tensor:
        """Gap-Aware (Barkai, Hakimi and Schuster, ICLR 2020): ``d / (1 + |w - backup| / C)``.

        ``C = lr_max * (sqrt(v / (1 - beta**t)) + 1e-8)`` is the typical size of one
        step per coordinate: ``v`` a moving mean (decay ``ga_beta``) of ``u*u`` with
        ``u`` the momentum buffer of the previous push (the gradient itself without
        momentum, and at the first push), bias-corrected as in Adam, ``t`` the push
        count, ``lr_max`` the largest learning rate scheduled so far.  A coordinate
        that moved by k typical steps since the worker pulled gets its gradient (and
        weight-decay term) divided by ``1 + k``.  Details as in the authors' group's
        public code (saareliad/FTPipe, ``pipeline/gap_aware``); the penalty acts before
        the momentum buffer.  Returns a new tensor.
        """
        beta, step = self.ga_beta, int(state["step"])
        u = state["momentum_buffer"] if self.shared_momentum and step > 0 else g
        v = state["gap_scale_ms"]
        v.mul_(beta).addcmul_(u, u, value=1.0 - beta)
        state["lr_max"].fill_(max(float(state["lr_max"]), lr))
        scale = float(state["lr_max"])
        typical = v.div(1.0 - beta ** (step + 1)).sqrt_().add_(1e-8).mul_(scale)        # C
        penalty = torch.sub(w, backup).abs_().div_(typical).add_(1.0)                 # 1 + |w - backup| / C
        return direction.div(penalty)

    def _adadelay_steps(self, g: torch.Tensor, lr: float, staleness: int, state: State) -> torch.Tensor:
        """AdaDelay (Sra, Yu, Li and Smola, AISTATS 2016): per-coordinate steps
        ``alpha_j = 1 / (L + c_j sqrt(t + tau))`` with ``L = 1 / lr`` and ``c_j = c * sqrt(S_j / t)``,
        ``S`` the sum of squared gradients (AdaGrad's), ``t`` the push count including this one.

        So ``alpha = lr / (1 + lr * c * sqrt(S / t) * sqrt(t + tau))``: a delay ``tau`` costs
        a step as if the run were ``tau`` pushes older.  The paper's constant c_j weights
        past gradients by their delays; its exact weights are not reproduced here (every
        past gradient counts once), and ``lr`` follows the run's schedule.  Returns alpha
        (a new tensor).
        """
        t = int(state["step"]) + 1
        total = state["grad_sq_sum"]
        total.addcmul_(g, g)
        alpha = total.div(t).sqrt_().mul_(lr * self.adadelay_c * math.sqrt(t + staleness)).add_(1.0)
        return alpha.reciprocal_().mul_(lr)

    def _dana_step(self, w: torch.Tensor, direction: torch.Tensor, lr: float, state: State, worker: int) -> None:
        """DANA-Zero: worker m's own heavy-ball ``v_m = momentum*v_m + d``, ``w -= lr * v_m``; the sum of
        the momenta (for the look-ahead pull) follows."""
        v, total = state["momenta"][worker], state["momentum_sum"]
        total.sub_(v)
        v.mul_(self.momentum).add_(direction)
        total.add_(v)
        w.add_(v, alpha=-lr)


def _check_range(name: str, value: float, lo: float, hi: float, hi_open: bool = False) -> None:
    ok = lo <= value < hi if hi_open else lo <= value <= hi
    if not ok or math.isnan(value):
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise RuleError(f"{name} must be in {bound}, got {value}")


def make_rule(name: str, **hyper: float) -> Rule:
    """Build a rule by registry name; unknown keywords are an error."""
    allowed = set(RULE_DEFAULTS)
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
