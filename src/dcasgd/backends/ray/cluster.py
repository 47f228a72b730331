"""Connecting to Ray: a private loopback-only local Ray, or a cluster at an address.

:func:`init_local_ray` starts Ray bound to 127.0.0.1 only, with the
dashboard off, sized to the job (:func:`local_ray_options`).
:func:`check_reachable` fails at once when nothing listens at a cluster
address, instead of Ray's minutes of retries.  Custom resources
``dcasgd_server`` / ``dcasgd_worker`` pin actors to nodes (``ray start
--resources``), see docs/ray.md.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import ray

from ...config import ConfigError, check_address
from ...errors import RunFailed

SERVER_RESOURCE = "dcasgd_server"     # custom resource that pins server actors (ray start --resources)
WORKER_RESOURCE = "dcasgd_worker"     # custom resource that pins worker actors


class RayBackendError(RunFailed):
    """The Ray run could not go on (a worker raised, the cluster lacks a resource)."""


class ServerLost(RayBackendError):
    """A server shard or the coordinator died; resume from the last checkpoint with --resume."""


def loopback_only() -> None:
    """Make a Ray started from this process use 127.0.0.1 and listen on loopback only.

    Ray turns an explicit ``_node_ip_address="127.0.0.1"`` into the machine's
    routable address (and its gRPC servers then listen on every interface)
    unless cluster mode is off; ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` turns
    it off for this process and the Ray processes it starts.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants   # read at call time by services.get_node_ip_address
    ray_constants.ENABLE_RAY_CLUSTER = False


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def local_ray_options(num_params: int = 0, data_bytes: int = 0, num_workers: int = 1,
                      num_servers: int = 1) -> dict[str, Any]:
    """ray.init arguments for a private Ray on this machine, bound to loopback, sized to the job.

    Object store: the training set once, a few copies of the flat vector per
    actor, 128 MiB slack; at least 256 MiB, at most 30% of RAM.

    The actors see this process's ``sys.path`` (as ``PYTHONPATH``), so a model
    factory, loss or metric importable here is importable in every worker (Ray
    pickles functions of importable modules by name).  On a cluster, ship your
    code with Ray's ``runtime_env`` (``ray start`` nodes need it installed).
    """
    need = 2 * data_bytes + 8 * (num_workers + num_servers + 2) * num_params * 4 + 128 * 1024**2
    store = int(min(max(need, 256 * 1024**2), 0.3 * _physical_memory()))
    python_path = os.pathsep.join(dict.fromkeys(os.path.abspath(p or os.curdir) for p in sys.path))
    return {"address": "local", "num_cpus": os.cpu_count() or 1, "object_store_memory": store,
            "include_dashboard": False, "_node_ip_address": "127.0.0.1",
            "runtime_env": {"env_vars": {"PYTHONPATH": python_path}}}


def init_local_ray(**overrides: Any) -> None:
    """Start a private loopback-only Ray (``local_ray_options`` updated by ``overrides``)."""
    loopback_only()
    options = {**local_ray_options(), **overrides}
    ray.init(**options)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail at once, with one line, when nothing listens at a Ray cluster address (``auto`` is Ray's to find)."""
    host_port = check_address(address)
    if host_port is None:
        return
    host, port = host_port
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"address: cannot reach a Ray cluster at {address} ({reason}); start one with "
                              f"'ray start --head' there, or leave out --address for a local Ray") from None
