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
import subprocess
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
    """Fail at once, with one line, when nothing listens at a Ray cluster address (``auto`` is Ray's to find),
    or when what listens there does not speak gRPC, as a Ray cluster's GCS does (a web server, say)."""
    host_port = check_address(address)
    if host_port is None:
        return
    host, port = host_port
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            speaks_grpc = _answers_http2(conn, timeout_s)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"address: cannot reach a Ray cluster at {address} ({reason}); start one with "
                              f"'ray start --head' there, or leave out --address for a local Ray") from None
    if not speaks_grpc:
        raise ConfigError(f"address: something listens at {address}, but it is not a Ray cluster (it does not "
                          f"answer as Ray's GCS, a gRPC server, does); check the host and port 'ray start --head' "
                          f"printed") from None


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + empty SETTINGS


def _answers_http2(conn: socket.socket, timeout_s: float) -> bool:
    """Whether the server on ``conn`` answers the HTTP/2 connection preface with a SETTINGS frame (gRPC)."""
    conn.settimeout(timeout_s)
    try:
        conn.sendall(_HTTP2_PREFACE)
        header = b""
        while len(header) < 9:
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:
        return False
    return header[3] == 0x04                      # frame type 4: SETTINGS


_CONNECT_PROBE = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
ray.shutdown()
"""


def connect_or_explain(address: str, timeout_s: float) -> None:
    """Connect to the cluster at ``address`` within ``timeout_s`` seconds, or raise one line saying why.

    ``ray.init`` to an address retries for minutes when the cluster does not answer as it expects, and
    a refused authentication token shows only in Ray's log.  So a child process tries first, under a
    deadline, and its log is read: a refused token is named as such (``RAY_AUTH_MODE`` and the token).
    """
    check_reachable(address, min(timeout_s, 5.0))
    try:
        probe = subprocess.run([sys.executable, "-c", _CONNECT_PROBE, address], capture_output=True, text=True,
                               timeout=timeout_s, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    except subprocess.TimeoutExpired:
        raise ConfigError(f"address: the Ray cluster at {address} did not accept a connection within {timeout_s:g} s "
                          f"(--connect-timeout); check that it is a Ray cluster and that its nodes are up") from None
    if probe.returncode == 0:
        return
    log = probe.stdout + probe.stderr
    if "Unauthenticated" in log or "InvalidAuthToken" in log:
        raise ConfigError(f"address: the Ray cluster at {address} refused this machine's authentication token; set "
                          f"RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or the token file 'ray "
                          f"get-auth-token' writes) as in the README's 'Two machines'") from None
    last = next((line for line in reversed(log.strip().splitlines()) if line.strip()), "no output")
    raise ConfigError(f"address: cannot connect to a Ray cluster at {address} ({last.strip()[:300]})") from None
