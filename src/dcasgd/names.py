"""The built-in names: rules, models, datasets, losses, metrics, schedules, backends.

Models, datasets, losses and metrics may also be a user's, named by an import
path ``package.module:name`` (see :mod:`dcasgd.compute.task`).

Torch-free on purpose: the CLI builds ``--help`` and validates a
configuration from these names without importing torch (which takes seconds).
The modules that implement each name check against the same tuples.
"""

from __future__ import annotations

RULES = ("sgd", "staleness", "delay-adaptive", "gap-aware", "adadelay", "dana", "dc-asgd-c", "dc-asgd-a")
MODELS = ("mlp", "cnn", "resnet20")
DATASETS = ("fashion-mnist", "mnist", "cifar10", "synthetic")
SCHEDULES = ("constant", "step", "cosine")
LOSSES = ("cross-entropy", "mse")
METRICS = ("error", "mse")
BACKENDS = ("sim", "ray")
BACKUP_DTYPES = ("float32", "bfloat16")
DEVICES = ("cpu", "cuda")
TIMINGS = ("model", "empirical")          # the simulator's per-gradient noise (dcasgd.engine.timing)
FIT_SHAPES = ("empirical", "lognormal")   # what dcasgd fit fits to each worker's cycles (dcasgd.engine.fit)
# Built-in augmentation of tensor images (compute/augment.py): none, or 4-pixel padding with a random crop
# back to the image size and a horizontal flip (the standard CIFAR-10 recipe).
AUGMENTS = ("none", "crop-flip")

# Rule hyperparameters and their defaults: lam for dc-asgd-c; lam0, m, eps for dc-asgd-a (the paper's,
# Zheng et al. 2017, Section 6); tau_c (0: the number of workers) and delay_drop for delay-adaptive;
# ga_beta for gap-aware (Barkai et al.'s code: 0.999); adadelay_c for adadelay; momentum and weight
# decay for every rule.
RULE_DEFAULTS = {"momentum": 0.0, "wd": 0.0, "lam": 0.04, "lam0": 2.0, "m": 0.95, "eps": 1e-7,
                 "per_worker_ms": False, "tau_c": 0, "delay_drop": False, "ga_beta": 0.999, "adadelay_c": 1.0}
DEFAULT_LR = 0.1
