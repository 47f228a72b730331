"""dcasgd: delay-compensated asynchronous SGD on a parameter server (Zheng et al., ICML 2017).

Train your own model on your own data with any of the server's update rules,
on a deterministic simulated cluster or on Ray::

    import dcasgd
    result = dcasgd.train(make_net, train_dataset, eval_data=test_dataset, rule="dc-asgd-a", workers=8)

The names below are the public API; they load on first use, so
``python -m dcasgd --help`` starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    # training a model
    "train": "dcasgd.api", "TrainResult": "dcasgd.api", "TrainConfig": "dcasgd.config",
    "worker_batches": "dcasgd.api",
    # losses and metrics
    "cross_entropy": "dcasgd.compute.objectives", "classification_error": "dcasgd.compute.objectives",
    "mean_squared_error": "dcasgd.compute.objectives",
    # the parameter server's core
    "ServerCore": "dcasgd.core.server", "make_rule": "dcasgd.core.rules", "Rule": "dcasgd.core.rules",
    "LRSchedule": "dcasgd.core.rules", "RULES": "dcasgd.names",
    # errors
    "DcasgdError": "dcasgd.errors", "InputError": "dcasgd.errors", "RunFailed": "dcasgd.errors",
    "UserCodeError": "dcasgd.errors", "StorageError": "dcasgd.errors",
    "ConfigError": "dcasgd.config", "PushRejected": "dcasgd.core.server",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dcasgd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
