"""Tests for dcasgd.compute.data: IDX/CIFAR parsing and validation, downloads, search order, splits, shards."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dcasgd.compute import data
from dcasgd.compute.data import DATASETS, Dataset, DatasetError, find_dataset_dir, load_dataset, shard_indices

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ---------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Unsigned-byte IDX encoding of ``array``."""
    magic = 0x800 + array.ndim
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def write_file(path: Path, content: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        content = gzip.compress(content)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def make_images(n: int, offset: int = 0) -> np.ndarray:
    """Distinct constant images: image i is filled with 10 * (i + offset)."""
    return np.repeat((10 * (np.arange(n) + offset)).astype(np.uint8), 28 * 28).reshape(n, 28, 28)


def write_idx_dataset(directory: Path, n_train: int = 12, n_test: int = 5, gz=(False, True, True, False)):
    """A tiny MNIST-style dataset; returns the raw arrays."""
    arrays = {
        "train-images-idx3-ubyte": make_images(n_train),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": make_images(n_test, offset=n_train),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) * 3) % 10,
    }
    for stem, use_gz in zip(IDX_STEMS, gz):
        write_file(directory / stem, idx_bytes(arrays[stem]), gz=use_gz)
    return arrays


def cifar_batch(n: int, rng: np.random.Generator, labels=None) -> dict:
    return {b"batch_label": b"test", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(labels if labels is not None else rng.integers(0, 10, n).tolist()),
            b"filenames": [b"x.png"] * n}


def write_cifar_dataset(directory: Path, n: int = 4, protocol: int = pickle.HIGHEST_PROTOCOL) -> dict:
    rng = np.random.default_rng(0)
    batches = {f: cifar_batch(n, rng) for f in data._CIFAR_FILES}
    directory.mkdir(parents=True, exist_ok=True)
    for f, b in batches.items():
        (directory / f).write_bytes(pickle.dumps(b, protocol=protocol))
    return batches


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $DCASGD_DATA, HOME in tmp_path, no system datasets: nothing is found unless a test puts it there."""
    monkeypatch.delenv("DCASGD_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data, "_SYSTEM_DATASETS", tmp_path / "system")
    return tmp_path


# ---------------------------------------------------------------- IDX parsing


def test_idx_raw_and_gz_parse_and_normalise(isolated):
    arrays = write_idx_dataset(isolated / "root" / "mnist")
    ds = load_dataset("mnist", root=str(isolated / "root"), download=False)
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.num_classes == 10
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.val_x.shape == (0, 1, 28, 28) and ds.val_y.shape == (0,)
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    raw = torch.from_numpy(arrays["train-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    mean, std = raw.mean(), raw.std(unbiased=False)
    torch.testing.assert_close(ds.train_x, (raw - mean) / std)
    raw_test = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1) / 255
    torch.testing.assert_close(ds.test_x, (raw_test - mean) / std)  # test uses TRAIN stats
    assert abs(ds.train_x.mean().item()) < 1e-5 and abs(ds.train_x.std(unbiased=False).item() - 1) < 1e-4


def corrupt(directory: Path, stem: str, content: bytes, gz: bool = False) -> Path:
    for old in (directory / stem, directory / (stem + ".gz")):
        old.unlink(missing_ok=True)
    return write_file(directory / stem, content, gz=gz)


GOOD_IMAGES = idx_bytes(make_images(12))
GOOD_LABELS = idx_bytes(np.arange(12) % 10)


@pytest.mark.parametrize("stem, content, gz, message", [
    ("train-images-idx3-ubyte", GOOD_IMAGES[:-100], False, "truncated: expected 9424 bytes, got 9324"),
    ("train-images-idx3-ubyte", GOOD_IMAGES[:10], True, "truncated IDX header"),
    ("train-images-idx3-ubyte", GOOD_IMAGES + b"\0", False, "trailing"),
    ("train-images-idx3-ubyte", b"\x00\x00\x08\x01" + GOOD_IMAGES[4:], False, "bad IDX magic"),
    ("train-labels-idx1-ubyte", b"\x00\x00\x08\x03" + GOOD_LABELS[4:], True, "bad IDX magic"),
    ("train-images-idx3-ubyte", idx_bytes(np.zeros((12, 27, 28))), False, "IDX dims"),
    ("train-labels-idx1-ubyte", idx_bytes(np.arange(11) % 10), False, "mislabelled"),
    ("train-labels-idx1-ubyte", idx_bytes(np.array([0] * 11 + [12])), True, "label 12 at index 11 out of range"),
])
def test_idx_validation_errors_name_the_file(isolated, stem, content, gz, message):
    directory = isolated / "root" / "mnist"
    write_idx_dataset(directory)
    bad = corrupt(directory, stem, content, gz=gz)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("mnist", root=str(isolated / "root"), download=False)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("content, message", [
    (b"this is not gzip data at all", "corrupt gzip"),
    (gzip.compress(GOOD_IMAGES)[:-40], "truncated gzip"),
    (gzip.compress(GOOD_IMAGES)[:20] + b"\xff" * 200, "gzip"),
])
def test_corrupt_gzip_names_the_file(isolated, content, message):
    directory = isolated / "root" / "mnist"
    write_idx_dataset(directory)
    bad = directory / "train-images-idx3-ubyte.gz"
    (directory / "train-images-idx3-ubyte").unlink(missing_ok=True)
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("mnist", root=str(isolated / "root"), download=False)
    assert str(bad) in str(info.value)


def test_count_mismatch_names_both_files(isolated):
    directory = isolated / "root" / "fashion-mnist"
    write_idx_dataset(directory, gz=(False,) * 4)
    corrupt(directory, "t10k-labels-idx1-ubyte", idx_bytes(np.arange(7) % 10))
    with pytest.raises(DatasetError, match="5 images but 7 labels") as info:
        load_dataset("fashion-mnist", root=str(isolated / "root"), download=False)
    assert str(directory / "t10k-images-idx3-ubyte") in str(info.value)
    assert str(directory / "t10k-labels-idx1-ubyte") in str(info.value)


# ---------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("subdir", [True, False])
def test_cifar_batches_parse_and_normalise(isolated, subdir):
    directory = isolated / "root" / "cifar10"
    batches = write_cifar_dataset(directory / "cifar-10-batches-py" if subdir else directory)
    ds = load_dataset("cifar10", root=str(isolated / "root"), download=False)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    # each row is 1024 red, then green, then blue values, row-major; batches in order 1..5
    raw = torch.cat([torch.from_numpy(batches[f][b"data"]) for f in data._CIFAR_TRAIN]).view(20, 3, 32, 32) / 255
    mean = raw.mean(dim=(0, 2, 3), keepdim=True)
    std = raw.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
    torch.testing.assert_close(ds.train_x, (raw - mean) / std)
    raw_test = torch.from_numpy(batches["test_batch"][b"data"]).view(4, 3, 32, 32) / 255
    torch.testing.assert_close(ds.test_x, (raw_test - mean) / std)
    assert ds.train_y.tolist() == sum((batches[f][b"labels"] for f in data._CIFAR_TRAIN), [])
    assert ds.test_y.tolist() == batches["test_batch"][b"labels"]
    for c in range(3):
        assert abs(ds.train_x[:, c].mean().item()) < 1e-5
        assert abs(ds.train_x[:, c].std(unbiased=False).item() - 1) < 1e-4
    split = load_dataset("cifar10", root=str(isolated / "root"), download=False, val_size=3, seed=1)
    assert split.train_x.shape == (17, 3, 32, 32) and split.val_x.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_all_pickle_protocols_load(isolated, protocol):
    write_cifar_dataset(isolated / "root" / "cifar10", n=2, protocol=protocol)
    ds = load_dataset("cifar10", root=str(isolated / "root"), download=False)
    assert ds.train_x.shape == (10, 3, 32, 32)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload, message", [
    (pickle.dumps({b"data": Exploit(), b"labels": []}), "forbidden global posix.system|forbidden global os.system"),
    (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [1]})[:-30], "truncated or corrupt pickle"),
    (b"garbage", "truncated or corrupt pickle"),
    (pickle.dumps([1, 2]), "expected a dict"),
    (pickle.dumps({b"data": np.zeros((2, 3000), np.uint8), b"labels": [1, 2]}), r"shape \(N, 3072\)"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}), "uint8"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "mislabelled"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 10]}), "label 10 at index 1 out of range"),
    (pickle.dumps({b"labels": [1]}), "no 'data' entry"),
])
def test_cifar_bad_batches_refused(isolated, monkeypatch, payload, message):
    directory = isolated / "root" / "cifar10"
    write_cifar_dataset(directory)
    bad = directory / "data_batch_3"
    bad.write_bytes(payload)
    monkeypatch.chdir(isolated)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("cifar10", root=str(isolated / "root"), download=False)
    assert str(bad) in str(info.value)
    assert not (isolated / "pwned").exists()


# ---------------------------------------------------------------- downloads


def gz_resources(source: Path, arrays=None) -> tuple:
    """Fake MNIST resources served from ``source`` via file:// URLs, with true sizes and MD5s."""
    arrays = arrays or {
        IDX_STEMS[0]: make_images(6), IDX_STEMS[1]: np.arange(6) % 10,
        IDX_STEMS[2]: make_images(3), IDX_STEMS[3]: np.arange(3),
    }
    resources = []
    for stem in IDX_STEMS:
        path = write_file(source / stem, idx_bytes(arrays[stem]), gz=True)
        content = path.read_bytes()
        resources.append(data._Resource(path.name, path.as_uri(), len(content), hashlib.md5(content).hexdigest()))
    return tuple(resources)


def test_download_good_checksum(isolated, monkeypatch):
    monkeypatch.setenv("DCASGD_DATA", str(isolated / "cache"))
    monkeypatch.setitem(data._RESOURCES, "mnist", gz_resources(isolated / "source"))
    ds = load_dataset("mnist")  # through the real _fetch, on file:// URLs
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_y.tolist() == [0, 1, 2]
    assert sorted(os.listdir(isolated / "cache" / "mnist")) == sorted(s + ".gz" for s in IDX_STEMS)
    assert find_dataset_dir("mnist") == isolated / "cache" / "mnist"


@pytest.mark.parametrize("field, message", [("md5", "checksum mismatch"), ("size", "expected 1 bytes .size mismatch.")])
def test_download_bad_checksum_leaves_nothing(isolated, monkeypatch, field, message):
    resources = list(gz_resources(isolated / "source"))
    resources[0] = data._Resource(**{**resources[0].__dict__, field: "0" * 32 if field == "md5" else 1})
    monkeypatch.setitem(data._RESOURCES, "mnist", tuple(resources))
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset("mnist")
    cache = isolated / "home" / ".cache" / "dcasgd" / "mnist"
    assert str(cache / resources[0].filename) in str(info.value)
    assert os.listdir(cache) == []


def test_download_network_failure_leaves_nothing(isolated, monkeypatch):
    def failing_fetch(url, dest_path):
        Path(dest_path).write_bytes(b"partial")
        raise OSError("connection reset")

    monkeypatch.setattr(data, "_fetch", failing_fetch)
    with pytest.raises(DatasetError, match="connection reset") as info:
        load_dataset("fashion-mnist", root=str(isolated / "root"))
    assert "fashion-mnist.s3-website" in str(info.value)
    assert os.listdir(isolated / "root" / "fashion-mnist") == []


def test_download_cifar_extracts_safely(isolated, monkeypatch):
    source = write_cifar_dataset(isolated / "src" / "cifar-10-batches-py", n=2)
    archive = isolated / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(isolated / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        evil = tarfile.TarInfo("../evil.txt")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
        tar.addfile(tarfile.TarInfo("readme.html"), io.BytesIO(b""))
    content = archive.read_bytes()
    resource = data._Resource("cifar-10-python.tar.gz", archive.as_uri(), len(content),
                              hashlib.md5(content).hexdigest())
    monkeypatch.setitem(data._RESOURCES, "cifar10", (resource,))
    ds = load_dataset("cifar10", root=str(isolated / "root"))
    assert ds.test_y.tolist() == source["test_batch"][b"labels"]
    assert os.listdir(isolated / "root" / "cifar10") == ["cifar-10-batches-py"]  # archive removed
    assert not (isolated / "root" / "evil.txt").exists()


def test_download_cifar_bad_checksum(isolated, monkeypatch):
    archive = isolated / "cifar.tar.gz"
    archive.write_bytes(b"not the archive")
    resource = data._Resource("cifar-10-python.tar.gz", archive.as_uri(), 15, "f" * 32)
    monkeypatch.setitem(data._RESOURCES, "cifar10", (resource,))
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_dataset("cifar10", root=str(isolated / "root"))
    assert os.listdir(isolated / "root" / "cifar10") == []


def test_official_resource_table():
    for name in ("fashion-mnist", "mnist"):
        assert [r.filename for r in data._RESOURCES[name]] == [s + ".gz" for s in IDX_STEMS]
    for resources in data._RESOURCES.values():
        for r in resources:
            assert len(r.md5) == 32 and r.size > 0 and r.url.endswith(r.filename)


# ---------------------------------------------------------------- search order


def test_not_found_offline_lists_places(isolated):
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", root=str(isolated / "root"), download=False)
    message = str(info.value)
    for place in (isolated / "root" / "fashion-mnist", isolated / "home" / ".cache" / "dcasgd" / "fashion-mnist",
                  isolated / "system" / "fashion-mnist"):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message and "DCASGD_DATA" in message


def test_cifar_batches_split_between_two_directories_are_incomplete_and_named(isolated):
    """All six batches must sit in one directory; the error names what the fuller one lacks."""
    directory = isolated / "root" / "cifar10"
    write_cifar_dataset(directory / "cifar-10-batches-py")
    (directory / "cifar-10-batches-py" / "test_batch").rename(directory / "test_batch")
    with pytest.raises(DatasetError, match=r"incomplete.*missing: cifar-10-batches-py/test_batch$"):
        find_dataset_dir("cifar10", root=str(isolated / "root"))
    (directory / "test_batch").rename(directory / "cifar-10-batches-py" / "test_batch")
    assert find_dataset_dir("cifar10", root=str(isolated / "root")) == directory


def test_search_order(isolated, monkeypatch):
    places = {"root": isolated / "root", "env": isolated / "env",
              "home": isolated / "home" / ".cache" / "dcasgd", "system": isolated / "system"}
    for base in places.values():
        write_idx_dataset(base / "mnist")
    write_idx_dataset(isolated / "incomplete" / "mnist")
    (isolated / "incomplete" / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv("DCASGD_DATA", str(places["env"]))

    assert find_dataset_dir("mnist", root=str(places["root"])) == places["root"] / "mnist"
    with pytest.raises(DatasetError, match="incomplete.*missing: t10k-labels-idx1-ubyte"):
        find_dataset_dir("mnist", root=str(isolated / "incomplete"))   # the user pointed there: no fall-through
    assert find_dataset_dir("mnist") == places["env"] / "mnist"
    monkeypatch.delenv("DCASGD_DATA")
    assert find_dataset_dir("mnist") == places["home"] / "mnist"
    (places["home"] / "mnist" / "train-images-idx3-ubyte").unlink()
    assert find_dataset_dir("mnist") == places["system"] / "mnist"
    assert find_dataset_dir("cifar10") is None and find_dataset_dir("synthetic") is None


def test_unknown_dataset():
    with pytest.raises(DatasetError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    assert DATASETS == ("fashion-mnist", "mnist", "cifar10", "synthetic")


# ---------------------------------------------------------------- validation split


def test_validation_split_disjoint_and_seeded(isolated):
    write_idx_dataset(isolated / "root" / "mnist", n_train=20)
    root = str(isolated / "root")
    ds = load_dataset("mnist", root=root, download=False, val_size=6, seed=3)
    assert len(ds.train_x) == len(ds.train_y) == 14 and len(ds.val_x) == len(ds.val_y) == 6
    # images are distinct constants; normalisation is increasing, so pixel order identifies samples
    pixels = torch.cat([ds.train_x[:, 0, 0, 0], ds.val_x[:, 0, 0, 0]])
    sample_ids = pixels.argsort().argsort()  # sample i has the i-th smallest pixel
    assert len(pixels.unique()) == 20  # disjoint, and covering all 20 samples
    assert torch.equal(torch.cat([ds.train_y, ds.val_y]), sample_ids % 10)  # labels travel with images
    assert abs(ds.train_x.mean().item()) < 1e-5 and abs(ds.train_x.std(unbiased=False).item() - 1) < 1e-4

    again = load_dataset("mnist", root=root, download=False, val_size=6, seed=3)
    assert torch.equal(again.val_x, ds.val_x)
    other = load_dataset("mnist", root=root, download=False, val_size=6, seed=4)
    assert not torch.equal(other.val_y, ds.val_y) or not torch.equal(other.train_x, ds.train_x)


@pytest.mark.parametrize("val_size", [20, 21, -1])
def test_validation_split_too_large(isolated, val_size):
    write_idx_dataset(isolated / "root" / "mnist", n_train=20)
    with pytest.raises(DatasetError, match=f"val_size={val_size}") as info:
        load_dataset("mnist", root=str(isolated / "root"), download=False, val_size=val_size)
    assert str(isolated / "root" / "mnist") in str(info.value)


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_seed_sensitive():
    a = load_dataset("synthetic", seed=7, val_size=48)
    b = load_dataset("synthetic", seed=7, val_size=48)
    c = load_dataset("synthetic", seed=8, val_size=48)
    for field in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.train_x, c.train_x) and not torch.equal(a.test_x, c.test_x)
    assert a.train_x.shape == (2000, 20) and a.val_x.shape == (48, 20) and a.test_x.shape == (512, 20)
    assert a.input_shape == (20,) and a.num_classes == 4 and a.train_y.dtype == torch.int64
    assert set(a.train_y.tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(a.train_x.mean(0), torch.zeros(20), atol=1e-5, rtol=0)


def test_synthetic_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_dataset("synthetic", synthetic_train=64, synthetic_test=16)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("dim, classes", [(20, 4), (5, 3)])
def test_synthetic_is_learnable(dim, classes):
    ds = load_dataset("synthetic", seed=0, synthetic_dim=dim, synthetic_classes=classes)
    torch.manual_seed(0)
    model = torch.nn.Linear(dim, classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(len(ds.train_x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(ds.train_x[idx]), ds.train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    error = (model(ds.test_x).argmax(1) != ds.test_y).float().mean().item()
    assert error < 0.2


# ---------------------------------------------------------------- shards


@settings(max_examples=200, deadline=None)
@given(num_samples=st.integers(0, 500), num_workers=st.integers(1, 16),
       epoch=st.integers(0, 1000), seed=st.integers(0, 2**40))
def test_shard_indices_partition(num_samples, num_workers, epoch, seed):
    shards = shard_indices(num_samples, num_workers, epoch, seed)
    assert len(shards) == num_workers
    assert all(s.dtype == torch.int64 and s.dim() == 1 for s in shards)
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(num_samples))  # disjoint + covering
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    again = shard_indices(num_samples, num_workers, epoch, seed)
    assert all(torch.equal(x, y) for x, y in zip(shards, again))
    if num_samples >= 20:
        later = shard_indices(num_samples, num_workers, epoch + 1, seed)
        assert not torch.equal(torch.cat(shards), torch.cat(later))


def test_shard_indices_rejects_bad_arguments():
    with pytest.raises(ValueError):
        shard_indices(10, 0, 0, 0)
    with pytest.raises(ValueError):
        shard_indices(-1, 2, 0, 0)


# ---------------------------------------------------------------- the real Fashion-MNIST


@pytest.mark.skipif(not REAL_FASHION.is_dir(),
                    reason=f"{REAL_FASHION} absent (install the Debian package dataset-fashion-mnist)")
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist", root=str(REAL_FASHION.parent), download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [1000] * 10
    assert abs(ds.train_x.mean().item()) < 1e-3 and abs(ds.train_x.std().item() - 1) < 1e-3
