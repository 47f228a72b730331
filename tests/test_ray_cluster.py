"""The Ray backend on a two-node Ray cluster on this machine (loopback only).

The head node carries the ``dcasgd_server`` resource and the second node the
``dcasgd_worker`` resource, as ``ray start --resources`` would on two
machines (docs/ray.md); the backend puts the server on the first and the
workers on the second.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from conftest import ray_cluster  # noqa: E402
from dcasgd.backends import ray as rb  # noqa: E402
from dcasgd.config import TrainConfig  # noqa: E402

pytestmark = pytest.mark.ray

STORE = 150 * 1024**2


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster(STORE, [{"num_cpus": 2, "workers": 2}]) as (c, (worker_node,)):
        yield c, worker_node


def test_server_and_workers_run_on_different_nodes(cluster, tmp_path):
    c, worker_node = cluster
    assert {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]} == {"127.0.0.1"}
    cfg = TrainConfig(backend="ray", dataset="synthetic", model="mlp", rule="dc-asgd-a", consistency="async",
                      workers=2, servers=2, epochs=1.5, batch_size=32, lr=0.1, progress=False,
                      out=str(tmp_path / "run"), address=c.address)
    summary = rb.run_ray(cfg)
    head_id, worker_id = c.head_node.node_id, worker_node.node_id
    assert summary["placement"]["servers"] == [head_id, head_id]
    assert summary["placement"]["workers"] == [worker_id, worker_id]
    assert summary["updates"] == 96
    assert summary["final_test_error"] < 30.0
