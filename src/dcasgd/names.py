"""The built-in names: rules, models, datasets, losses, metrics, schedules, backends.

Models, datasets, losses and metrics may also be a user's, named by an import
path ``package.module:name`` (see :mod:`dcasgd.compute.task`).

Torch-free on purpose: the CLI builds ``--help`` and validates a
configuration from these names without importing torch (which takes seconds).
The modules that implement each name check against the same tuples.
"""

from __future__ import annotations

RULES = ("sgd", "staleness", "dc-asgd-c", "dc-asgd-a")
MODELS = ("mlp", "cnn", "resnet20")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "synthetic")
SCHEDULES = ("constant", "step", "cosine")
LOSSES = ("cross-entropy", "mse")
METRICS = ("error", "mse")
BACKENDS = ("sim", "ray")
BACKUP_DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda")

# Rule hyperparameters and their defaults (the paper's, Zheng et al. 2017, Section 6):
# lam for dc-asgd-c; lam0, m, eps for dc-asgd-a; momentum and weight decay for every rule.
RULE_DEFAULTS = {"momentum": 0.0, "wd": 0.0, "lam": 0.04, "lam0": 2.0, "m": 0.95, "eps": 1e-7,
                 "per_worker_ms": False}
DEFAULT_LR = 0.1
