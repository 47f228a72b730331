"""TrainConfig: every setting of a training run, validated before anything starts.

The CLI, presets and ``--config FILE`` (TOML) all produce a TrainConfig;
:meth:`TrainConfig.validate` raises :class:`ConfigError` naming the field and
the allowed values, which the CLI turns into exit status 2.  This module
imports no torch, so ``dcasgd --help`` and bad-input errors come back at once.

Settings fall in two kinds for a resumed run (``--resume DIR``):

- :data:`RUN_INVARIANT`: where a run writes, how it reports and where it runs.
  They never change what it computes, so a resume may change them, and
  ``dcasgd compare`` ignores them when it decides whether a finished run is
  current.
- :data:`STOP_CONDITIONS`: when a run stops early.  A resume may change them
  too (stop after N updates, then continue to the end).

Every other setting changes the trajectory and must match the checkpoint's.
``--resume DIR`` takes the settings from the checkpoint, except
:data:`NOT_RESTORED_ON_RESUME`: it writes into DIR, and the stop conditions
start at their defaults, so a run stopped with ``--stop-after-updates`` goes on.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .core.consistency import ConsistencyError, parse_consistency
from .errors import InputError
from .names import (AUGMENTS, BACKENDS, BACKUP_DTYPES, DATASETS, DEVICES, LOSSES, METRICS, MODELS, RULE_DEFAULTS,
                    RULES, SCHEDULES, TIMINGS)

__all__ = ["BACKENDS", "DATASETS", "SCHEDULES", "ConfigError", "TrainConfig", "RUN_INVARIANT", "STOP_CONDITIONS",
           "RESUME_MAY_CHANGE", "NOT_RESTORED_ON_RESUME", "MAX_SEED"]

RUN_INVARIANT = frozenset({"out", "resume", "overwrite", "progress", "tensorboard", "data_root", "checkpoint_every",
                           "keep_checkpoints", "address", "worker_restarts", "device", "threads",
                           "connect_timeout", "loader_workers"})
STOP_CONDITIONS = frozenset({"stop_after_updates", "max_refused"})
RESUME_MAY_CHANGE = RUN_INVARIANT | STOP_CONDITIONS
# What ``--resume DIR`` does not take from the checkpoint: where to write (DIR), and the stop
# conditions, which start at their defaults (so a run stopped after N updates goes on to the end).
NOT_RESTORED_ON_RESUME = frozenset({"out", "resume", "overwrite"}) | STOP_CONDITIONS

MAX_SEED = 2**32 - 1              # numpy's and torch's generators both take any seed in [0, 2**32)
SPEED_FACTOR_RANGE = (1e-3, 1e3)  # a worker speed or straggler factor outside it is a typo, not a cluster
MAX_HETERO_SIGMA = 3.0            # exp(3 * z) already spans 1e-4..1e4 over a few thousand workers


class ConfigError(InputError):
    """A setting out of range; the message names the field and what is allowed."""


@dataclass
class TrainConfig:
    # what to train
    backend: str = "sim"
    rule: str = "dc-asgd-a"
    consistency: str = "async"
    workers: int = 8
    dataset: str = "fashion-mnist"     # a built-in name, or an import path module:function
    model: str = "mlp"                 # a built-in name, or an import path module:factory
    loss: str = "cross-entropy"        # a built-in name, or an import path module:function
    metric: str = "error"              # (lower is better; reported as test_error)
    epochs: float = 8.0                # under a time budget: the epoch cap
    time_budget: float = 0.0           # seconds of training (simulated; wall on Ray); 0 = none
    target_error: float | None = None  # stop at the first evaluation at or below it (metric units); None = none
    batch_size: int = 128
    seed: int = 0
    out: str | None = "runs/latest"    # None (Python API): nothing written, results in memory
    overwrite: bool = False            # a new run may replace the files of another run in ``out``
    data_root: str | None = None
    val_size: int = 0
    eval_split: str = "test"           # "test" or "val": what eval lines and final error measure
    eval_every: float = 1.0            # epochs between evaluations
    # the data path (compute/batches.py): import paths module:name, None = the default
    step: str | None = None            # step_fn(model, batch) -> loss; None: loss(model(input), target)
    eval: str | None = None            # eval_fn(model, batch) -> (metric_sum, count); None: the metric
    transform: str | None = None       # a random per-sample transform of each training input
    collate: str | None = None         # collate_fn(items) -> batch; None: default_collate
    augment: str = "none"              # built-in augmentation of tensor images (AUGMENTS)
    loader_workers: int = 0            # processes building a lazy Dataset's batches ahead (as num_workers)
    # rule hyperparameters (names as in ServerCore)
    lr: float = 0.05
    momentum: float = RULE_DEFAULTS["momentum"]
    wd: float = RULE_DEFAULTS["wd"]
    lam: float = RULE_DEFAULTS["lam"]
    lam0: float = RULE_DEFAULTS["lam0"]
    m: float = RULE_DEFAULTS["m"]
    eps: float = RULE_DEFAULTS["eps"]
    per_worker_ms: bool = RULE_DEFAULTS["per_worker_ms"]
    tau_c: int = RULE_DEFAULTS["tau_c"]              # delay-adaptive: concurrency (0 = the number of workers)
    delay_drop: bool = RULE_DEFAULTS["delay_drop"]   # delay-adaptive: drop gradients staler than tau_c
    ga_beta: float = RULE_DEFAULTS["ga_beta"]        # gap-aware: decay of the moving mean of squared steps
    adadelay_c: float = RULE_DEFAULTS["adadelay_c"]  # adadelay: scale of the delay-dependent term
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
    timing: str = "model"              # per-gradient noise: "model" (lognormal) or "empirical" (quantile tables)
    jitters: tuple[float, ...] = ()    # per-worker lognormal sigma (in place of jitter)
    timing_quantiles: tuple[tuple[float, ...], ...] = ()   # timing "empirical": each worker's quantile table
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
    threads: int = 0                   # torch threads (0: as torch has them); the simulator's bits depend on it
    corrupt: dict[int, float] = field(default_factory=dict)   # sim fault injection: worker -> P(NaN gradient)
    # ray
    servers: int = 1
    address: str | None = None
    connect_timeout: float = 30.0      # seconds to connect to a Ray cluster at address before giving up
    worker_restarts: int = 0
    device: str = "cpu"

    def rule_params(self) -> dict[str, Any]:
        """The rule's hyperparameters (every key of :data:`dcasgd.names.RULE_DEFAULTS`)."""
        return {name: getattr(self, name) for name in RULE_DEFAULTS}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stragglers"] = {str(k): v for k, v in self.stragglers.items()}
        d["corrupt"] = {str(k): v for k, v in self.corrupt.items()}
        return d

    def validate(self) -> "TrainConfig":
        """Check every setting; raise ConfigError naming the first bad one.  Returns self."""
        self._check_types()
        _choice("backend", self.backend, BACKENDS)
        _choice("rule", self.rule, RULES)
        _name_or_path("dataset", self.dataset, DATASETS)
        _name_or_path("model", self.model, MODELS)
        _name_or_path("loss", self.loss, LOSSES)
        _name_or_path("metric", self.metric, METRICS)
        for name in ("step", "eval", "transform", "collate"):
            if getattr(self, name) is not None:
                _name_or_path(name, getattr(self, name), ())
        _choice("augment", self.augment, AUGMENTS)
        _choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _choice("eval_split", self.eval_split, ("test", "val"))
        _choice("backup_dtype", self.backup_dtype, BACKUP_DTYPES)
        _choice("device", self.device, DEVICES)
        _choice("timing", self.timing, TIMINGS)
        try:
            consistency = parse_consistency(self.consistency)
        except ConsistencyError as exc:
            raise ConfigError(f"consistency: {exc}") from None
        if consistency.drops_jobs and self.backend == "ray" and self.servers != 1:
            raise ConfigError(f"consistency {self.consistency!r} on Ray needs one server shard (--servers 1): "
                              f"shard 0 decides which pushes it drops")
        for name in ("workers", "batch_size", "servers", "keep_checkpoints"):
            _positive_int(name, getattr(self, name))
        for name in ("val_size", "probe_every", "checkpoint_every", "max_refused", "worker_restarts",
                     "stop_after_updates", "tau_c", "threads", "loader_workers"):
            _nonneg_int(name, getattr(self, name))
        _nonneg_int("seed", self.seed)
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {self.seed}")
        if self.out is not None and not self.out.strip():
            raise ConfigError("out must name a directory (or be None: no files), got an empty string")
        if self.out is None and (self.checkpoint_every or self.resume or self.tensorboard):
            raise ConfigError("checkpoints, --resume and --tensorboard need a run directory: set out")
        _positive("epochs", self.epochs)
        _nonneg("time_budget", self.time_budget)
        if self.target_error is not None and (isinstance(self.target_error, bool) or not isinstance(
                self.target_error, (int, float)) or not math.isfinite(self.target_error)):
            raise ConfigError(f"target_error must be a finite number (the metric's units) or unset, "
                              f"got {self.target_error!r}")
        _positive("lr", self.lr)
        _positive("eval_every", self.eval_every)
        _positive("base_time", self.base_time)
        _positive("connect_timeout", self.connect_timeout)
        _positive("eps", self.eps)
        for name in ("wd", "lam", "lam0", "jitter", "comm_time", "hetero_sigma", "warmup_epochs", "clip_norm",
                     "adadelay_c"):
            _nonneg(name, getattr(self, name))
        for name in ("momentum", "m", "ga_beta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
        self._check_schedule()
        if self.eval_split == "val" and self.val_size == 0:
            raise ConfigError("eval_split 'val' needs val_size > 0")
        if self.probe_every and self.step is not None:
            raise ConfigError("probe_every: the compensation probe differentiates loss(model(input), target) "
                              "sample by sample; it cannot use a step (leave out --step or --probe-every)")
        self._check_cluster()
        if self.address is not None:
            check_address(self.address)
        return self

    def _check_types(self) -> None:
        """Each field has the type its default has (a TOML file can give a number where a path belongs)."""
        for name in _STR_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in _OPTIONAL_STR_FIELDS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string (a path or address), got {value!r}")
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("speeds", "lr_milestones", "jitters"):
            if not isinstance(getattr(self, name), (tuple, list)):
                raise ConfigError(f"{name} must be a list of numbers, got {getattr(self, name)!r}")
        if not (isinstance(self.timing_quantiles, (tuple, list))
                and all(isinstance(row, (tuple, list)) for row in self.timing_quantiles)):
            raise ConfigError(f"timing_quantiles must be a list of lists of numbers (one per worker), "
                              f"got {self.timing_quantiles!r}")
        for name in ("stragglers", "corrupt"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a table of worker -> number, got {getattr(self, name)!r}")
        if not isinstance(self.failures, (tuple, list)):
            raise ConfigError(f"failures must be a list of [worker, fail_at, rejoin_at], got {self.failures!r}")

    def _check_schedule(self) -> None:
        _positive("lr_gamma", self.lr_gamma)
        if self.lr_gamma > 1:
            raise ConfigError(f"lr_gamma must be in (0, 1] (the step schedule multiplies lr by it), "
                              f"got {self.lr_gamma!r}")
        for mark in self.lr_milestones:
            _nonneg("lr_milestones", mark)
        if self.warmup_epochs > self.epochs:
            raise ConfigError(f"warmup_epochs {self.warmup_epochs:g} is longer than the run "
                              f"({self.epochs:g} epochs)")

    def _check_cluster(self) -> None:
        lo, hi = SPEED_FACTOR_RANGE
        if self.speeds:
            if len(self.speeds) != self.workers:
                raise ConfigError(f"speeds: {len(self.speeds)} values given for {self.workers} workers")
            for s in self.speeds:
                _in_range("speeds", s, lo, hi)
        if self.hetero_sigma > MAX_HETERO_SIGMA:
            raise ConfigError(f"hetero_sigma must be in [0, {MAX_HETERO_SIGMA:g}], got {self.hetero_sigma!r}")
        self._check_timing()
        for worker, factor in self.stragglers.items():
            _worker_index("straggler", worker, self.workers)
            _in_range("straggler factor", factor, lo, hi)
        for worker, rate in self.corrupt.items():
            _worker_index("corrupt", worker, self.workers)
            if not (isinstance(rate, (int, float)) and 0 <= rate <= 1):
                raise ConfigError(f"corrupt: probability for worker {worker} must be in [0, 1], got {rate!r}")
        for failure in self.failures:
            if not isinstance(failure, (tuple, list)) or len(failure) != 3:
                raise ConfigError(f"failure {failure!r}: expected (worker, fail_at, rejoin_at or None)")
            worker, at, rejoin = failure
            _worker_index("failure", worker, self.workers)
            _nonneg("failure time", at)
            if rejoin is not None and not (isinstance(rejoin, (int, float)) and rejoin > at):
                raise ConfigError(f"failure of worker {worker}: rejoin time {rejoin} must be after failure time {at}")

    def _check_timing(self) -> None:
        """Per-worker jitters and quantile tables: one per worker, and only where ``timing`` uses them."""
        if self.jitters:
            if len(self.jitters) != self.workers:
                raise ConfigError(f"jitters: {len(self.jitters)} values given for {self.workers} workers")
            if self.jitter:
                raise ConfigError("jitter and jitters both given: jitters sets each worker's sigma, jitter all of them")
            for sigma in self.jitters:
                _nonneg("jitters", sigma)
                if sigma > MAX_HETERO_SIGMA:
                    raise ConfigError(f"jitters must be in [0, {MAX_HETERO_SIGMA:g}], got {sigma!r}")
        if self.timing == "empirical":
            if self.jitter or self.jitters:
                raise ConfigError("timing 'empirical' draws each gradient's noise from timing_quantiles: "
                                  "jitter and jitters apply to timing 'model'")
            if len(self.timing_quantiles) != self.workers:
                raise ConfigError(f"timing 'empirical' needs timing_quantiles: one table per worker, "
                                  f"got {len(self.timing_quantiles)} for {self.workers} workers")
            for worker, table in enumerate(self.timing_quantiles):
                _quantile_table(worker, table)
        elif self.timing_quantiles:
            raise ConfigError("timing_quantiles are used only with timing 'empirical'")


_STR_FIELDS = ("backend", "rule", "consistency", "dataset", "model", "loss", "metric", "eval_split",
               "backup_dtype", "lr_schedule", "device", "timing", "augment")
_OPTIONAL_STR_FIELDS = ("out", "data_root", "replay", "tensorboard", "resume", "address", "step", "eval", "transform",
                        "collate")
_BOOL_FIELDS = ("per_worker_ms", "progress", "overwrite", "delay_drop")
_ADDRESS = re.compile(r"^(?:ray://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


def check_address(address: str) -> tuple[str, int] | None:
    """A Ray cluster address: ``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``.

    Returns ``(host, port)``, or None for ``auto`` (Ray finds the cluster
    started on this machine); raises ConfigError for anything else.
    """
    if address == "auto":
        return None
    match = _ADDRESS.match(address.strip())
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ConfigError(f"address {address!r} is not a Ray cluster address: expected HOST:PORT "
                          f"(e.g. 10.0.0.1:6379), ray://HOST:PORT or auto")
    return match["host"].strip("[]"), port


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def _name_or_path(name: str, value: str, builtin: tuple[str, ...]) -> None:
    """A built-in name, or an import path ``module:attribute`` (checked when the run resolves it)."""
    module, sep, attr = value.partition(":")
    if value in builtin or (sep and module.strip() and attr.strip() and " " not in value):
        return
    allowed = f"{', '.join(builtin)}, or an import path module:name" if builtin else "an import path module:name"
    raise ConfigError(f"{name}: unknown value {value!r}; allowed: {allowed}")


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


def _in_range(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise ConfigError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")


def _quantile_table(worker: int, table: Any) -> None:
    """A quantile table: at least 2 finite numbers > 0, non-decreasing (at probabilities 0, 1/(n-1), ..., 1)."""
    ok = len(table) >= 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                 and math.isfinite(v) for v in table)
    if not ok or any(b < a for a, b in zip(table, table[1:])):
        raise ConfigError(f"timing_quantiles: worker {worker}'s table must be at least 2 finite numbers > 0 in "
                          f"non-decreasing order, got {list(table)!r}")


def _worker_index(what: str, worker: Any, workers: int) -> None:
    if isinstance(worker, bool) or not isinstance(worker, int) or not 0 <= worker < workers:
        raise ConfigError(f"{what}: worker {worker!r} is not in 0..{workers - 1}")
