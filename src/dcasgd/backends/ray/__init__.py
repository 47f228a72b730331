"""The Ray backend: sharded server actors, worker actors, a coordinator, and the driver.

Modules: ``cluster`` (connecting to Ray), ``shard`` (server shards), ``coordinator``
(plain asyncio), ``transport`` (pull and push over every shard), ``worker``
(worker actors), ``driver`` (:class:`RayRun`, :func:`run_ray`).

Processes::

    driver (run_ray, the CLI process)   evaluates, writes metrics/trace/checkpoints, watches workers
    LeadServer actor                    ServerShard 0 and the Coordinator (clocks, consistency waits,
                                        grants, stop and checkpoint pauses) in one asyncio actor
    ServerShard actors k = 1..S-1       a ServerCore over slice [start_k, end_k) of the flat vector
    RayWorker actors m = 0..M-1         model + its batches (compute/batches.py: a built-in data set read from its
                                        node's disk, a lazy Dataset item by item, or the user's tensors from the
                                        object store), loops pull -> gradient -> push

One gradient of worker m::

    grant = coordinator.next(m, report of the last gradient, batch size)   # may wait (ssp, sync, pause)
    (w_k, v_k) = shard_k.pull(m)             for every k, in parallel      # shard k records w_bak(m)
    g = grad f(w; batch)                                                   # worker.compute_gradient
    shard_k.push(m, seq, v_k, g[start_k:end_k], n)  for every k            # ServerCore.push, rule applied

Transport: weights and gradients travel as flat float32 numpy arrays through
Ray's object store, one object per shard and direction (no per-tensor calls);
on one node a reader gets a zero-copy view of shared memory.  BatchNorm
float buffers ride with the push to shard 0, which keeps the latest.

Exactly-once pushes: every push carries (worker, seq, base_version).  A shard
remembers the last seq it applied per worker and answers a seq it has already
applied with the version that push produced, so a retried push is applied
once, never twice.

Consistency (``consistency.py``) lives in the coordinator, an asyncio object: a
worker blocked by ``ssp:S`` or by the ``sync`` barrier awaits an
``asyncio.Condition`` inside ``Coordinator.next`` (no polling).  ``sync``
rounds are averaged on each shard by a :class:`~dcasgd.consistency.SyncBarrier`
and applied as one update.  ``msync:m`` and ``rennala:S`` average a
:class:`~dcasgd.core.consistency.PointBatch` of gradients taken at one version on
shard 0; pushes the policy drops (``ringmaster``'s delay threshold, a step that
is over) are refused as discarded or cancelled when they arrive, and the worker
pulls the current weights (these four modes need one shard; see docs/ray.md).
The coordinator also hands out gradients
("grants") so that exactly ``ceil(epochs * N)`` samples (or
``stop_after_updates`` updates) are applied, and pauses grants every
``checkpoint_every`` updates until the driver has written a consistent
checkpoint of every shard.

Records: shard 0 logs every applied push in version order (worker, seq,
base_version, version, staleness, times, loss); the driver drains the log into
``metrics.jsonl`` (same ``update``/``eval``/``staleness``/``event`` lines as
the simulator, ``time_s`` = wall seconds since the start) and ``trace.jsonl``
(which :func:`dcasgd.backends.sim.load_trace` replays).

Compensation probe (``--probe-every K``): the coordinator marks every K-th
async grant; that worker reads the shards' current weights (and the
MeanSquare row of dc-asgd-a) right before it pushes, then scores the delayed,
DC and Taylor estimates with :func:`dcasgd.engine.probe.compensation_metrics` and
sends the record with its next report; the driver writes ``probe`` lines and
``summary["probe"]`` through a :class:`~dcasgd.engine.probe.CompensationProbe`.

No arithmetic on weights here: updates happen in ServerCore and its rule,
sync averaging in SyncBarrier, batch means in PointBatch.
"""

from .cluster import (SERVER_RESOURCE, WORKER_RESOURCE, RayBackendError, ServerLost, check_reachable,
                      init_local_ray, local_ray_options, loopback_only)
from .coordinator import Coordinator
from .driver import Instrumentation, RayRun, run_ray
from .shard import LeadServer, ServerShard
from .transport import pull_all, push_all
from .worker import RayWorker

__all__ = ["run_ray", "RayRun", "Instrumentation", "ServerShard", "LeadServer", "Coordinator", "RayWorker", "RayBackendError",
           "ServerLost", "init_local_ray", "local_ray_options", "loopback_only", "check_reachable", "pull_all",
           "push_all", "SERVER_RESOURCE", "WORKER_RESOURCE"]
