"""TrainConfig: every setting of a training run, validated before anything starts.

The CLI, presets and ``--config FILE`` (TOML) all produce a TrainConfig;
:meth:`TrainConfig.validate` raises :class:`ConfigError` naming the field and
the allowed values, which the CLI turns into exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .consistency import ConsistencyError, parse_consistency
from .models import MODELS
from .rules import RULES, Rule

# the rule hyperparameters' defaults are Rule's own (one place to change them)
_RULE_DEFAULT = {f.name: f.default for f in dataclasses.fields(Rule)}

DATASETS = ("fashion-mnist", "mnist", "cifar10", "synthetic")
BACKENDS = ("sim", "ray")
SCHEDULES = ("constant", "step", "cosine")


class ConfigError(ValueError):
    """A setting out of range; the message names the field and what is allowed."""


@dataclass
class TrainConfig:
    # what to train
    backend: str = "sim"
    rule: str = "dc-asgd-a"
    consistency: str = "async"
    workers: int = 8
    dataset: str = "fashion-mnist"
    model: str = "mlp"
    epochs: float = 8.0
    batch_size: int = 128
    seed: int = 0
    out: str = "runs/latest"
    data_root: str | None = None
    val_size: int = 0
    eval_split: str = "test"           # "test" or "val": what eval lines and final error measure
    eval_every: float = 1.0            # epochs between evaluations
    # rule hyperparameters (names as in ServerCore)
    lr: float = 0.05
    momentum: float = _RULE_DEFAULT["momentum"]
    wd: float = _RULE_DEFAULT["wd"]
    lam: float = _RULE_DEFAULT["lam"]
    lam0: float = _RULE_DEFAULT["lam0"]
    m: float = _RULE_DEFAULT["m"]
    eps: float = _RULE_DEFAULT["eps"]
    per_worker_ms: bool = _RULE_DEFAULT["per_worker_ms"]
    backup_dtype: str = "float32"
    # learning-rate schedule
    lr_schedule: str = "cosine"
    lr_milestones: tuple[float, ...] = ()
    lr_gamma: float = 0.1
    warmup_epochs: float = 0.0
    # simulated cluster timing (simulated seconds)
    base_time: float = 1.0
    speeds: tuple[float, ...] = ()
    hetero_sigma: float = 0.0
    jitter: float = 0.0
    stragglers: dict[int, float] = field(default_factory=dict)
    comm_time: float = 0.0
    failures: tuple[tuple[int, float, float | None], ...] = ()
    replay: str | None = None
    # observability
    probe_every: int = 0
    tensorboard: str | None = None
    progress: bool = True
    # reliability
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    resume: str | None = None
    max_refused: int = 0
    clip_norm: float = 0.0
    stop_after_updates: int = 0        # stop early with a checkpoint; 0 = run to the end
    corrupt: dict[int, float] = field(default_factory=dict)   # sim fault injection: worker -> P(NaN gradient)
    # ray
    servers: int = 1
    address: str | None = None
    worker_restarts: int = 0
    device: str = "cpu"

    def rule_params(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "wd": self.wd, "lam": self.lam, "lam0": self.lam0,
                "m": self.m, "eps": self.eps, "per_worker_ms": self.per_worker_ms}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stragglers"] = {str(k): v for k, v in self.stragglers.items()}
        d["corrupt"] = {str(k): v for k, v in self.corrupt.items()}
        return d

    def validate(self) -> "TrainConfig":
        _choice("backend", self.backend, BACKENDS)
        _choice("rule", self.rule, RULES)
        _choice("dataset", self.dataset, DATASETS)
        _choice("model", self.model, MODELS)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("eval_split", self.eval_split, ("test", "val"))
        _choice("backup_dtype", self.backup_dtype, ("float32", "bfloat16"))
        _choice("device", self.device, ("cpu", "cuda"))
        try:
            parse_consistency(self.consistency)
        except ConsistencyError as exc:
            raise ConfigError(f"consistency: {exc}") from None
        for name in ("workers", "batch_size", "servers", "keep_checkpoints"):
            _positive_int(name, getattr(self, name))
        for name in ("val_size", "probe_every", "checkpoint_every", "max_refused", "worker_restarts",
                     "stop_after_updates"):
            _nonneg_int(name, getattr(self, name))
        _positive("epochs", self.epochs)
        _positive("lr", self.lr)
        _positive("eval_every", self.eval_every)
        _positive("base_time", self.base_time)
        _positive("eps", self.eps)
        for name in ("wd", "lam", "lam0", "jitter", "comm_time", "hetero_sigma", "warmup_epochs", "clip_norm"):
            _nonneg(name, getattr(self, name))
        for name in ("momentum", "m"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        _positive("lr_gamma", self.lr_gamma)
        if self.eval_split == "val" and self.val_size == 0:
            raise ConfigError("eval_split 'val' needs val_size > 0")
        if self.speeds:
            if len(self.speeds) != self.workers:
                raise ConfigError(f"speeds: {len(self.speeds)} values given for {self.workers} workers")
            for s in self.speeds:
                _positive("speeds", s)
        for worker, factor in self.stragglers.items():
            _worker_index("straggler", worker, self.workers)
            _positive("straggler factor", factor)
        for worker, rate in self.corrupt.items():
            _worker_index("corrupt", worker, self.workers)
            if not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
                raise ConfigError(f"corrupt: probability for worker {worker} must be in [0, 1], got {rate!r}")
        for worker, at, rejoin in self.failures:
            _worker_index("failure", worker, self.workers)
            _nonneg("failure time", at)
            if rejoin is not None and not rejoin > at:
                raise ConfigError(f"failure of worker {worker}: rejoin time {rejoin} must be after failure time {at}")
        return self


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def _nonneg_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _nonneg(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


def _worker_index(what: str, worker: Any, workers: int) -> None:
    if isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker < workers:
        raise ConfigError(f"{what}: worker {worker!r} is not in 0..{workers - 1}")
