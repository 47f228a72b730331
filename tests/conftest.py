"""Suite-wide settings: one torch thread.

The models in the tests are tiny; on a busy 2-core machine extra intra-op
threads only spin.  Subprocesses (CLI tests) inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
