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
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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


def run_local(configs: dict[Hashable, TrainConfig], n_jobs: int, threads: int, done: Done) -> None:
    """Run every configuration in a pool of ``n_jobs`` processes; ``done(key, summary)`` as each finishes.

    The processes are spawned (fresh interpreters with this one's ``sys.path``: none inherits its threads,
    such as an OpenMP pool, which a fork would leave locked) and, under the CLI, handle SIGINT/SIGTERM as it
    does.  On Ctrl-C or SIGTERM (:data:`~dcasgd.engine.signals.STOP`) the queued runs are cancelled at once, the running ones
    stopped (:func:`stop_pool`), and :class:`Interrupted` raised.
    """
    pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=signals.adopt if signals.STOP.active else None)
    try:
        pending = {pool.submit(run_one, cfg, threads): key for key, cfg in configs.items()}
        with signals.watching():
            _wait_local(pending, done)
    except BaseException:
        stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _wait_local(pending: dict[Any, Hashable], done: Done) -> None:
    """``done`` for each run as it finishes; :class:`Interrupted` when a signal asks to stop."""
    while pending:
        finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
        for future in finished:
            done(pending.pop(future), future.result())
        if signals.STOP.requested:
            raise Interrupted(signals.STOP.signum)


def stop_pool(pool: ProcessPoolExecutor, grace_s: float = 60.0) -> None:
    """Cancel every queued run now and end the running ones: SIGTERM first (each stops cleanly and writes
    an ``interrupted`` summary, which the next compare runs again), SIGKILL after ``grace_s`` seconds."""
    processes = list(getattr(pool, "_processes", {}).values())     # (no public handle on the children)
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
