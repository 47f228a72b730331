"""Suite-wide settings: one torch thread, and the shared local-Ray fixture.

The models in the tests are tiny; on a busy 2-core machine extra intra-op
threads only spin.  Subprocesses (CLI tests) inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def local_ray():
    """A real local Ray (loopback only, no dashboard), started once per test module."""
    import ray

    from dcasgd import ray_backend as rb
    if ray.is_initialized():
        ray.shutdown()
    rb.init_local_ray(num_cpus=2, object_store_memory=300 * 1024**2)
    yield
    ray.shutdown()
