"""Moving weights and gradients: every shard in parallel, one object per shard and direction.

A push that times out or finds its shard briefly unavailable is sent again
with the same (worker, seq); the shard applies it once.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import ray
import ray.exceptions

PUSH_TIMEOUT_S = 120.0                # a push unanswered this long is retried (same seq: applied once)
PUSH_RETRIES = 3


def pull_all(shards: Sequence[Any], ranges: Sequence[tuple[int, int]], worker: int,
             out: np.ndarray) -> tuple[list[int], np.ndarray | None]:
    """Pull every shard in parallel into ``out`` (float32, length P); returns (versions, buffers)."""
    results = ray.get([s.pull.remote(worker) for s in shards])
    versions = []
    for (start, end), (weights, version, _) in zip(ranges, results):
        np.copyto(out[start:end], weights)
        versions.append(version)
    buffers = results[0][2]
    buffers = None if buffers is None else np.array(buffers)
    del results                                                  # release the object-store views
    return versions, buffers


def push_all(shards: Sequence[Any], ranges: Sequence[tuple[int, int]], worker: int, seq: int,
             base_versions: Sequence[int], grad: np.ndarray, num_samples: int,
             meta: dict[str, Any] | None = None, buffers: np.ndarray | None = None,
             members: Sequence[int] | None = None, after_send: Callable[[], None] | None = None) -> list[int]:
    """Push each shard its slice (one object-store put per shard, in parallel); returns the versions.

    A push that times out or finds its shard briefly unavailable is sent again
    with the same seq and object; the shard applies it once.  ``after_send``
    (tests) runs between sending and reading the answers.
    """
    if len(shards) == 1:
        refs = [ray.put(grad)]
    else:
        refs = [ray.put(grad[start:end]) for start, end in ranges]

    def send(k: int):
        return shards[k].push.remote(worker, seq, base_versions[k], refs[k], num_samples,
                                     meta if k == 0 else None, buffers if k == 0 else None, members)

    pending = {k: send(k) for k in range(len(shards))}
    if after_send is not None:
        after_send()
    versions: list[int] = [0] * len(shards)
    for attempt in range(PUSH_RETRIES + 1):
        retry = {}
        for k, ref in pending.items():
            try:
                versions[k] = ray.get(ref, timeout=PUSH_TIMEOUT_S)
            except (ray.exceptions.GetTimeoutError, ray.exceptions.ActorUnavailableError):
                if attempt == PUSH_RETRIES:
                    raise
                retry[k] = send(k)
        if not retry:
            break
        pending = retry
    return versions
