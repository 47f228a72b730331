"""Suite-wide settings: one torch thread, the shared local-Ray fixture and the multi-node cluster helper.

The models in the tests are tiny; on a busy 2-core machine extra intra-op
threads only spin.  Subprocesses (CLI tests) inherit OMP_NUM_THREADS.
"""

import contextlib
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray (loopback only, no dashboard), started once per test module."""
    import ray

    from dcasgd.backends import ray as rb
    if ray.is_initialized():
        ray.shutdown()
    rb.init_local_ray(num_cpus=2, object_store_memory=300 * 1024**2)
    yield
    ray.shutdown()


@contextlib.contextmanager
def ray_cluster(store_bytes: int, worker_nodes: list[dict]):
    """A local multi-node Ray cluster (loopback only) with the driver connected; yields (cluster, nodes).

    The head carries the ``dcasgd_server`` resource (1 CPU): server shards and
    the coordinator go there.  ``worker_nodes`` gives each further node's
    ``num_cpus`` and ``dcasgd_worker`` count (key ``workers``), as
    ``ray start --resources`` would on separate machines (docs/ray.md).
    """
    import ray
    from ray.cluster_utils import Cluster

    from dcasgd.backends import ray as rb
    if ray.is_initialized():
        ray.shutdown()
    rb.loopback_only()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {rb.SERVER_RESOURCE: 1}, "object_store_memory": store_bytes,
        "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=n["num_cpus"], resources={rb.WORKER_RESOURCE: n["workers"]},
                              object_store_memory=store_bytes) for n in worker_nodes]
    ray.init(address=cluster.address)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def wait_for(predicate, what: str, process, polls: int = 3600, interval_s: float = 0.05) -> None:
    """Wait for an event (a file or a line appearing) while ``process`` runs, polling ``predicate``.

    Fails only if the process ends first or the event never comes within ``polls`` polls (a bound on
    the count, not a reading of the clock).
    """
    import time
    for _ in range(polls):
        if predicate():
            return
        assert process.poll() is None, f"it ended before {what}: {process.stderr.read()[-2000:]}"
        time.sleep(interval_s)
    raise AssertionError(f"no {what} after {polls} polls")
