"""dcasgd on Ray against the Ray docs' parameter server, PyTorch's Hogwild and the compute limit.

    python benchmarks/peers.py [--quick] [--models mlp,cnn] [--workers M] [--repeats R] [--epochs E]
                               [--results-dir DIR]

**The job** (the same for every system): the ``mlp`` or ``cnn`` model of
dcasgd (the same architectures, defined here, initialised from the same seed)
on Fashion-MNIST, M workers (default 2), each gradient a mini-batch of 128
samples, plain asynchronous SGD (lr 0.05, no momentum, constant lr), a fixed
number of epochs E (default 1 for mlp, 0.25 for cnn), so round(E * 60000 /
128) updates per run.  Inputs are x / 255 standardised with the training
split's mean and standard deviation (population), as dcasgd does (one
channel: one mean and one std for every pixel).

Defaults aim at about 6 minutes on a 2-core machine (2 repeats, both models);
most of it is start-up (a dcasgd run or a Ray cluster takes ~10 s to start)
and evaluating the cnn.  ``--quick`` is a smoke run of about a minute: the mlp
only (unless ``--models`` names more), 0.25 epochs (cnn 0.1), 2 evaluations
per run, 1 repeat.

**The systems**, each run starting its own processes (the limit runs in this one):

1. ``dcasgd-asgd`` and ``dcasgd-dc-asgd-a``: ``python -m dcasgd train --backend
   ray`` with ``--rule sgd --consistency async`` and with ``--rule dc-asgd-a``,
   used only through its command line; figures from the run's
   ``summary.json``.
2. ``ray-doc``: the asynchronous parameter server of Ray's documentation
   ("Parameter Server" example), written here from its description: a
   ``ParameterServer`` actor holding the model and ``torch.optim.SGD``
   (``apply_gradients(*grads)`` sums, steps and returns the weights,
   ``get_weights()``), ``DataWorker`` actors with ``compute_gradients(weights)``,
   and the driver keeping one gradient in flight per worker: ``ray.wait`` for
   the first ready one, ``ps.apply_gradients.remote(ref)``, give that worker the
   new weights.  Differences from the page: each worker draws batches from its
   own shard of the data (as everywhere here); torch uses one thread per actor;
   for the cnn the worker also returns its BatchNorm running statistics, which
   the server keeps (the page's model has no BatchNorm, and without this the
   server's statistics would never leave their initial values).  Private local
   Ray as dcasgd starts it: loopback only, no dashboard.
3. ``hogwild``: PyTorch's Hogwild pattern (pytorch/examples ``mnist_hogwild``):
   one model in shared memory (``share_memory()``), M ``torch.multiprocessing``
   processes (spawn) each running ``torch.optim.SGD`` steps on it, lock-free,
   on its own shard of the data, one torch thread each.
4. ``limit``: the compute limit.  One process (one torch thread) computes the
   same gradients (batch gather, forward, backward; no update) alone for a few
   seconds; limit = M x its gradients/s.  With M above the free cores it is
   not reachable; it is the rate M workers would reach if each had a core and
   nothing else cost time.

**Interleaving**: repeat r runs every model, and for each model every system
in the order above, then repeat r + 1; figures are medians over repeats.

**What is reported**, per model:

- updates/s = updates applied / seconds of training clock (median over
  repeats, with the min-max range).  Ratios are medians over repeats of the
  per-repeat ratio (systems of one repeat ran back to back, so they saw
  similar load): ``x Ray-doc = updates/s of the row / updates/s of ray-doc``,
  likewise for Hogwild and the limit (``x limit`` is the fraction of the
  compute limit reached).
- time to target: the training-clock seconds at the first evaluation (4 per
  run, 2 with ``--quick``, evenly spaced in epochs; the last at the end) whose
  test error (percent, full 10000-image test set) is at or below the model's
  target (``TARGET_ERROR``: a little above what sequential SGD reaches in the
  same epochs); median over the repeats that reached it.
- final test error: at the end of the run.

**Training clocks**:

- dcasgd: ``training_s`` of ``summary.json`` (the driver's loop, from the
  first grant to the last update; actor start-up, data loading and the
  epoch-0 evaluation excluded).  Its driver shares the node with the
  workers, so training stands still at each evaluation mark until the
  evaluation is done (every granted gradient applied first), and that pause
  is left out of ``training_s`` and of the curve's ``time_s``
  (``eval_pause_s`` in the summary); each curve point is stamped with the
  training time of its mark.
- ray-doc and hogwild: from the first gradient request to the last update,
  **with the evaluations excluded**: at each evaluation mark the clock stops
  once the weights are fetched (ray-doc) or every worker has finished its
  share (hogwild), the test set is evaluated, and the clock restarts.  In
  ray-doc the gradients in flight (at most one per worker) keep computing
  during the pause; in hogwild the workers wait at each mark, so a mark also
  costs the wait for the slowest worker, as in dcasgd.  Both effects are
  small and bounded by one gradient per worker per mark.

Output: a table per model to stdout and, with machine, date, commit and
command, to ``DIR/peers.md`` (default benchmarks/results/), which
``run_all.py --assemble-only`` puts into benchmarks/README.md.  Exit status 1
with one ``peers: error: ...`` line naming the system when any run fails.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _report  # noqa: E402

DATASET = "fashion-mnist"
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
BATCH_SIZE = 128
LR = 0.05
SEED = 0
EVALS_PER_RUN = 4                                   # evaluation marks, evenly spaced in epochs
QUICK_EVALS_PER_RUN = 2
EVAL_BATCH = 250                                    # the peers' test-set batches (250 runs faster than 2000 here)
EPOCHS = {"mlp": 1.0, "cnn": 0.25}
QUICK_EPOCHS = {"mlp": 0.25, "cnn": 0.1}
# Percent test error, a little above what sequential SGD (one process, same lr and batch) reaches in EPOCHS:
# about 18% for the mlp after 1 epoch, 21% for the cnn after 0.25 epochs, measured here.
TARGET_ERROR = {"mlp": 22.0, "cnn": 25.0}
QUICK_TARGET_ERROR = {"mlp": 30.0, "cnn": 40.0}     # the same idea within QUICK_EPOCHS
REPEATS = 2
LIMIT_SECONDS = 3.0                                 # the compute limit's timed loop
QUICK_LIMIT_SECONDS = 1.0
RUN_TIMEOUT_S = 900                                 # one run of one system
SYSTEMS = (
    ("dcasgd-asgd", "dcasgd ASGD (`--rule sgd --consistency async`)"),
    ("dcasgd-dc-asgd-a", "dcasgd DC-ASGD-a (`--rule dc-asgd-a`)"),
    ("ray-doc", "Ray docs' async parameter server"),
    ("hogwild", "PyTorch Hogwild (`mnist_hogwild`)"),
    ("limit", "compute limit (M x one process)"),
)
SHORT_NAMES = {"dcasgd-asgd": "dcasgd ASGD", "dcasgd-dc-asgd-a": "dcasgd DC-ASGD-a", "ray-doc": "Ray-doc PS",
               "hogwild": "Hogwild", "limit": "limit"}
DCASGD_RULE_FLAGS = {"dcasgd-asgd": ["--rule", "sgd", "--consistency", "async"],
                     "dcasgd-dc-asgd-a": ["--rule", "dc-asgd-a", "--consistency", "async"]}


class SystemFailed(RuntimeError):
    """One run of one system did not finish; the message says why."""


# ====================================================================== data


@dataclass
class Data:
    """Fashion-MNIST, normalised; ``root`` is the directory holding ``fashion-mnist/`` (dcasgd's --data-root)."""

    train_x: torch.Tensor                           # (60000, 1, 28, 28) float32, in shared memory
    train_y: torch.Tensor                           # (60000,) int64, in shared memory
    test_x: torch.Tensor
    test_y: torch.Tensor
    root: Path


def idx_path(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_data_dir() -> Path:
    """The first of dcasgd's places holding the four IDX files: $DCASGD_DATA, ~/.cache/dcasgd, /usr/share/datasets."""
    places = [Path(os.environ["DCASGD_DATA"]) / DATASET] if os.environ.get("DCASGD_DATA") else []
    places += [Path.home() / ".cache" / "dcasgd" / DATASET, Path("/usr/share/datasets") / DATASET]
    for directory in places:
        if all(idx_path(directory, stem) for stem in IDX_FILES):
            return directory
    raise SystemExit(f"peers: error: Fashion-MNIST not found in {', '.join(map(str, places))} "
                     f"(`make data` fetches it)")


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX array: magic (2 zero bytes, type, ndim), ndim big-endian sizes, the bytes."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion_mnist() -> Data:
    directory = find_data_dir()
    train_images, train_labels, test_images, test_labels = (read_idx(idx_path(directory, s)) for s in IDX_FILES)
    train = train_images.astype(np.float32) / 255.0
    mean, std = float(train.mean(dtype=np.float64)), float(train.std(dtype=np.float64))

    def images(array: np.ndarray) -> torch.Tensor:
        scaled = (array.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
        return torch.from_numpy(scaled).unsqueeze(1).clone().share_memory_()

    def labels(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.astype(np.int64)).clone().share_memory_()

    return Data(images(train_images), labels(train_labels), images(test_images), labels(test_labels),
                directory.parent)


def worker_shards(num_samples: int, workers: int) -> list[torch.Tensor]:
    """Disjoint index sets, one per worker, from a seeded permutation."""
    perm = torch.randperm(num_samples, generator=torch.Generator().manual_seed(SEED))
    return [perm[m::workers].clone() for m in range(workers)]


class ShardBatches:
    """Mini-batches of BATCH_SIZE indices from one shard, reshuffled every pass (a short last batch is dropped)."""

    def __init__(self, shard: torch.Tensor, seed: int) -> None:
        self.shard = shard
        self.generator = torch.Generator().manual_seed(seed)
        self.order = shard[:0]
        self.position = 0

    def next(self) -> torch.Tensor:
        if self.position + BATCH_SIZE > len(self.order):
            self.order = self.shard[torch.randperm(len(self.shard), generator=self.generator)]
            self.position = 0
        batch = self.order[self.position:self.position + BATCH_SIZE]
        self.position += BATCH_SIZE
        return batch


# ====================================================================== models (as dcasgd's --model mlp|cnn)


class MLP(nn.Module):
    """Flatten -> Linear(784, 256) -> ReLU -> Linear(256, 256) -> ReLU -> Linear(256, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(),
                                 nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv3x3-BN-ReLU-maxpool blocks (16, 32 channels), dropout 0.25, Linear(1568, 128), Linear(128, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(32 * 7 * 7, 128),
                                  nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MODELS = {"mlp": MLP, "cnn": SmallCNN}


def build_model(name: str) -> nn.Module:
    """A fresh model initialised from SEED (the global RNG is restored afterwards), in train mode."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(SEED)
        return MODELS[name]()
    finally:
        torch.random.set_rng_state(state)


def loss_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x.index_select(0, batch)), y.index_select(0, batch))


@torch.no_grad()
def test_error(model: nn.Module, data: Data) -> float:
    """Percent of the test set misclassified (eval mode; the model is left in train mode)."""
    model.eval()
    wrong = 0
    for start in range(0, len(data.test_y), EVAL_BATCH):
        logits = model(data.test_x[start:start + EVAL_BATCH])
        wrong += int((logits.argmax(1) != data.test_y[start:start + EVAL_BATCH]).sum())
    model.train()
    return 100.0 * wrong / len(data.test_y)


# ====================================================================== one run


@dataclass
class Job:
    model: str
    workers: int
    epochs: float
    num_train: int
    evals: int                                      # evaluations per run (after epoch 0)

    @property
    def total_updates(self) -> int:
        return max(1, round(self.epochs * self.num_train / BATCH_SIZE))

    def eval_marks(self) -> list[int]:
        """Update counts after which the peers evaluate (the last is the end of the run)."""
        total = self.total_updates
        return sorted({max(1, round(k * total / self.evals)) for k in range(1, self.evals + 1)})

    def epoch_of(self, updates: int) -> float:
        return updates * BATCH_SIZE / self.num_train


@dataclass
class RunResult:
    updates_per_s: float
    updates: int
    training_s: float
    curve: list[tuple[float, float, float]]         # (epoch, training-clock seconds, test error %)
    eval_s: float | None = None                     # dcasgd: seconds its driver spent evaluating
    eval_pause_s: float | None = None               # dcasgd: seconds training stood still for them
    time_split_ms: dict[str, float] | None = None   # dcasgd: a worker's ms per gradient, by part

    @property
    def final_error(self) -> float | None:
        return self.curve[-1][2] if self.curve else None

    def time_to(self, target: float) -> float | None:
        return next((seconds for _, seconds, error in self.curve if error <= target), None)


class Stopwatch:
    """A clock that can be paused: ``elapsed`` counts only the time between start() and stop()."""

    def __init__(self) -> None:
        self.elapsed, self.started = 0.0, None

    def start(self) -> None:
        self.started = time.perf_counter()

    def stop(self) -> None:
        self.elapsed += time.perf_counter() - self.started
        self.started = None


# ---------------------------------------------------------------------- dcasgd (command line only)


def dcasgd_command(job: Job, data: Data, rule_flags: list[str], out: str) -> list[str]:
    return [sys.executable, "-m", "dcasgd", "train", "--backend", "ray", "--dataset", DATASET,
            "--data-root", str(data.root), "--model", job.model, "--workers", str(job.workers),
            "--batch-size", str(BATCH_SIZE), "--lr", str(LR), "--momentum", "0", "--lr-schedule", "constant",
            "--epochs", f"{job.epochs:g}", "--eval-every", f"{job.epochs / job.evals:g}",
            "--seed", str(SEED), "--no-progress", "--out", out, *rule_flags]


def result_from_summary(summary: dict) -> RunResult:
    """Figures of a dcasgd summary.json; curve times counted from the epoch-0 evaluation (0 since it is
    left out of the training clock)."""
    missing = [k for k in ("updates_per_s", "training_s", "updates", "final_test_error", "curve") if k not in summary]
    if missing:
        raise SystemFailed(f"summary.json lacks {', '.join(missing)}")
    curve = summary["curve"]
    start = curve[0]["time_s"] if curve and curve[0]["epoch"] == 0 else 0.0
    points = [(p["epoch"], p["time_s"] - start, p["test_error"]) for p in curve if p["epoch"] > 0]
    if not points:
        raise SystemFailed("summary.json has no evaluation after epoch 0 in its curve")
    return RunResult(summary["updates_per_s"], summary["updates"], summary["training_s"], points,
                     summary.get("eval_wall_s"), summary.get("eval_pause_s"), summary.get("time_per_gradient_ms"))


def run_dcasgd(rule_flags: list[str], job: Job, data: Data) -> RunResult:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory(prefix="peers-dcasgd-") as out:
        command = dcasgd_command(job, data, rule_flags, out)
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            raise SystemFailed(f"`{' '.join(command)}` ran past {RUN_TIMEOUT_S} s") from None
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise SystemFailed(f"`{' '.join(command)}` exited with status {proc.returncode}:\n{tail}")
        try:
            summary = json.loads((Path(out) / "summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SystemFailed(f"no readable summary.json: {exc}") from None
    if summary.get("diverged"):
        raise SystemFailed("the run diverged (summary.json: diverged)")
    return result_from_summary(summary)


# ---------------------------------------------------------------------- the Ray docs' parameter server


class ParameterServer:
    """The Ray docs' server: the model and torch.optim.SGD; applies summed gradients, returns the weights."""

    def __init__(self, model_name: str, lr: float) -> None:
        torch.set_num_threads(1)
        self.model = build_model(model_name)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)

    def apply_gradients(self, *results: tuple[list[np.ndarray], dict]) -> dict[str, torch.Tensor]:
        summed = [np.stack(per_param).sum(axis=0) for per_param in zip(*(grads for grads, _ in results))]
        self.optimizer.zero_grad()
        for param, grad in zip(self.model.parameters(), summed):
            param.grad = torch.from_numpy(grad)
        self.optimizer.step()
        buffers = results[-1][1]
        if buffers:                                 # BatchNorm running statistics: keep the latest
            self.model.load_state_dict(buffers, strict=False)
        return self.get_weights()

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.model.state_dict().items()}


class DataWorker:
    """The Ray docs' worker: loads the weights it is given, returns the gradient of its next mini-batch."""

    def __init__(self, model_name: str, train_x: np.ndarray, train_y: np.ndarray, shard: np.ndarray,
                 seed: int) -> None:
        torch.set_num_threads(1)
        self.model = build_model(model_name)
        self.x, self.y = train_x, train_y             # read-only views of the object store
        self.batches = ShardBatches(torch.tensor(shard), seed)

    def ready(self) -> bool:
        return True

    def compute_gradients(self, weights: dict[str, torch.Tensor]) -> tuple[list[np.ndarray], dict]:
        self.model.load_state_dict(weights)
        batch = self.batches.next().numpy()
        x, y = torch.from_numpy(self.x[batch]), torch.from_numpy(self.y[batch])
        self.model.zero_grad()
        F.cross_entropy(self.model(x), y).backward()
        grads = [p.grad.numpy() for p in self.model.parameters()]
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        return grads, buffers


def start_private_ray(object_store_bytes: int) -> None:
    """A local Ray bound to 127.0.0.1 with no dashboard, as dcasgd starts one (dcasgd.backends.ray.loopback_only)."""
    import ray
    from ray._private import ray_constants
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
             _node_ip_address="127.0.0.1", object_store_memory=object_store_bytes)


def run_ray_doc(job: Job, data: Data) -> RunResult:
    import ray
    from ray import cloudpickle
    if __name__ != "__main__":                      # imported: ship this module's classes to the actors by value
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    data_bytes = data.train_x.numel() * 4 + data.train_y.numel() * 8
    start_private_ray(max(256 * 1024**2, 2 * data_bytes + 128 * 1024**2))
    try:
        x_ref, y_ref = ray.put(data.train_x.numpy()), ray.put(data.train_y.numpy())
        ps = ray.remote(ParameterServer).remote(job.model, LR)
        workers = [ray.remote(DataWorker).remote(job.model, x_ref, y_ref, shard.numpy(), SEED + m)
                   for m, shard in enumerate(worker_shards(len(data.train_y), job.workers))]
        ray.get([w.ready.remote() for w in workers] + [ps.get_weights.remote()])
        return ray_doc_training(ps, workers, job, data)
    except ray.exceptions.RayError as exc:
        raise SystemFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        ray.shutdown()


def ray_doc_training(ps, workers: list, job: Job, data: Data) -> RunResult:
    """The docs' asynchronous driver loop, with the evaluations taken off the clock."""
    import ray
    model, marks, clock, curve = build_model(job.model), set(job.eval_marks()), Stopwatch(), []
    total = job.total_updates
    clock.start()
    current_weights = ps.get_weights.remote()
    in_flight = {worker.compute_gradients.remote(current_weights): worker for worker in workers}
    for update in range(1, total + 1):
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        worker = in_flight.pop(ready[0])
        current_weights = ps.apply_gradients.remote(ready[0])
        if update < total:
            in_flight[worker.compute_gradients.remote(current_weights)] = worker
        if update in marks:
            weights = ray.get(current_weights)
            clock.stop()
            model.load_state_dict(weights)
            curve.append((job.epoch_of(update), clock.elapsed, test_error(model, data)))
            if update < total:
                clock.start()
    return RunResult(total / clock.elapsed, total, clock.elapsed, curve)


# ---------------------------------------------------------------------- Hogwild


def hogwild_worker(rank: int, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                   shard: torch.Tensor, steps_per_segment: list[int], go, done) -> None:
    """One Hogwild process: SGD steps on the shared model, ``steps_per_segment[k]`` when told to run segment k."""
    torch.set_num_threads(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    batches = ShardBatches(shard, SEED + rank)
    done.put(rank)                                  # ready
    for steps in steps_per_segment:
        go.get()
        for _ in range(steps):
            optimizer.zero_grad()
            loss_on(model, train_x, train_y, batches.next()).backward()
            optimizer.step()
        done.put(rank)


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def wait_for_workers(done, procs: list, count: int) -> None:
    """Take ``count`` messages from ``done``; fail if a worker process died meanwhile."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while count:
        try:
            done.get(timeout=0.5)
            count -= 1
        except queue.Empty:
            dead = [(m, p.exitcode) for m, p in enumerate(procs) if p.exitcode not in (None, 0)]
            if dead:
                raise SystemFailed(f"Hogwild worker {dead[0][0]} exited with status {dead[0][1]}") from None
            if time.monotonic() > deadline:
                raise SystemFailed(f"Hogwild workers did not finish within {RUN_TIMEOUT_S} s") from None


def run_hogwild(job: Job, data: Data) -> RunResult:
    context = mp.get_context("spawn")
    model = build_model(job.model)
    model.share_memory()
    marks = job.eval_marks()
    segments = [end - start for start, end in zip([0, *marks[:-1]], marks)]
    steps = list(zip(*(split_evenly(updates, job.workers) for updates in segments)))    # [worker][segment]
    go = [context.Queue() for _ in range(job.workers)]
    done = context.Queue()
    procs = [context.Process(target=hogwild_worker, daemon=True,
                             args=(m, model, data.train_x, data.train_y, shard, list(steps[m]), go[m], done))
             for m, shard in enumerate(worker_shards(len(data.train_y), job.workers))]
    try:
        for p in procs:
            p.start()
        wait_for_workers(done, procs, job.workers)
        clock, curve = Stopwatch(), []
        for mark in marks:
            clock.start()
            for q in go:
                q.put(True)
            wait_for_workers(done, procs, job.workers)
            clock.stop()
            curve.append((job.epoch_of(mark), clock.elapsed, test_error(model, data)))
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    total = marks[-1]
    return RunResult(total / clock.elapsed, total, clock.elapsed, curve)


# ---------------------------------------------------------------------- the compute limit


def measure_compute_limit(job: Job, data: Data, seconds: float) -> RunResult:
    """M x the gradients/s of one process (one thread) computing the job's gradients alone."""
    torch.set_num_threads(1)
    model = build_model(job.model)
    batches = ShardBatches(torch.arange(len(data.train_y)), SEED)

    def one_gradient() -> None:
        model.zero_grad()
        loss_on(model, data.train_x, data.train_y, batches.next()).backward()

    for _ in range(3):
        one_gradient()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        one_gradient()
        count += 1
    elapsed = time.perf_counter() - start
    return RunResult(job.workers * count / elapsed, count, elapsed, [])


# ====================================================================== report


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio_median(runs: dict[str, list[RunResult]], system: str, baseline: str) -> float:
    """Median over repeats of (updates/s of system) / (updates/s of baseline) in the same repeat."""
    return statistics.median(a.updates_per_s / b.updates_per_s for a, b in zip(runs[system], runs[baseline]))


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}" if x >= 0.1 else f"{x:.3f}"


def model_table(runs: dict[str, list[RunResult]], target: float) -> str:
    header = ("| system | updates/s (median) | min-max | x Ray-doc PS | x Hogwild | x limit | "
              f"time to {target:g}% test error, s | final test error, % |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for system, label in SYSTEMS:
        results = runs[system]
        rates = [r.updates_per_s for r in results]
        times = [r.time_to(target) for r in results]
        reached = sum(t is not None for t in times)
        if system == "limit":
            to_target, final = "-", "-"
        else:
            best = median_or_none(times)
            to_target = "not reached" if best is None else f"{best:.2f}"
            if best is not None and reached < len(times):
                to_target += f" ({reached}/{len(times)} reached)"
            final = f"{median_or_none([r.final_error for r in results]):.2f}"
        lines.append(f"| {label} | {statistics.median(rates):.1f} | {min(rates):.1f}-{max(rates):.1f} | "
                     f"{fmt_ratio(ratio_median(runs, system, 'ray-doc'))} | "
                     f"{fmt_ratio(ratio_median(runs, system, 'hogwild'))} | "
                     f"{fmt_ratio(ratio_median(runs, system, 'limit'))} | {to_target} | {final} |")
    return "\n".join(lines)


def headlines(model: str, runs: dict[str, list[RunResult]], target: float) -> list[str]:
    """Two findings per model: dcasgd's updates/s against each yardstick, and time to the target error."""
    parts = []
    for system in DCASGD_RULE_FLAGS:
        parts.append(f"{SHORT_NAMES[system]} **{ratio_median(runs, system, 'ray-doc'):.2f}x** the Ray-doc PS, "
                     f"**{ratio_median(runs, system, 'hogwild'):.2f}x** Hogwild, "
                     f"**{100 * ratio_median(runs, system, 'limit'):.0f}%** of the compute limit")
    updates = f"- {model}, updates/s: " + "; ".join(parts)
    times = []
    for system, _ in SYSTEMS[:-1]:
        best = median_or_none([r.time_to(target) for r in runs[system]])
        times.append(f"{SHORT_NAMES[system]} {'not reached' if best is None else f'**{best:.2f} s**'}")
    to_target = f"- {model}, time to {target:g}% test error: " + ", ".join(times)
    return [updates, to_target]


def dcasgd_evaluation_note(runs: dict[str, list[RunResult]], job: Job) -> str:
    """How long dcasgd's training stood still for its driver's evaluations (left out of its clock)."""
    dcasgd_runs = [r for system in DCASGD_RULE_FLAGS for r in runs[system]]
    eval_s = median_or_none([r.eval_s for r in dcasgd_runs])
    paused_s = median_or_none([r.eval_pause_s for r in dcasgd_runs])
    if eval_s is None or paused_s is None:
        return "dcasgd's summary.json gave no `eval_wall_s` or `eval_pause_s`, so its evaluation time is not known."
    training_s = statistics.median(r.training_s for r in dcasgd_runs)
    return (f"dcasgd's driver spent a median {eval_s:.1f} s evaluating (`eval_wall_s`: {job.evals + 1} "
            f"evaluations, the one at epoch 0 included); training stood still for {paused_s:.1f} s of it "
            f"(`eval_pause_s`, left out of its training clock of {training_s:.1f} s).")


# Issue 15's targets on this machine: (model, yardstick, least ratio of dcasgd's updates/s to it).
TARGETS = (("mlp", "ray-doc", 2.0), ("mlp", "limit", 0.5), ("cnn", "limit", 0.85))
SPLIT_PARTS = (("compute", "compute (forward + backward)"), ("exchange", "exchange with the server"),
               ("server_push", "of which the server's push"), ("server_pull", "of which the server's pull"),
               ("evaluation_pause", "held at evaluation marks (left out of the training clock)"),
               ("other", "other (batch selection, waiting for the driver)"))


def target_lines(results: dict[str, dict[str, list[RunResult]]]) -> list[str]:
    """Met or missed, for each target whose model ran: dcasgd's updates/s (each rule) over the yardstick."""
    lines = []
    for model, yardstick, least in TARGETS:
        if model not in results:
            continue
        for system in DCASGD_RULE_FLAGS:
            ratio = ratio_median(results[model], system, yardstick)
            what = (f"{least:g}x the Ray-doc PS" if yardstick == "ray-doc" else f"{100 * least:.0f}% of the limit")
            shown = f"{ratio:.2f}x" if yardstick == "ray-doc" else f"{100 * ratio:.0f}%"
            verdict = "**met**" if ratio >= least else f"**missed** (short by {100 * (1 - ratio / least):.0f}%)"
            lines.append(f"- target, {model}, {SHORT_NAMES[system]}: at least {what}: {shown}, {verdict}")
    return lines


def time_split_table(runs: dict[str, list[RunResult]], job: Job) -> str:
    """Where a dcasgd worker's time goes per gradient (medians over repeats of summary.json's
    ``time_per_gradient_ms``) beside what one process alone needs per gradient (1000 M / limit)."""
    alone_ms = statistics.median(1e3 * job.workers / r.updates_per_s for r in runs["limit"])
    systems = [s for s in DCASGD_RULE_FLAGS if all(r.time_split_ms for r in runs[s])]
    if not systems:
        return "dcasgd's summary.json gave no `time_per_gradient_ms`."
    lines = ["| ms per gradient, per worker | " + " | ".join(SHORT_NAMES[s] for s in systems) + " |",
             "|---|" + "---:|" * len(systems)]
    for key, label in SPLIT_PARTS:
        cells = [median_or_none([r.time_split_ms.get(key) for r in runs[s]]) for s in systems]
        if any(c is not None for c in cells):
            lines.append(f"| {label} | " + " | ".join("-" if c is None else f"{c:.2f}" for c in cells) + " |")
    lines.append("| one process alone (the limit's compute) | " + " | ".join(f"{alone_ms:.2f}" for _ in systems)
                 + " |")
    return ("Where a dcasgd worker's time goes (`time_per_gradient_ms` of summary.json, median over repeats; "
            "compute here is measured inside the worker, so it includes the slowdown of sharing the cores "
            "with the server, the driver and the other worker):\n\n" + "\n".join(lines))


def report(results: dict[str, dict[str, list[RunResult]]], jobs: dict[str, Job], targets: dict[str, float],
           args: argparse.Namespace, started: float, load_at_start: float) -> str:
    import ray
    findings, tables = [], []
    for model, runs in results.items():
        job = jobs[model]
        params = sum(p.numel() for p in build_model(model).parameters())
        findings += headlines(model, runs, targets[model])
        tables.append(f"### {model} ({params / 1e6:.2f}M parameters), {job.epochs:g} epochs = "
                      f"{job.total_updates} updates per run\n\n{model_table(runs, targets[model])}\n\n"
                      f"{dcasgd_evaluation_note(runs, job)}\n\n{time_split_table(runs, job)}")
    repeats = len(next(iter(next(iter(results.values())).values())))
    evals = next(iter(jobs.values())).evals
    intro = (f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}; "
             f"M = {args.workers} workers, batch {BATCH_SIZE}, lr {LR} (plain SGD, constant), Fashion-MNIST; "
             f"{repeats} repeat(s), each running every system in turn (interleaved); {evals} "
             f"evaluations per run on the 10000-image test set; one torch thread per process.  Total benchmark "
             f"time {time.perf_counter() - started:.0f} s; 1-min load average {load_at_start:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end (absolute rates are noisy on a shared machine; ratios "
             f"compare systems of the same repeat).")
    notes = ("updates/s = updates applied / training-clock seconds.  `x Ray-doc PS`, `x Hogwild`, `x limit`: "
             "median over repeats of this row's updates/s over that system's in the same repeat; the limit is "
             "M x the gradients/s of one process computing the same gradients alone (forward + backward, "
             "batch gather included, one thread), so `x limit` is the fraction of it reached.  Training clocks: "
             "every system's clock **excludes** its evaluations (dcasgd's `training_s` leaves out the time its "
             "training stood still while the driver evaluated, `eval_pause_s`; the Ray-doc PS and Hogwild clocks "
             "stop at each mark and restart after).  Time to target: training-clock seconds at the first of "
             f"the {evals} evaluations at or below the target, median over the repeats that reached it.")
    return "\n\n".join([intro, notes, *tables, "\n".join(target_lines(results) + findings)])


# ====================================================================== main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of about a minute: the mlp only unless --models says otherwise, epochs "
                             f"{QUICK_EPOCHS}, {QUICK_EVALS_PER_RUN} evaluations per run, 1 repeat, a "
                             f"{QUICK_LIMIT_SECONDS:g} s compute-limit loop")
    parser.add_argument("--models", default=None, help="comma-separated: mlp, cnn (default mlp,cnn; mlp with --quick)")
    parser.add_argument("--workers", type=int, default=2, help="workers M of every system (default 2)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"interleaved repeats (default {REPEATS}; 1 with --quick)")
    parser.add_argument("--epochs", type=float, default=None,
                        help=f"epochs of every run (default {EPOCHS}; with --quick {QUICK_EPOCHS})")
    parser.add_argument("--results-dir", default=str(_report.RESULTS),
                        help="where peers.md goes (default benchmarks/results)")
    args = parser.parse_args(argv)
    args.models = [m for m in (args.models or ("mlp" if args.quick else "mlp,cnn")).split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(MODELS)}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.repeats is None:
        args.repeats = 1 if args.quick else REPEATS
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.epochs is not None and args.epochs <= 0:
        parser.error("--epochs must be positive")
    return args


def system_runners(args: argparse.Namespace) -> dict[str, Callable[[Job, Data], RunResult]]:
    limit_seconds = QUICK_LIMIT_SECONDS if args.quick else LIMIT_SECONDS
    return {
        "dcasgd-asgd": lambda job, data: run_dcasgd(DCASGD_RULE_FLAGS["dcasgd-asgd"], job, data),
        "dcasgd-dc-asgd-a": lambda job, data: run_dcasgd(DCASGD_RULE_FLAGS["dcasgd-dc-asgd-a"], job, data),
        "ray-doc": run_ray_doc,
        "hogwild": run_hogwild,
        "limit": lambda job, data: measure_compute_limit(job, data, limit_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    data = load_fashion_mnist()
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    targets = QUICK_TARGET_ERROR if args.quick else TARGET_ERROR
    evals = QUICK_EVALS_PER_RUN if args.quick else EVALS_PER_RUN
    jobs = {m: Job(m, args.workers, args.epochs or epochs[m], len(data.train_y), evals) for m in args.models}
    runners = system_runners(args)
    results = {m: {system: [] for system, _ in SYSTEMS} for m in args.models}
    for repeat in range(1, args.repeats + 1):
        for model, job in jobs.items():
            for system, label in SYSTEMS:
                run_started = time.perf_counter()
                try:
                    result = runners[system](job, data)
                except Exception as exc:  # noqa: BLE001 - any failure of a system ends the benchmark
                    if not isinstance(exc, SystemFailed):
                        traceback.print_exc()
                    print(f"peers: error: {label} failed on {model} (repeat {repeat}): {exc}", file=sys.stderr)
                    return 1
                results[model][system].append(result)
                final = "" if result.final_error is None else f", final test error {result.final_error:.2f}%"
                print(f"repeat {repeat}/{args.repeats} {model} {system}: {result.updates_per_s:.1f} updates/s"
                      f"{final} ({time.perf_counter() - run_started:.0f} s)", file=sys.stderr, flush=True)
    body = report(results, jobs, targets, args, started, load_start)
    print(body)
    _report.RESULTS = Path(args.results_dir)
    argv_for_command = sys.argv if argv is None else [str(Path(__file__).name), *argv]
    path = _report.write_section("peers", "Peers: dcasgd on Ray vs the Ray docs' parameter server, Hogwild and "
                                 "the compute limit", body, argv_for_command)
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
