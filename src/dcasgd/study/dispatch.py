"""Where a study's runs execute: local processes (``--jobs N``) or tasks on a Ray cluster (``--address ADDR``).

Both run each configuration through :func:`dcasgd.api.run` with ``threads``
torch threads, so the same configuration gives the same ``metrics.jsonl``
bytes either way, and the same ``summary.json`` apart from the wall-clock
fields (``wall_time_s``, ``eval_wall_s``) and ``command``.

On a Ray cluster each run is one task of ``num_cpus = threads``.  The task
trains into a temporary directory on whichever node runs it and sends the run's
files back; the driver writes them into the run's own directory, with the
summary recording that directory and the compare command line, as a local run
records them.  Every node needs dcasgd and the data set (``--data-root``).
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Hashable

from ..config import TrainConfig
from ..engine import signals
from ..engine.signals import signal_name
from ..io.atomic import atomic_write_text
from ..io.rundir import clear_run_files

Done = Callable[[Hashable, dict[str, Any]], None]


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a study: queued runs were cancelled and running ones ended."""

    def __init__(self, signum: int | None) -> None:
        self.signum = signum
        super().__init__(signal_name(signum))


RUNS_PER_PROCESS = 4
"""Runs one process makes before a fresh one takes its place (a spawn costs ~2 s of imports).  Without it a
study's two processes grew by about 50 MB a run, to 8 GB each after 110 runs of fmnist-mlp."""


class _Slot:
    """One of ``n_jobs`` places a run goes to: a one-process pool, replaced after :data:`RUNS_PER_PROCESS` runs.

    (``ProcessPoolExecutor(max_tasks_per_child=...)`` does this for a whole pool, but on Python 3.11 the pool
    hung for good once a process had been replaced: no run started, none finished.)
    """

    def __init__(self, initializer: Callable[[], None] | None) -> None:
        self.initializer, self.pool, self.runs = initializer, None, 0

    def submit(self, cfg: TrainConfig, threads: int) -> Future:
        if self.pool is None:
            self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=self.initializer)
        return self.pool.submit(run_one, cfg, threads)

    def finished(self) -> None:
        self.runs += 1
        if self.runs % RUNS_PER_PROCESS == 0:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None


def run_local(configs: dict[Hashable, TrainConfig], n_jobs: int, threads: int, done: Done) -> None:
    """Run every configuration in ``n_jobs`` processes; ``done(key, summary)`` as each finishes.

    The processes are spawned (fresh interpreters with this one's ``sys.path``: none inherits its threads,
    such as an OpenMP pool, which a fork would leave locked), each makes :data:`RUNS_PER_PROCESS` runs and
    then gives way to a fresh one, and under the CLI they handle SIGINT/SIGTERM as it does.  On Ctrl-C or
    SIGTERM (:data:`~dcasgd.engine.signals.STOP`) no further run starts, the running ones are stopped
    (:func:`stop_pools`), and :class:`Interrupted` raised.
    """
    queue = list(configs.items())
    slots = [_Slot(signals.adopt if signals.STOP.active else None) for _ in range(max(1, min(n_jobs, len(queue))))]
    idle, running = list(slots), dict[Future, tuple[Hashable, _Slot]]()
    try:
        with signals.watching():
            while queue or running:
                while queue and idle:
                    slot, (key, cfg) = idle.pop(), queue.pop(0)
                    running[slot.submit(cfg, threads)] = (key, slot)
                finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in finished:
                    key, slot = running.pop(future)
                    slot.finished()
                    idle.append(slot)
                    done(key, future.result())
                if signals.STOP.requested:
                    raise Interrupted(signals.STOP.signum)
    except BaseException:
        stop_pools([slot.pool for slot in slots if slot.pool is not None])
        raise
    for slot in slots:
        slot.close()


def stop_pools(pools: list[ProcessPoolExecutor], grace_s: float = 60.0) -> None:
    """End the running runs: SIGTERM first (each stops cleanly and writes an ``interrupted`` summary, which
    the next compare runs again), SIGKILL after ``grace_s`` seconds."""
    processes = [p for pool in pools for p in getattr(pool, "_processes", {}).values()]   # (no public handle)
    for pool in pools:
        pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()


def run_one(cfg: TrainConfig, threads: int) -> dict[str, Any]:
    """One training run in this process with ``threads`` torch threads; returns its summary."""
    import torch
    from ..api import run
    torch.set_num_threads(threads)
    return run(cfg).summary


def run_on_ray(configs: dict[Hashable, TrainConfig], address: str, threads: int, done: Done,
               connect_timeout: float = 30.0) -> None:
    """Run every configuration as a Ray task (``num_cpus = threads``) on the cluster at ``address``."""
    import ray
    from ..backends.ray.cluster import connect_or_explain
    from ..engine.context import command_line
    started = not ray.is_initialized()
    if started:
        connect_or_explain(address, connect_timeout)
        ray.init(address=address, log_to_driver=False)
        signals.install()                          # Ray's start-up replaced the SIGTERM handler
    try:
        task = ray.remote(num_cpus=threads, max_retries=0)(_remote_run)
        command = command_line()
        pending = {task.remote(replace(cfg, out="run"), threads): key for key, cfg in configs.items()}
        with signals.watching():
            _wait_on_ray(pending, configs, command, done)
    finally:
        if started:
            ray.shutdown()


def _wait_on_ray(pending: dict[Any, Hashable], configs: dict[Hashable, TrainConfig], command: str,
                 done: Done) -> None:
    """Write each finished task's files and call ``done``; on a signal cancel the rest (none writes here)."""
    import ray
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
        for ref in ready:
            key = pending.pop(ref)
            done(key, write_run_files(Path(configs[key].out), ray.get(ref), command))
        if signals.STOP.requested:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise Interrupted(signals.STOP.signum)


def _remote_run(cfg: TrainConfig, threads: int) -> dict[str, bytes]:
    """In a Ray task: train into a temporary directory and return its files (relative path -> bytes)."""
    with tempfile.TemporaryDirectory(prefix="dcasgd-task-") as tmp:
        out = Path(tmp) / cfg.out
        run_one(replace(cfg, out=str(out), tensorboard=None), threads)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def write_run_files(out: Path, files: dict[str, bytes], command: str) -> dict[str, Any]:
    """Write a remote run's files into ``out`` (its own directory); the summary records ``out`` and ``command``
    as a local run would.  Returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    clear_run_files(out)
    for name, data in files.items():
        if name == "summary.json":
            continue
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    summary = json.loads(files["summary.json"])
    summary["config"]["out"], summary["command"] = str(out), command
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def copy_run(source: Path, out: Path) -> dict[str, Any]:
    """Copy a finished run's files into ``out`` (a run whose configuration is the same but for ``out``);
    the copy's summary records ``out``.  Returns the summary."""
    out.mkdir(parents=True, exist_ok=True)
    clear_run_files(out)
    for path in sorted(source.rglob("*")):
        if path.is_file() and path.name != "summary.json":
            target = out / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    summary = json.loads((source / "summary.json").read_text(encoding="utf-8"))
    summary["config"]["out"] = str(out)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
