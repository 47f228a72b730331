"""What reading a disk-backed Dataset lazily costs per gradient, against the tensor path.

The same images three ways, each a simulated run of about G gradients (4 async workers, the
built-in ``mlp``, batch 128), median over interleaved repeats, per gradient:

- ``tensor``: the images as a float tensor pair in memory (the fast path: ``x[idx]``);
- ``lazy``: a Dataset over a uint8 memory-mapped file on disk, each item read and
  standardised in ``__getitem__`` (as an image Dataset decodes a file), collated by
  ``default_collate``; ``loader_workers=0`` (the worker reads its own batch);
- ``lazy + K loader processes``: the same, with ``loader_workers=K`` building batches ahead.

All three compute the same gradients on the same inputs, so their metrics lines must be
byte-identical (checked).  Evaluations are left out of the time (``eval_wall_s``).
Reports each path's ms per gradient, its ratio to the tensor path and the added ms, and
splits the lazy path's reading of one batch into the Dataset's own ``__getitem__`` calls
and the rest (``DatasetSource.build``: seeding the generators, the collate).
Writes benchmarks/results/data_path.md.

    python benchmarks/data_path.py [--gradients 1200] [--repeats 3] [--loader-workers 2] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).parent))
from _bench import set_threads, table  # noqa: E402
from _report import write_section  # noqa: E402

import dcasgd  # noqa: E402
from dcasgd.compute.batches import DatasetSource  # noqa: E402
from dcasgd.compute.data import find_dataset_dir, load_train_images  # noqa: E402
from dcasgd.compute.models import build_model  # noqa: E402

WORKERS, BATCH = 4, 128


class MemmapImages(Dataset):
    """uint8 images (N, 1, 28, 28) and int64 labels in two files; an item is read and standardised on access."""

    def __init__(self, directory: str, n: int, mean: float, std: float) -> None:
        self.directory, self.n, self.mean, self.std = directory, n, mean, std
        self.images = self.labels = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:
        return {**self.__dict__, "images": None, "labels": None}

    def __getitem__(self, i: int):
        if self.images is None:
            self.images = np.memmap(f"{self.directory}/images.u8", np.uint8, "r", shape=(self.n, 1, 28, 28))
            self.labels = np.memmap(f"{self.directory}/labels.i64", np.int64, "r", shape=(self.n,))
        image = torch.from_numpy(np.array(self.images[i])).float().div_(255.0).sub_(self.mean).div_(self.std)
        return image, int(self.labels[i])


def write_images(directory: Path) -> tuple[int, float, float, str]:
    """Fashion-MNIST's training images (random ones without it) as files; returns n, mean, std, what."""
    if find_dataset_dir("fashion-mnist"):
        x, y = load_train_images("fashion-mnist")
        what = "Fashion-MNIST's 60,000 training images"
    else:
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=gen), torch.randint(10, (60000,))
        what = "60,000 random 28x28 images (Fashion-MNIST not found)"
    x.numpy().tofile(directory / "images.u8")
    y.numpy().astype(np.int64).tofile(directory / "labels.i64")
    scaled = x.float().div_(255.0)
    return len(y), float(scaled.mean()), float(scaled.std()), what


def make_mlp() -> torch.nn.Module:
    return build_model("mlp", (1, 28, 28), 10, seed=None)


def one_run(data, test, gradients: int, n: int, loader_workers: int = 0) -> tuple[float, list]:
    """(seconds per gradient, metrics lines) of a 4-worker simulated run of about ``gradients`` gradients."""
    result = dcasgd.train(make_mlp, data, eval_data=test, workers=WORKERS, epochs=gradients * BATCH / n,
                          batch_size=BATCH, lr=0.05, eval_every=1e9, loader_workers=loader_workers, progress=False)
    s = result.summary
    return (s["wall_time_s"] - s["eval_wall_s"]) / s["gradients"], result.metrics


def reading_split(lazy: MemmapImages, n: int, batches: int = 200) -> tuple[float, float]:
    """Median seconds per batch of BATCH random items: the Dataset's ``__getitem__`` calls alone, and the
    whole ``DatasetSource.build`` (the same calls, the seeded generators, the collate)."""
    source = DatasetSource(lazy)
    gen = torch.Generator().manual_seed(1)
    items, built = [], []
    for k in range(batches):
        idx = torch.randint(n, (BATCH,), generator=gen).tolist()
        start = time.perf_counter()
        [lazy[i] for i in idx]
        items.append(time.perf_counter() - start)
        start = time.perf_counter()
        source.build(idx, k)
        built.append(time.perf_counter() - start)
    return statistics.median(items), statistics.median(built)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gradients", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="fewer gradients and repeats")
    args = parser.parse_args()
    if args.quick:
        args.gradients, args.repeats = 300, 2
    threads = set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dcasgd-data-path-") as tmp:
        n, mean, std, what = write_images(Path(tmp))
        lazy = MemmapImages(tmp, n, mean, std)
        x = torch.stack([lazy[i][0] for i in range(n)])
        y = torch.from_numpy(np.fromfile(f"{tmp}/labels.i64", dtype=np.int64))
        test = (x[:500].clone(), y[:500].clone())
        paths = {"tensor": lambda: one_run((x, y), test, args.gradients, n),
                 "lazy": lambda: one_run(lazy, test, args.gradients, n),
                 f"lazy + {args.loader_workers} loader processes": lambda: one_run(
                     lazy, test, args.gradients, n, args.loader_workers)}
        items_s, build_s = reading_split(lazy, n)
        seconds: dict[str, list[float]] = {name: [] for name in paths}
        metrics: dict[str, list] = {}
        for _ in range(args.repeats):                 # interleaved: load drift hits every path alike
            for name, run in paths.items():
                per_gradient, metrics[name] = run()
                seconds[name].append(per_gradient)
    same = all(m == metrics["tensor"] for m in metrics.values())
    med = {name: statistics.median(v) for name, v in seconds.items()}
    base = med["tensor"]
    rows = [[name, f"{1e3 * v:.3f}", f"{v / base:.2f}x", f"{1e3 * (v - base):+.3f}"] for name, v in med.items()]
    lazy_name = f"lazy + {args.loader_workers} loader processes"
    body = "\n".join([
        f"{what} on disk (a uint8 memory map, an item read and standardised per `__getitem__`), the built-in "
        f"`mlp`, batch {BATCH}, {WORKERS} simulated async workers, about {args.gradients} gradients a run; median "
        f"of {args.repeats} interleaved repeats, per gradient, evaluations left out.  {threads}.",
        "",
        table(["path", "ms per gradient", "vs tensor", "added ms"], rows),
        "",
        f"- lazy Dataset, read by the worker: **{med['lazy'] / base:.2f}x** the tensor path's time per gradient "
        f"({1e3 * (med['lazy'] - base):+.2f} ms)",
        f"- reading one batch in the worker: **{1e3 * build_s:.2f} ms**, of which the Dataset's own {BATCH} "
        f"`__getitem__` calls {1e3 * items_s:.2f} ms and dcasgd's part (seeding the generators, "
        f"`default_collate`) {1e3 * (build_s - items_s):.2f} ms",
        f"- with {args.loader_workers} loader processes: **{med[lazy_name] / base:.2f}x** (batches built ahead "
        f"in other processes overlap the gradient when a core is free; on this 2-core machine shared with other "
        f"jobs there is little to overlap with)",
        f"- the three paths' metrics lines are byte-identical: **{same}**",
    ])
    print(body)
    write_section("data_path", "Data path: a lazy Dataset against tensors (`benchmarks/data_path.py`)", body,
                  sys.argv)
    if not same:
        raise SystemExit("the lazy path computed different bits from the tensor path")


if __name__ == "__main__":
    main()
