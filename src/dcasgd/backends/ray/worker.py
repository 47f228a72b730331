"""A worker actor: a model, its training batches (read on its own machine, or zero-copy from the object store)
and the gradient loop."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
import torch

from ...compute.batches import BatchReader, DatasetSource, LoaderPool, to_device
from ...compute.flat import FlatModel, views_of
from ...compute.models import seeded_model
from ...compute.task import WorkerTask
from ...compute.worker import BatchStream, compute_step, gradient_key
from ...config import ConfigError, TrainConfig
from ...core.consistency import JobDropped
from ...core.kernels import all_finite
from ...core.rules import make_rule
from ...core.server import NonFiniteUpdate, PushRejected
from ...engine.probe import compensation_metrics, effective_lam
from ...engine.speeds import SlowdownPacer, emulated_slowdowns
from ...engine.timing import CycleClock
from . import shm
from .shard import _readonly_tensor
from .transport import PUSH_TIMEOUT_S, pull_all, push_all


def _flat_to_device(flat: FlatModel, device: torch.device) -> FlatModel:
    """Move a FlatModel's flat buffers to ``device`` and re-point parameters, grads and buffers at them."""
    # new buffers even for the same device, so the re-pointing below is exercised on CPU too
    flat.rebind(torch.empty_like(flat.params, device=device), torch.empty_like(flat.grads, device=device))
    owners = flat._buffer_owners
    old = [getattr(mod, name) for mod, name in owners]
    flat.buffers = flat.buffers.to(device, copy=True)
    for (mod, name), view in zip(owners, views_of(flat.buffers, old)):
        setattr(mod, name, view)
    flat.module.to(device)                                       # integer buffers (num_batches_tracked)
    return flat


class RayWorker:
    """Worker m: a model, its training batches and the gradient loop.

    ``task`` (:class:`~dcasgd.compute.task.WorkerTask`): the run's model factory
    (called here, seeded by the run's seed; the weights then come from the
    server), its step and loss, and where the batches come from: a built-in data
    set read from this machine's disk, a lazy Dataset (the object, or the user's
    factory called here) read item by item, or the user's tensors ``train_x``,
    ``train_y`` (zero-copy from the object store; None otherwise).  With
    ``loader_workers`` a lazy Dataset's next batches are built ahead in that many
    processes (:class:`~dcasgd.compute.batches.BatchReader`).

    Emulated speeds (``--speeds``, ``--hetero-sigma``, ``--stragglers``): with
    ``k = speed[m] / min(speed)`` from :func:`dcasgd.engine.speeds.worker_speeds`,
    a :class:`~dcasgd.engine.speeds.SlowdownPacer` sleeps before each push so
    that the worker's whole cycle (pull, gradient, push) is k times the
    unslowed workers' running mean cycle, which comes with each grant (waits
    for the coordinator are not stretched).  Each push carries its cycle in
    parts, measured on this process's clock (:class:`~dcasgd.engine.timing.CycleClock`),
    for ``trace.jsonl``.

    ``hooks`` (tests only): ``compute_delay_s`` sleeps after each gradient (a
    slow worker), ``push_pause_s`` sleeps after the push is sent and before
    its answer is read (a window in which to kill the process mid-push;
    ``push_pause_mark`` names a file that says "pid seq" during that sleep),
    ``hold_while`` names a file: while it exists the worker starts no gradient.
    """

    def __init__(self, index: int, cfg: TrainConfig, train_x: np.ndarray | None, train_y: np.ndarray | None,
                 task: WorkerTask, shards: list[Any],
                 ranges: list[tuple[int, int]], coordinator: Any, hooks: dict[str, Any] | None = None) -> None:
        torch.set_num_threads(1)
        self.index, self.cfg = index, cfg
        self.hooks = dict(hooks or {})
        self.slowdown = emulated_slowdowns(cfg)[index]
        self.shards, self.ranges, self.coord = shards, ranges, coordinator
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device 'cuda': worker {index} sees no CUDA device (torch.cuda.is_available() "
                              f"is False on {os.uname().nodename})")
        self.device = torch.device(cfg.device)
        tensors = [None if a is None else _readonly_tensor(a) for a in (train_x, train_y)]
        self.source = task.source(*tensors)
        self.loss_fn, self.step = task.loss_fn, task.step_fn
        self.flat = FlatModel(seeded_model(task.model_fn, cfg.seed))
        if self.device.type != "cpu":
            _flat_to_device(self.flat, self.device)
        # pulled weights land in the model's own flat parameters on CPU (then loading them is free)
        self.weights = self.flat.params if self.device.type == "cpu" else torch.zeros(self.flat.num_params)
        self.buffers = torch.zeros(self.flat.buffers.numel())
        self.stream = BatchStream(len(self.source), index, cfg.workers, cfg.batch_size, cfg.seed)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def run(self) -> dict[str, Any]:
        """Pull, compute, push until the coordinator says stop; returns this worker's tallies."""
        workers = self.cfg.loader_workers if isinstance(self.source, DatasetSource) else 0
        pool = LoaderPool(self.source, workers) if workers else None
        self.reader = BatchReader(self.stream, self.source, self.cfg.seed, pool, depth=2 * workers)
        try:
            return self._loop()
        finally:
            if pool is not None:
                pool.close()

    def _loop(self) -> dict[str, Any]:
        """The gradient loop of :meth:`run`.

        With one server shard each gradient is one call (:meth:`LeadServer.step`: push,
        report, next grant, pull).  With S shards, and for a gradient the compensation
        probe measures, it is a grant from the coordinator, a pull and a push over every
        shard (:mod:`.transport`).
        """
        m = self.index
        seq = max(ray.get([s.join.remote(m) for s in self.shards]))    # continue after the last applied seq
        generation = ray.get(self.coord.worker_join.remote(m, os.getpid()))["generation"]
        one_call = len(self.shards) == 1
        self.shared = one_call and self.device.type == "cpu" and self._attach_shared_memory()
        report, gradients = None, 0
        spent = {"compute_s": 0.0, "exchange_s": 0.0, "slowdown_s": 0.0, "loop_s": 0.0}   # where the time goes
        loop_start = time.perf_counter()
        pacer = SlowdownPacer(self.slowdown) if self.slowdown > 1 else None
        drawn = self.reader.draw()
        cycle = CycleClock()
        stepped = self._step(generation, None, drawn.size, seq)[1:] if one_call else None
        while True:
            while self.hooks.get("hold_while") and Path(self.hooks["hold_while"]).exists():
                time.sleep(0.01)                                       # (a test holds this worker)
            grant, pulled = stepped if stepped is not None else (
                ray.get(self.coord.next.remote(m, generation, report, drawn.size)), None)
            if not grant["go"]:
                spent["loop_s"] = time.perf_counter() - loop_start
                return {"worker": m, "gradients": gradients, "reason": grant["reason"], **spent}
            t_pull, granted = time.time(), time.perf_counter()
            base = self._receive(pulled) if pulled is not None else self._pull()
            # the pull: this worker's part, and with one shard the server's (its copy, reported with the grant)
            pull_s = time.perf_counter() - granted + (grant.get("pull_s", 0.0) if pulled is not None else 0.0)
            cycle.granted(grant.get("wait_s", 0.0), grant.get("held_s", 0.0), pull_s)
            batch = self.reader.build(drawn)
            key = gradient_key(self.cfg.seed, m, grant["clock"])
            started = time.perf_counter()
            batch = to_device(batch, self.device)
            # with shared memory the gradient stays where backward wrote it: the server reads it there
            result = compute_step(self.flat, self.weights, self.buffers, batch, key, self.step, copy=not self.shared,
                                  origin=(m, grant["clock"]))
            grad = result.grad.cpu()
            if self.hooks.get("compute_delay_s"):
                time.sleep(self.hooks["compute_delay_s"])
            duration = time.perf_counter() - started
            spent["compute_s"] += duration
            cycle.computed(duration)
            if pacer is not None:                                     # an emulated slow worker
                asleep = time.perf_counter()
                time.sleep(pacer.pause(cycle.busy_s(), grant.get("ref_cycle_s")))
                slept = time.perf_counter() - asleep
                cycle.slowed(slept)
                spent["slowdown_s"] += slept
            seq += 1
            probed = bool(grant.get("probe"))
            now = self._pull_now() if probed else None               # the weights this push will meet
            parts = cycle.sent()
            if pacer is not None:
                pacer.record(parts["cycle_s"], grant.get("ref_cycle_s"))
            meta = {"t_pull": t_pull, "t_push": time.time(), "duration_s": max(duration, 1e-9),
                    "loss": result.loss, "clock": grant["clock"], "clock_gap": grant["clock_gap"], **parts,
                    **({"probe": True} if probed else {})}
            batch_n, drawn = drawn.size, self.reader.draw()
            exchange_start = time.perf_counter()
            if one_call and not probed:
                push = self._push_message(seq, base, grad, result.buffers.cpu(), batch_n, meta, grant["members"])
                report, *stepped = self._step(generation, push, drawn.size, seq)
            else:
                report, stepped = self._push(seq, base, grad, result.buffers.cpu(), result.loss, batch_n, meta,
                                             grant["members"] or None), None
                if probed and report["applied"]:
                    report["probe"] = self._probe(now, base, grad, *batch, key, report["version"])
            spent["exchange_s"] += time.perf_counter() - exchange_start
            gradients += bool(report.get("applied"))

    def _pull(self) -> list[int]:
        """Every shard's slice of the weights into this worker's flat buffer; returns their versions."""
        base, buffers = pull_all(self.shards, self.ranges, self.index, self.weights.numpy())
        if buffers is not None and buffers.size == self.buffers.numel():
            self.buffers.copy_(torch.from_numpy(buffers))
        return base

    def _attach_shared_memory(self) -> bool:
        """Ask the lead shard for shared files (:mod:`.shm`); on its node, move the model's parameters and
        gradient into them.  Returns whether it did."""
        files = ray.get(self.shards[0].attach.remote(self.index, self.node_id()))
        if files is None:
            return False
        n = self.flat.num_params
        self.flat.rebind(shm.mapped(files["weights"], n), shm.mapped(files["grad"], n))
        self.weights = self.flat.params
        self.shared_buffers = shm.mapped(files["buffers"], self.buffers.numel())
        if getattr(self, "channel", None) is not None:
            self.channel.close()
        self.channel = shm.Channel(files["socket"], PUSH_TIMEOUT_S)
        return True

    def _receive(self, pulled: tuple[np.ndarray | None, int, np.ndarray | None]) -> list[int]:
        """A one-shard pull that came with a step's reply (weights None: already in the shared file)."""
        weights, version, buffers = pulled
        if weights is not None:
            np.copyto(self.weights.numpy(), weights)
        elif self.buffers.numel():
            self.buffers.copy_(self.shared_buffers)            # the server's BatchNorm statistics
        if buffers is not None and buffers.size == self.buffers.numel():
            self.buffers.copy_(torch.from_numpy(np.asarray(buffers)))
        return [int(version)]

    def _push_message(self, seq: int, base: list[int], grad: torch.Tensor, buffers: torch.Tensor, n: int,
                      meta: dict[str, Any], members: list[int] | None) -> dict[str, Any]:
        if self.shared:                                  # the server reads both from the shared files
            if buffers.numel():
                self.shared_buffers.copy_(buffers)
            g, sent_buffers = None, ("shared" if buffers.numel() else None)
        else:
            g, sent_buffers = grad.numpy(), (buffers.numpy() if buffers.numel() else None)
        return {"seq": seq, "base_version": base[0], "grad": g, "num_samples": n, "meta": meta,
                "buffers": sent_buffers, "members": members or None}

    def _step(self, generation: int, push: dict[str, Any] | None, num_samples: int,
              seq: int) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """One :meth:`LeadServer.step` call (over the local socket on the lead's node, else a Ray call);
        returns (the push's report, the next grant, the pull)."""
        args = [self.index, generation, push, num_samples]
        if self.shared:
            self.channel.send({"step": args})
        else:                                            # the gradient as an argument of its own (see step)
            grad = None if push is None else push["grad"]
            message = None if push is None else {**push, "grad": None}
            ref = self.shards[0].step.remote(self.index, generation, message, num_samples, grad)
        if push is not None and self.hooks.get("push_pause_s"):
            self._push_pause(seq)()
        reply = self.channel.receive() if self.shared else ray.get(ref, timeout=PUSH_TIMEOUT_S)
        if "error" in reply:
            raise RuntimeError(f"the lead server failed a step: {reply['error']}")
        return reply["report"], reply["grant"], reply["pulled"]

    def _push(self, seq: int, base: list[int], grad: torch.Tensor, buffers: torch.Tensor, loss: float,
              n: int, meta: dict[str, Any], members: list[int] | None) -> dict[str, Any]:
        g = grad.numpy()
        bad = [] if all_finite(grad) else [
            k for k, (start, end) in enumerate(self.ranges) if not np.isfinite(g[start:end]).all()]
        if bad:
            # the server refuses non-finite values: send only the slices that have them, so no shard
            # applies part of a gradient another shard refused
            for k in bad:
                start, end = self.ranges[k]
                try:
                    ray.get(self.shards[k].push.remote(self.index, seq, base[k], g[start:end], n))
                except PushRejected:
                    pass
            return {"applied": False, "nonfinite": True, "loss": loss}
        try:
            versions = push_all(self.shards, self.ranges, self.index, seq, base, g, n, meta,
                                buffers.numpy() if buffers.numel() else None, members,
                                after_send=self._push_pause(seq) if self.hooks.get("push_pause_s") else None)
        except JobDropped as exc:            # discarded or cancelled by the consistency policy
            return {"applied": False, exc.kind: True, "loss": loss}
        except NonFiniteUpdate as exc:       # the update would overflow: the model diverged
            return {"applied": False, "nonfinite": True, "error": str(exc), "loss": loss}
        except PushRejected as exc:
            return {"applied": False, "error": str(exc), "loss": loss}
        return {"applied": True, "loss": loss, "version": versions[0]}

    def _push_pause(self, seq: int) -> Callable[[], None]:
        """Test hook: sleep ``push_pause_s`` with the push sent and unanswered; while asleep the
        file ``push_pause_mark`` (if given) holds "pid seq", so a test can kill the process mid-push."""
        def pause() -> None:
            mark = self.hooks.get("push_pause_mark")
            if mark:
                Path(mark).write_text(f"{os.getpid()} {seq}", encoding="ascii")
            time.sleep(float(self.hooks["push_pause_s"]))
            if mark:
                Path(mark).unlink(missing_ok=True)
        return pause

    # ------------------------------------------------------------ compensation probe (--probe-every)

    def _pull_now(self) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        """The server's current weights (no backup recorded), version and MeanSquare state, just before a push."""
        results = ray.get([s.probe_weights.remote(self.index) for s in self.shards])
        weights = torch.from_numpy(np.concatenate([r[0] for r in results]))
        rows = [r[2] for r in results]
        ms = None if rows[0] is None else torch.from_numpy(np.concatenate(rows))
        return weights, int(results[0][1]), ms

    def _probe(self, now: tuple[torch.Tensor, int, torch.Tensor | None], base: list[int], grad: torch.Tensor,
               x: torch.Tensor, y: torch.Tensor, key: int, version: int) -> dict[str, Any]:
        """One :mod:`dcasgd.engine.probe` record for the gradient just pushed (measured after the push).

        ``w_now`` is what the shards held right before the push was sent; other
        workers' pushes may land in between, so ``staleness`` here is
        ``version of w_now - base_version`` and ``push_staleness`` the staleness the
        push was applied with.  ``lam_eff`` (dc-asgd-a) comes from the MeanSquare row
        read together with ``w_now``, updated with this gradient on a copy, as in
        the simulator (:func:`dcasgd.engine.probe.effective_lam`).
        """
        weights_now, version_now, ms = now
        rule = make_rule(self.cfg.rule, **self.cfg.rule_params())
        state = {"mean_square": ms[None]} if ms is not None else {}
        lam_eff, lam, form = effective_lam(rule, state, grad, 0)
        dev = self.device
        if isinstance(lam_eff, torch.Tensor):
            lam_eff = lam_eff.to(dev)
        metrics = compensation_metrics(self.flat, self.weights.clone().to(dev), weights_now.to(dev),
                                       self.buffers.to(dev), x, y, key, grad.clone().to(dev), lam_eff, self.loss_fn,
                                       lam=lam)
        return {"version": version, "worker": self.index, "staleness": version_now - base[0],
                "push_staleness": version - 1 - base[0], "version_now": version_now, **metrics,
                "lam": lam, "lam_form": form}
