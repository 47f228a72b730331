"""Datasets: finding, downloading, validating and loading them; worker shards.

Datasets (:data:`DATASETS`): ``fashion-mnist`` and ``mnist`` (IDX files),
``cifar10`` (the python-pickle batches) and ``synthetic`` (Gaussian classes
generated in memory from a seed). :func:`load_dataset` returns a
:class:`Dataset` of float32 inputs, normalised per channel with the mean and
standard deviation of the training split (after the validation split is held
out), and int64 labels. :func:`load_train_images` reads a built-in image data
set's training split as stored (uint8), what a Ray worker holds.
:func:`shard_indices` splits an epoch's samples among workers.

Search order for the directory of a dataset ``<name>`` (first one holding all
the expected files wins):

1. ``<root>/<name>`` when ``root`` is given;
2. ``$DCASGD_DATA/<name>``;
3. ``~/.cache/dcasgd/<name>``;
4. ``/usr/share/datasets/<name>`` (Debian, e.g. ``apt-get install
   dataset-fashion-mnist``).

If none does and ``download=True``, the official files are fetched into
``<root>/<name>``, else ``$DCASGD_DATA/<name>``, else ``~/.cache/dcasgd/<name>``.
Each file goes to a temporary file in that directory, is checked against the
published size and MD5, and only then renamed into place (atomic); on any
failure the temporary file is deleted, so nothing half-downloaded stays.

Security: CIFAR-10 is distributed as Python pickles, and unpickling can run
arbitrary code. Every pickle is therefore read with :class:`_RestrictedUnpickler`,
which resolves only numpy's array-reconstruction globals and refuses anything
else with :class:`DatasetError`; the downloaded archive is checksummed before it
is opened and extracted with tarfile's ``data`` filter, members under
``cifar-10-batches-py/`` only.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import InputError
from ..names import DATASETS

__all__ = ["DATASETS", "Dataset", "DatasetError", "find_dataset_dir", "load_dataset", "load_train_images",
           "shard_indices", "split_validation", "validation_indices"]

class DatasetError(InputError):
    """A dataset file is missing, malformed, or failed verification; the message names the file."""


@dataclass
class Dataset:
    """Train/validation/test splits: inputs, and targets (int64 class indices for the built-ins).

    ``num_classes`` is None for targets that are not class indices (regression).
    ``norm`` is the per-channel ``(mean, std)`` a built-in data set was standardised with
    (shape (1, C, 1, 1) for images): ``x = (raw / 255 - mean) / std``.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    num_classes: int | None
    norm: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28) or (D,)."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        """Training samples (after the validation split)."""
        return len(self.train_y)


# --------------------------------------------------------------------------
# Official files: URLs, sizes (bytes) and MD5s.
# MD5s are torchvision's (torchvision/datasets/mnist.py, cifar.py: MNIST.resources,
# FashionMNIST.resources, CIFAR10.tgz_md5); sizes are those of the published files.


@dataclass(frozen=True)
class _Resource:
    filename: str
    url: str
    size: int  # bytes
    md5: str


_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

_RESOURCES: dict[str, tuple[_Resource, ...]] = {
    "fashion-mnist": (
        _Resource("train-images-idx3-ubyte.gz", _FASHION_URL + "train-images-idx3-ubyte.gz", 26421880,
                  "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        _Resource("train-labels-idx1-ubyte.gz", _FASHION_URL + "train-labels-idx1-ubyte.gz", 29515,
                  "25c81989df183df01b3e8a0aad5dffbe"),
        _Resource("t10k-images-idx3-ubyte.gz", _FASHION_URL + "t10k-images-idx3-ubyte.gz", 4422102,
                  "bef4ecab320f06d8554ea6380940ec79"),
        _Resource("t10k-labels-idx1-ubyte.gz", _FASHION_URL + "t10k-labels-idx1-ubyte.gz", 5148,
                  "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "mnist": (
        _Resource("train-images-idx3-ubyte.gz", _MNIST_URL + "train-images-idx3-ubyte.gz", 9912422,
                  "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        _Resource("train-labels-idx1-ubyte.gz", _MNIST_URL + "train-labels-idx1-ubyte.gz", 28881,
                  "d53e105ee54ea40749a09fcbcd1e9432"),
        _Resource("t10k-images-idx3-ubyte.gz", _MNIST_URL + "t10k-images-idx3-ubyte.gz", 1648877,
                  "9fb629c4189551a2d022fa330f9573f3"),
        _Resource("t10k-labels-idx1-ubyte.gz", _MNIST_URL + "t10k-labels-idx1-ubyte.gz", 4542,
                  "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "cifar10": (
        _Resource("cifar-10-python.tar.gz", _CIFAR_URL, 170498071, "c58f30108f718f92721af3b95e74349a"),
    ),
}

_IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_FILES = _CIFAR_TRAIN + ("test_batch",)

_SYSTEM_DATASETS = Path("/usr/share/datasets")  # Debian's dataset-* packages
_FETCH_TIMEOUT_S = 60.0
_NUM_CLASSES = 10  # MNIST, Fashion-MNIST, CIFAR-10


# --------------------------------------------------------------------------
# Finding a dataset directory


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def _search_dirs(name: str, root: str | os.PathLike | None) -> list[Path]:
    """Candidate directories for ``name``, in search order."""
    dirs = []
    if root is not None:
        dirs.append(Path(root) / name)
    if os.environ.get("DCASGD_DATA"):
        dirs.append(Path(os.environ["DCASGD_DATA"]) / name)
    dirs.append(Path.home() / ".cache" / "dcasgd" / name)
    dirs.append(_SYSTEM_DATASETS / name)
    return dirs


def _idx_path(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` if present, else ``directory/stem.gz``, else None."""
    for candidate in (directory / stem, directory / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _cifar_candidates(directory: Path) -> tuple[tuple[Path, str], ...]:
    """Where CIFAR-10's batches may sit, each with its prefix relative to ``directory``."""
    return (directory, ""), (directory / _CIFAR_SUBDIR, _CIFAR_SUBDIR + "/")


def _cifar_batch_dir(directory: Path) -> Path | None:
    """The directory holding all CIFAR-10 batches: ``directory`` or its ``cifar-10-batches-py``."""
    for candidate, _ in _cifar_candidates(directory):
        if all((candidate / f).is_file() for f in _CIFAR_FILES):
            return candidate
    return None


def _missing_files(name: str, directory: Path) -> list[str]:
    """The files ``directory`` lacks to hold ``name``; empty when it is complete.

    CIFAR-10's six batches must all sit in one directory (``directory`` or its
    ``cifar-10-batches-py/``): this names what the fuller of the two lacks, with its prefix.
    """
    if name == "cifar10":
        lacking = [[prefix + f for f in _CIFAR_FILES if not (candidate / f).is_file()]
                   for candidate, prefix in _cifar_candidates(directory)]
        return min(lacking, key=len)
    return [stem for stem in _IDX_STEMS if _idx_path(directory, stem) is None]


def _is_complete(name: str, directory: Path) -> bool:
    return not _missing_files(name, directory)


def _expected_files(name: str) -> str:
    if name == "cifar10":
        return f"{', '.join(_CIFAR_FILES)} (directly or under {_CIFAR_SUBDIR}/)"
    return f"{', '.join(_IDX_STEMS)} (each raw or .gz)"


def find_dataset_dir(name: str, root: str | None = None) -> Path | None:
    """First directory in the search order holding all files of ``name``; None if none does.

    Always None for ``synthetic``, which has no files.
    """
    _check_name(name)
    if name == "synthetic":
        return None
    if root is not None and (Path(root) / name).is_dir() and not _is_complete(name, Path(root) / name):
        # the user pointed here: an incomplete directory is an error, not a reason to look elsewhere
        raise DatasetError(f"dataset directory {Path(root) / name} is incomplete: it must hold "
                           f"{_expected_files(name)}; missing: {', '.join(_missing_files(name, Path(root) / name))}")
    for directory in _search_dirs(name, root):
        if _is_complete(name, directory):
            return directory
    return None


def _not_found_error(name: str, root: str | None) -> DatasetError:
    searched = "\n".join(f"  {d}" for d in _search_dirs(name, root))
    hint = "apt-get install dataset-fashion-mnist, or " if name == "fashion-mnist" else ""
    return DatasetError(
        f"dataset {name!r} not found and download is off. Searched, in order:\n{searched}\n"
        f"A directory must hold {_expected_files(name)}. To install: {hint}put the files in "
        f"$DCASGD_DATA/{name} (set DCASGD_DATA), or allow the download."
    )


# --------------------------------------------------------------------------
# Downloading


def _fetch(url: str, dest_path: str | os.PathLike) -> None:
    """Write the body of ``url`` to ``dest_path`` (tests replace this)."""
    with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT_S) as response, open(dest_path, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(path: Path, resource: _Resource, final: Path) -> None:
    size = path.stat().st_size
    if size != resource.size:
        raise DatasetError(f"{final}: download from {resource.url} has {size} bytes, expected {resource.size} bytes "
                           "(size mismatch)")
    md5 = _md5(path)
    if md5 != resource.md5:
        raise DatasetError(f"{final}: download from {resource.url} has MD5 {md5}, expected {resource.md5} "
                           "(checksum mismatch)")


def _download_resource(resource: _Resource, directory: Path) -> Path:
    """Fetch one file into ``directory`` via a verified temporary file; return its final path."""
    final = directory / resource.filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{resource.filename}.", suffix=".part", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _fetch(resource.url, tmp)
        except OSError as e:  # URLError, HTTPError and socket timeouts are OSErrors
            raise DatasetError(f"{final}: download from {resource.url} failed: {e}") from e
        _verify(tmp, resource, final)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _is_cifar_member(member: tarfile.TarInfo) -> bool:
    parts = PurePosixPath(member.name).parts
    return (len(parts) >= 1 and parts[0] == _CIFAR_SUBDIR and ".." not in parts
            and (member.isfile() or member.isdir()))


def _extract_cifar(archive: Path, directory: Path) -> None:
    """Extract ``cifar-10-batches-py/`` from ``archive`` into ``directory`` (atomically renamed)."""
    target = directory / _CIFAR_SUBDIR
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=directory))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if _is_cifar_member(m)]
            tar.extractall(staging, members=members, filter="data")
        if _cifar_batch_dir(staging / _CIFAR_SUBDIR) is None:
            raise DatasetError(f"{archive}: archive lacks {_expected_files('cifar10')}")
        os.replace(staging / _CIFAR_SUBDIR, target)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DatasetError(f"{archive}: cannot extract: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _download_dir(name: str, root: str | None) -> Path:
    if root is not None:
        return Path(root) / name
    if os.environ.get("DCASGD_DATA"):
        return Path(os.environ["DCASGD_DATA"]) / name
    return Path.home() / ".cache" / "dcasgd" / name


def _download(name: str, root: str | None) -> Path:
    """Download and verify the official files of ``name``; return the dataset directory."""
    directory = _download_dir(name, root)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DatasetError(f"{directory}: cannot create download directory: {e}") from e
    resources = _RESOURCES[name]
    if name == "cifar10":
        if (directory / _CIFAR_SUBDIR).exists():
            raise DatasetError(f"{directory / _CIFAR_SUBDIR}: exists but is incomplete; delete it and retry")
        archive = _download_resource(resources[0], directory)
        try:
            _extract_cifar(archive, directory)
        finally:
            archive.unlink(missing_ok=True)
    else:
        for resource in resources:
            _download_resource(resource, directory)
    return directory


# --------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim


def _read_file(path: Path) -> bytes:
    """Contents of ``path``, gunzipped if it ends in ``.gz``."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.suffix == ".gz" else raw
    except EOFError as e:
        raise DatasetError(f"{path}: truncated gzip data ({e})") from e
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DatasetError(f"{path}: corrupt gzip data ({e})") from e
    except OSError as e:
        raise DatasetError(f"{path}: cannot read: {e}") from e


def _parse_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Parse an unsigned-byte IDX file of shape (N, *item_shape); check magic, dims and length."""
    data = _read_file(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim  # bytes
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header: expected {header} bytes, got {len(data)}")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DatasetError(f"{path}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if dims[1:] != item_shape:
        raise DatasetError(f"{path}: IDX dims {dims}, expected (N, {', '.join(map(str, item_shape))})")
    expected = header + int(np.prod(dims))
    if len(data) < expected:
        raise DatasetError(f"{path}: truncated: expected {expected} bytes, got {len(data)}")
    if len(data) > expected:
        raise DatasetError(f"{path}: {len(data) - expected} trailing bytes: expected {expected} bytes, "
                           f"got {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_labels(path: Path, labels: np.ndarray) -> None:
    bad = np.flatnonzero(labels >= _NUM_CLASSES)
    if bad.size:
        i = int(bad[0])
        raise DatasetError(f"{path}: label {int(labels[i])} at index {i} out of range 0..{_NUM_CLASSES - 1}")


def _load_idx_pair(directory: Path, images_stem: str, labels_stem: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 1, 28, 28), int64 labels (N,)) from one images/labels file pair."""
    images_path = _idx_path(directory, images_stem)
    labels_path = _idx_path(directory, labels_stem)
    for stem, path in ((images_stem, images_path), (labels_stem, labels_path)):
        if path is None:
            raise DatasetError(f"{directory / stem}: missing (neither raw nor .gz)")
    images = _parse_idx(images_path, _IDX_IMAGES_MAGIC, (28, 28))
    labels = _parse_idx(labels_path, _IDX_LABELS_MAGIC, ())
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} and {labels_path}: mislabelled split: {len(images)} images "
                           f"but {len(labels)} labels (count mismatch)")
    _check_labels(labels_path, labels)
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def _load_idx_dataset(directory: Path):
    train = _load_idx_pair(directory, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")
    test = _load_idx_pair(directory, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return train, test


# --------------------------------------------------------------------------
# CIFAR-10 pickle batches

# The only globals a batch (a dict of bytes, lists and uint8 arrays) may reference.
_PICKLE_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2
})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`_PICKLE_ALLOWED`; bytes keys are kept as bytes."""

    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise DatasetError(f"{self._path}: refusing to unpickle forbidden global {module}.{name} "
                               "(only numpy array reconstruction is allowed)")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core."):]  # numpy >= 2 moved it
        return getattr(importlib.import_module(module), name)


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, path).load()
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a restricted load means a bad file
        raise DatasetError(f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e})") from e


def _field(path: Path, batch: dict, key: str):
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise DatasetError(f"{path}: CIFAR batch has no {key!r} entry")


def _load_cifar_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, 3, 32, 32), int64 labels (N,)) from one pickle batch."""
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise DatasetError(f"{path}: CIFAR batch is a {type(batch).__name__}, expected a dict")
    data = _field(path, batch, "data")
    labels = _field(path, batch, "labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DatasetError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
                           f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DatasetError(f"{path}: 'labels' is not a list of integers ({e})") from e
    if labels.shape != (len(data),):
        raise DatasetError(f"{path}: mislabelled batch: {len(data)} images but labels of shape "
                           f"{labels.shape} (count mismatch)")
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        i = int(np.flatnonzero((labels < 0) | (labels >= _NUM_CLASSES))[0])
        raise DatasetError(f"{path}: label {int(labels[i])} at index {i} out of range 0..{_NUM_CLASSES - 1}")
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels)


def _load_cifar_dataset(directory: Path):
    batch_dir = _cifar_batch_dir(directory)
    if batch_dir is None:
        raise DatasetError(f"{directory}: missing CIFAR-10 batches; expected {_expected_files('cifar10')}")
    parts = [_load_cifar_batch(batch_dir / f) for f in _CIFAR_TRAIN]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = _load_cifar_batch(batch_dir / "test_batch")
    return train, test


# --------------------------------------------------------------------------
# Decoded files, once per process

_decoded_cache: dict[tuple, tuple] = {}


def _decoded(name: str, directory: Path):
    """(train, test) of raw tensors from ``directory``, decoded once per process and file version.

    A study runs many jobs in a few long-lived processes; decompressing and parsing the files is
    most of a run's start-up.  The key holds every file's size and modification time, so a changed
    file is read again; one data set is kept (callers copy before changing anything).
    """
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    key = (name, str(directory.resolve()), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _decoded_cache:
        loader = _load_cifar_dataset if name == "cifar10" else _load_idx_dataset
        _decoded_cache.clear()
        _decoded_cache[key] = loader(directory)
    return _decoded_cache[key]


# --------------------------------------------------------------------------
# Synthetic task


def _make_synthetic(seed: int, n_train: int, n_test: int, dim: int, classes: int):
    """Gaussian classes: centres at mean pairwise distance 4 (noise std 1) in ``dim`` dims.

    The Bayes error is a few percent whatever ``dim``; all randomness comes from ``seed``.
    """
    if min(n_train, n_test, dim, classes) < 1 or classes < 2:
        raise DatasetError(f"synthetic (in memory): need train, test, dim >= 1 and classes >= 2, got "
                           f"train={n_train} test={n_test} dim={dim} classes={classes}")
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * (4.0 / (2 * dim) ** 0.5)
    n = n_train + n_test
    y = torch.randint(classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


# --------------------------------------------------------------------------
# Splitting, normalising, assembling


def validation_indices(n: int, val_size: int, seed: int, where: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(train indices, validation indices), each sorted: ``val_size`` of ``range(n)`` picked by a permutation
    from ``seed``; None when ``val_size`` is 0 (everything trains)."""
    if val_size < 0 or val_size >= n:
        raise DatasetError(f"{where}: val_size={val_size} must be in 0..{n - 1} "
                           f"(the training split has {n} samples)")
    if val_size == 0:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def split_validation(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int, where: str):
    """(train_x, train_y, val_x, val_y): ``val_size`` samples picked by a permutation from ``seed``."""
    split = validation_indices(len(x), val_size, seed, where)
    if split is None:
        return x, y, x[:0], y[:0]
    train_idx, val_idx = split
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def _normalise(train: torch.Tensor, *others: torch.Tensor) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Standardise each channel (dim 1) with the training split's mean and std (population); returns the
    tensors and ``(mean, std)``."""
    dims = [0] + list(range(2, train.dim()))
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True, unbiased=False).clamp_min(1e-6)
    return [t.sub_(mean).div_(std) for t in (train, *others)], (mean, std)


def _dataset_dir(name: str, root: str | None, download: bool) -> Path:
    """The directory holding ``name``'s files: found in the search order, else downloaded (if allowed)."""
    directory = find_dataset_dir(name, root)
    if directory is None:
        if not download:
            raise _not_found_error(name, root)
        directory = _download(name, root)
    return directory


def load_dataset(name: str, *, val_size: int = 0, seed: int = 0, root: str | None = None,
                 download: bool = True, synthetic_train: int = 2048, synthetic_test: int = 512,
                 synthetic_dim: int = 20, synthetic_classes: int = 4) -> Dataset:
    """Load (finding or downloading) dataset ``name`` and hold out ``val_size`` training samples.

    ``seed`` picks the validation split and, for ``synthetic``, the whole task. Images come
    back as (N, 1, 28, 28) or (N, 3, 32, 32) float32, synthetic inputs as (N, synthetic_dim).
    """
    _check_name(name)
    if name == "synthetic":
        train, test = _make_synthetic(seed, synthetic_train, synthetic_test, synthetic_dim, synthetic_classes)
        num_classes, where = synthetic_classes, "synthetic (in memory)"
    else:
        directory = _dataset_dir(name, root, download)
        train, test = _decoded(name, directory)
        num_classes, where = _NUM_CLASSES, str(directory)
    train_x, train_y, val_x, val_y = split_validation(*train, val_size, seed, where)
    (train_x, val_x, test_x), norm = _normalise(_to_float(train_x), _to_float(val_x), _to_float(test[0]))
    return Dataset(name, train_x, train_y, test_x, test[1], val_x, val_y, num_classes, norm)


def load_train_images(name: str, *, val_size: int = 0, seed: int = 0, root: str | None = None,
                      download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split of a built-in image data set as stored: (uint8 (N, C, H, W), int64 (N,)).

    The same samples, in the same order, as :func:`load_dataset`'s ``train_x`` (the validation
    samples held out), a quarter of its bytes; ``(x.float() / 255 - mean) / std`` with the
    data set's ``norm`` gives its rows bit for bit.  Read from this machine's disk (found or
    downloaded), not cached: what a Ray worker holds of a built-in data set.
    """
    _check_name(name)
    if name == "synthetic":
        raise DatasetError("synthetic (in memory): not an image data set; load_dataset makes it from the seed")
    directory = _dataset_dir(name, root, download)
    loader = _load_cifar_dataset if name == "cifar10" else _load_idx_dataset
    (x, y), _ = loader(directory)
    train_x, train_y, _, _ = split_validation(x, y, val_size, seed, str(directory))
    return train_x, train_y


# --------------------------------------------------------------------------
# Worker shards


def shard_indices(num_samples: int, num_workers: int, epoch: int, seed: int) -> list[torch.Tensor]:
    """Split a permutation of range(num_samples) into ``num_workers`` disjoint int64 shards.

    The permutation depends only on (seed, epoch); shard sizes differ by at most 1.
    """
    if num_samples < 0 or num_workers < 1:
        raise ValueError(f"need num_samples >= 0 and num_workers >= 1, got {num_samples}, {num_workers}")
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (1 << 63))
    perm = torch.randperm(num_samples, generator=g)
    return [shard.clone() for shard in torch.tensor_split(perm, num_workers)]
