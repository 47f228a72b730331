"""The data path (compute/batches.py): lazy sharded reading, seeded transforms, step_fn / eval_fn, augmentation.

The Ray tests at the end share one local Ray (the local_ray fixture starts it for this module).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import dcasgd
from dcasgd.backends.sim import run_sim
from dcasgd.cli import main
from dcasgd.compute.augment import CropFlip, make_augment
from dcasgd.compute.batches import BatchReader, DatasetSource, LoaderPool, eval_batches
from dcasgd.compute.data import load_dataset, shard_indices, validation_indices
from dcasgd.compute.task import builtin_source
from dcasgd.compute.worker import BatchStream
from dcasgd.config import ConfigError, TrainConfig
from dcasgd.presets import load_preset

from test_data import write_cifar_dataset

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- a user's data, as a user writes it


class Squares(Dataset):
    """Images (1, 8, 8) whose every pixel is the sample's index: an item says which sample it is."""

    def __init__(self, n: int = 96) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.full((1, 8, 8), float(i)), i % 3


SEEN: list[tuple[int, int, int, bool]] = []      # (sample, dy, dx, flipped): what random_crop did, in order


def random_crop(image: torch.Tensor) -> torch.Tensor:
    """A torchvision-style transform: pad 2, crop 8x8 at a random place, flip half the time (global RNG)."""
    dy, dx = (int(v) for v in torch.randint(0, 5, (2,)))
    flip = bool(torch.rand(()) < 0.5)
    out = F.pad(image, (2, 2, 2, 2))[:, dy:dy + 8, dx:dx + 8]
    SEEN.append((int(image[0, 0, 0]), dy, dx, flip))
    return out.flip(-1) if flip else out


def make_tiny() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 3))


def train_squares(**kw):
    settings = dict(workers=3, epochs=2, batch_size=8, lr=0.01, seed=5, progress=False)
    settings.update(kw)
    return dcasgd.train(make_tiny, Squares(), eval_data=Squares(12), **settings)


def test_a_transform_crops_each_epoch_afresh_and_a_seed_repeats_the_crops():
    SEEN.clear()
    first = train_squares(transform=random_crop)
    crops = list(SEEN)
    SEEN.clear()
    second = train_squares(transform=random_crop)
    assert SEEN == crops and first.metrics == second.metrics          # one seed: the same crops, the same bits
    assert [c[0] for c in crops[:2]] == [0, 1]                        # the first-batch check, before training
    by_sample: dict[int, list[tuple[int, int, bool]]] = {}
    for sample, *crop in crops[2:]:
        by_sample.setdefault(sample, []).append(tuple(crop))
    training = [i for i in range(96)]
    assert sorted(by_sample) == training and all(len(v) == 2 for v in by_sample.values())   # once per epoch
    differ = sum(a != b for a, b in by_sample.values())
    assert differ >= 0.9 * len(training)                              # 50 crops x 2 flips: rarely the same
    SEEN.clear()
    train_squares(transform=random_crop, seed=6)
    assert SEEN != crops                                              # another seed, other crops


def test_loader_processes_build_the_same_batches_so_the_run_has_the_same_bits():
    alone = train_squares(transform=random_crop, epochs=1)
    ahead = train_squares(transform=random_crop, epochs=1, loader_workers=2)
    assert alone.metrics == ahead.metrics and alone.summary["data_path"] == "lazy"
    assert ahead.summary["config"]["loader_workers"] == 2 and ahead.summary["config"]["transform"].endswith(
        ":random_crop")


def test_a_reader_with_a_pool_hands_out_the_stream_s_batches_and_restarts_where_a_restored_stream_stands():
    source = DatasetSource(Squares(40), transform=random_crop)
    pool = LoaderPool(source, 2)
    try:
        plain = BatchReader(BatchStream(40, 1, 2, 6, seed=3), source, 3)
        ahead = BatchReader(BatchStream(40, 1, 2, 6, seed=3), source, 3, pool, depth=3)
        for _ in range(5):
            a, b = plain.build(plain.draw()), ahead.build(ahead.draw())
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        saved = plain.stream.state_dict()
        later = [plain.build(plain.draw()) for _ in range(3)]
        ahead.stream.load_state_dict(saved)                        # a resume: the stream goes back two draws
        again = [ahead.build(ahead.draw()) for _ in range(3)]
        assert all(torch.equal(x[0], y[0]) for x, y in zip(later, again))
    finally:
        pool.close()


def test_the_batch_number_counts_draws_across_epochs():
    for n, workers, batch in ((10, 3, 2), (17, 2, 4), (5, 5, 3)):
        stream = BatchStream(n, workers - 1, workers, batch, seed=1)
        for k in range(25):
            assert stream.drawn == k
            stream.next()
        twin = stream.copy()
        assert torch.equal(twin.next(), stream.next()) and twin.drawn == stream.drawn


class Counting(Squares):
    """Squares that log every index read, in order, to a list (the simulator runs in this process)."""

    def __init__(self, n: int, log: list[int]) -> None:
        super().__init__(n)
        self.log = log

    def __getitem__(self, i: int):
        self.log.append(i)
        return super().__getitem__(i)


def test_a_lazy_dataset_is_read_batch_by_batch_with_the_tensor_path_s_bits():
    reads: list[int] = []
    data = Counting(96, reads)
    x = torch.stack([data[i][0] for i in range(96)])
    y = torch.tensor([data[i][1] for i in range(96)])
    reads.clear()
    settings = dict(workers=3, epochs=1.5, batch_size=8, lr=0.05, seed=2, val_size=16, eval_split="val",
                    progress=False)
    lazy = dcasgd.train(make_tiny, data, **settings)
    tensors = dcasgd.train(make_tiny, (x, y), **settings)
    assert lazy.metrics == tensors.metrics and lazy.summary["data_path"] == "lazy"
    trained = round(lazy.summary["epochs_done"] * 80)                # every sample of every gradient, once
    evaluations = sum(r["kind"] == "eval" for r in lazy.metrics)
    assert trained >= 120 and len(reads) == 2 + 2 + trained + 16 * evaluations   # (+ a first batch of each set)
    kept, held_out = validation_indices(96, 16, seed=2, where="test")
    assert reads[4:20] == held_out.tolist()                           # the evaluation at epoch 0, then training:
    first = kept[shard_indices(80, 3, epoch=0, seed=2)[0][:8]]        # worker 0's first batch of its own shard
    assert reads[20:28] == first.tolist()


class DictItems(Dataset):
    """Items {"features": (6,), "label": ()}: a batch is a dict, as a Hugging Face model's inputs are."""

    def __init__(self, n: int, seed: int = 1) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 6, generator=gen)
        self.y = (self.x[:, 0] + self.x[:, 1] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return {"features": self.x[i], "label": self.y[i]}


def make_classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def dict_step(model: nn.Module, batch: dict) -> torch.Tensor:
    return F.cross_entropy(model(batch["features"]), batch["label"])


def dict_errors(model: nn.Module, batch: dict) -> tuple[float, int]:
    return 100.0 * float((model(batch["features"]).argmax(1) != batch["label"]).sum()), len(batch["label"])


def check_dict_run(result, train: DictItems, test: DictItems, updates: int) -> None:
    summary = result.summary
    assert summary["updates"] == updates and summary["data_path"] == "lazy"
    assert summary["loss"].endswith(":dict_step") and summary["metric"].endswith(":dict_errors")
    assert summary["curve"][-1]["test_error"] < 0.5 * summary["curve"][0]["test_error"]
    with torch.no_grad():
        wrong = int((result.model(test.x).argmax(1) != test.y).sum())
    assert math.isclose(100.0 * wrong / len(test), summary["final_test_error"], rel_tol=1e-12)   # eval_fn's mean
    assert all(r.get("test_loss") is None for r in result.metrics if r["kind"] == "eval")


def test_a_dict_batch_model_trains_with_a_step_fn_and_an_eval_fn_on_the_simulator():
    train, test = DictItems(320), DictItems(101, seed=2)         # 101: unequal evaluation batches
    result = dcasgd.train(make_classifier, train, eval_data=test, step_fn=dict_step, eval_fn=dict_errors, workers=2,
                          epochs=3, batch_size=16, lr=0.1, progress=False)
    check_dict_run(result, train, test, 3 * 320 // 16)


def test_eval_fn_means_are_exact_over_unequal_batches():
    data = DictItems(2500)                                        # two evaluation batches: 2000 and 500
    batches = list(eval_batches(data, None, seed=0))
    assert [len(b["label"]) for b in batches] == [2000, 500]
    from dcasgd.compute.flat import FlatModel
    from dcasgd.compute.worker import evaluate_batches
    flat = FlatModel(make_classifier())
    error, loss = evaluate_batches(flat, flat.params.clone(), flat.buffers.clone(), batches, eval_fn=dict_errors)
    with torch.no_grad():
        wrong = (flat.module(data.x).argmax(1) != data.y).sum().item()
    assert loss is None and math.isclose(error, 100.0 * wrong / 2500, rel_tol=1e-12)


def test_a_batch_that_is_not_a_pair_needs_a_step_fn_and_a_bad_step_is_named():
    with pytest.raises(dcasgd.InputError, match=r"a batch is a dict with keys \['features', 'label'\], not an \(input, target\) pair.*pass step_fn"):
        dcasgd.train(make_classifier, DictItems(64), workers=2, epochs=1, progress=False)
    with pytest.raises(dcasgd.InputError, match="pass eval_fn"):
        dcasgd.train(make_classifier, DictItems(64), step_fn=dict_step, workers=2, epochs=1, progress=False)
    with pytest.raises(dcasgd.InputError, match="must return the batch's loss as a one-element tensor"):
        dcasgd.train(make_classifier, DictItems(64), step_fn=lambda model, batch: 1.0, eval_fn=dict_errors,
                     workers=2, epochs=1, progress=False)
    with pytest.raises(ConfigError, match="the compensation probe .* cannot use a step"):
        dcasgd.train(make_classifier, DictItems(64), step_fn=dict_step, eval_fn=dict_errors, probe_every=2)


def test_a_dataloader_as_data_is_refused_with_one_line_saying_what_to_pass(tmp_path):
    loader = DataLoader(DictItems(64), batch_size=8)
    with pytest.raises(dcasgd.InputError) as caught:
        dcasgd.train(make_classifier, loader, step_fn=dict_step, workers=2)
    message = str(caught.value)
    assert "\n" not in message and "DataLoader" in message and "loader.dataset" in message and "collate_fn" in message
    (tmp_path / "loaders_mod.py").write_text(textwrap.dedent('''
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        def load():
            data = TensorDataset(torch.randn(32, 4), torch.randint(2, (32,)))
            return DataLoader(data, batch_size=4), DataLoader(data, batch_size=4)
    '''))
    result = subprocess.run([sys.executable, "-m", "dcasgd", "train", "--dataset", "loaders_mod:load",
                             "--out", str(tmp_path / "out"), "--no-progress"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{tmp_path}"})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "a DataLoader cannot be used" in lines[0], lines
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the command line, compare and presets


def test_the_command_line_and_compare_take_step_eval_collate_and_transform_import_paths(tmp_path, monkeypatch):
    (tmp_path / "mytext.py").write_text(textwrap.dedent('''
        import torch
        from torch.nn import functional as F
        from torch.utils.data import Dataset

        class Lengths(Dataset):
            """Sequences of 2..6 ones and zeros; the label: more ones than zeros."""
            def __init__(self, n, seed):
                g = torch.Generator().manual_seed(seed)
                self.seqs = [torch.randint(2, (int(torch.randint(2, 7, (), generator=g)),), generator=g)
                             for _ in range(n)]
            def __len__(self):
                return len(self.seqs)
            def __getitem__(self, i):
                s = self.seqs[i]
                return {"tokens": s, "label": int(2 * s.sum() > len(s))}

        def load():
            return Lengths(240, 0), Lengths(60, 1)

        def pad(items):
            tokens = torch.nn.utils.rnn.pad_sequence([it["tokens"] for it in items], batch_first=True,
                                                     padding_value=2)
            return {"tokens": tokens, "label": torch.tensor([it["label"] for it in items])}

        class Bag(torch.nn.Module):
            """Mean of the token embeddings, then a linear layer (padding tokens included)."""
            def __init__(self):
                super().__init__()
                self.embed = torch.nn.Embedding(3, 8)
                self.out = torch.nn.Linear(8, 2)
            def forward(self, tokens):
                return self.out(self.embed(tokens).mean(1))

        def make_net():
            return Bag()

        def step(model, batch):
            return F.cross_entropy(model(batch["tokens"]), batch["label"])

        def errors(model, batch):
            return 100.0 * float((model(batch["tokens"]).argmax(1) != batch["label"]).sum()), len(batch["label"])

        def reverse(item):
            """Reverse the sequence half the time (the label, a count, does not change)."""
            tokens = item["tokens"].flip(0) if torch.rand(()) < 0.5 else item["tokens"]
            return {"tokens": tokens, "label": item["label"]}
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    paths = ["--dataset", "mytext:load", "--model", "mytext:make_net", "--step", "mytext:step", "--eval",
             "mytext:errors", "--collate", "mytext:pad", "--transform", "mytext:reverse"]
    run = tmp_path / "run"
    assert main(["train", *paths, "--workers", "2", "--epochs", "2", "--batch-size", "12", "--no-progress",
                 "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["step"] == "mytext:step" and summary["config"]["collate"] == "mytext:pad"
    assert summary["data_path"] == "lazy" and summary["metric"] == "mytext:errors"
    preset = tmp_path / "mine.toml"
    preset.write_text("\n".join(f'{k[2:]} = "{v}"' for k, v in zip(paths[::2], paths[1::2])) +
                      '\nworkers = 2\nepochs = 0.5\nbatch_size = 12\nloader_workers = 1\n')
    assert main(["train", "--config", str(preset), "--no-progress", "--out", str(tmp_path / "viaconfig")]) == 0
    assert json.loads((tmp_path / "viaconfig" / "summary.json").read_text())["config"]["loader_workers"] == 1
    study = tmp_path / "study"
    assert main(["compare", str(study), *paths, "--methods", "dc-asgd-a", "--workers-grid", "2", "--seeds", "0",
                 "--lr-grid", "0.1", "--val-size", "40", "--epochs", "0.5", "--batch-size", "12",
                 "--lam0-grid", ""]) == 0
    final = json.loads(next((study / "final").glob("*/*/summary.json")).read_text())
    assert final["config"]["eval"] == "mytext:errors" and final["data_path"] == "lazy"


# ---------------------------------------------------------------- built-in augmentation


def reference_crop_flip(x: torch.Tensor, fill: torch.Tensor, seed: int) -> torch.Tensor:
    """The recipe one image at a time: pad with fill, slice the crop, reverse its columns if drawn."""
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = x.shape
    corner = torch.randint(0, 9, (2, b), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    out = []
    for i in range(b):
        padded = fill.view(c, 1, 1).expand(c, h + 8, w + 8).clone()
        padded[:, 4:4 + h, 4:4 + w] = x[i]
        crop = padded[:, corner[0, i]:corner[0, i] + h, corner[1, i]:corner[1, i] + w]
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.stack(out)


def test_crop_flip_pads_with_black_crops_and_flips_as_the_recipe_says():
    x = torch.randn(16, 3, 6, 5)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    augment = make_augment("crop-flip", (mean, std))
    got = augment(x, torch.Generator().manual_seed(11))
    assert torch.equal(got, reference_crop_flip(x, (-mean / std).flatten(), 11))
    assert make_augment("none") is None and isinstance(augment, CropFlip)


def fake_cifar(root: Path) -> str:
    write_cifar_dataset(root / "cifar10", n=16)                  # 80 training images, 16 test images
    return str(root)


def cifar_config(out: Path, root: str, **kw) -> TrainConfig:
    settings = {**load_preset("cifar10-resnet20-paper"), "model": "mlp", "epochs": 2, "batch_size": 8, "lr": 0.05,
                "lr_milestones": (1.0,), "eval_every": 0.5, "workers": 3, "data_root": root, "out": str(out),
                "progress": False}
    settings.update(kw)
    return TrainConfig(**settings)


def test_the_cifar_preset_augments_and_the_summary_records_it(tmp_path):
    root = fake_cifar(tmp_path / "data")
    assert load_preset("cifar10-resnet20-paper")["augment"] == "crop-flip"
    augmented = run_sim(cifar_config(tmp_path / "a", root))
    plain = run_sim(cifar_config(tmp_path / "b", root, augment="none"))
    assert augmented.summary["config"]["augment"] == "crop-flip" and plain.summary["config"]["augment"] == "none"
    assert (tmp_path / "a" / "metrics.jsonl").read_bytes() != (tmp_path / "b" / "metrics.jsonl").read_bytes()
    with pytest.raises(dcasgd.InputError, match="crop-flip' works on image tensors"):
        run_sim(TrainConfig(dataset="synthetic", augment="crop-flip", out=None, progress=False))


def shifted(image: torch.Tensor) -> torch.Tensor:
    """A lazy-path transform for the resume test: a random roll (global RNG) and noise (numpy)."""
    image = torch.roll(image, int(torch.randint(-2, 3, ())), dims=-1)
    return image + torch.from_numpy(np.random.normal(0, 0.1, image.shape).astype(np.float32))


@pytest.mark.parametrize("extra", [dict(augment="crop-flip"), dict(transform="test_data_path:shifted", augment="none"),
                                   dict(transform="test_data_path:shifted", augment="none", loader_workers=2)])
def test_a_stopped_and_resumed_augmented_run_has_the_bits_of_an_uninterrupted_one(tmp_path, extra):
    root = fake_cifar(tmp_path / "data")
    whole = run_sim(cifar_config(tmp_path / "whole", root, **extra))
    reference = (tmp_path / "whole" / "metrics.jsonl").read_bytes()
    stop = whole.summary["updates"] // 2 + 1
    out = tmp_path / "part"
    run_sim(cifar_config(out, root, stop_after_updates=stop, **extra))
    resumed = run_sim(cifar_config(out, root, resume=str(out), **extra))
    assert torch.equal(resumed.weights, whole.weights)
    assert (out / "metrics.jsonl").read_bytes() == reference


def test_a_checkpoint_from_before_the_data_path_settings_resumes_as_their_defaults(tmp_path):
    from dcasgd.engine.resume import check_resumable
    from dcasgd.io.checkpoint import CheckpointError
    cfg = TrainConfig(dataset="synthetic", out=str(tmp_path))
    older = {k: v for k, v in cfg.to_dict().items()
             if k not in ("step", "eval", "transform", "collate", "augment", "loader_workers")}
    check_resumable(older, cfg, tmp_path / "ckpt.pt")                  # recorded before they existed: defaults
    with pytest.raises(CheckpointError, match="augment: checkpoint 'none' vs now 'crop-flip'"):
        check_resumable(older, TrainConfig(dataset="synthetic", augment="crop-flip"), tmp_path / "ckpt.pt")


def test_the_compensation_probe_measures_a_lazy_dataset_s_batches():
    result = train_squares(transform=random_crop, epochs=1, probe_every=3)
    probes = [r for r in result.metrics if r["kind"] == "probe"]
    assert len(probes) == result.summary["updates"] // 3 and result.summary["probe"]["count"] == len(probes)
    assert all(math.isfinite(r["relerr_delayed"]) for r in probes if r["staleness"] > 0)


def test_a_worker_s_uint8_copy_of_a_built_in_data_set_gives_the_driver_s_float_rows(tmp_path):
    root = fake_cifar(tmp_path / "data")
    data = load_dataset("cifar10", val_size=10, seed=4, root=root)
    source = builtin_source("cifar10", 10, 4, root, data.norm, "none")
    assert source.x.dtype == torch.uint8 and len(source) == data.num_train == 70
    idx = torch.tensor([5, 0, 69, 33])
    x, y = source.build(idx, key=0)
    assert torch.equal(x, data.train_x[idx]) and torch.equal(y, data.train_y[idx])


# ---------------------------------------------------------------- examples (small)


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          timeout=600)


def test_the_char_transformer_example_trains_a_language_model_on_dict_batches():
    result = run_example("char_transformer.py", "--epochs", "0.3", "--workers", "2", "--chars", "6000")
    assert result.returncode == 0, result.stderr
    assert "perplexity" in result.stdout and "char transformer, 2 workers on sim" in result.stdout


def test_the_augmented_fmnist_example_shows_fresh_crops_per_epoch_that_a_seed_repeats():
    result = run_example("augmented_fmnist.py", "--epochs", "0.02", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "epochs 0 and 1 differ: True" in result.stdout and "same seed, same crops: True" in result.stdout


def test_the_dropconnect_example_runs_and_a_second_run_prints_the_same_bits():
    runs = [run_example("dropconnect.py", "--epochs", "0.02", "--workers", "2") for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert "dropconnect" in runs[0].stdout and runs[0].stdout == runs[1].stdout


@pytest.mark.ray
@pytest.mark.parametrize("script, args, says", [
    ("char_transformer.py", ("--chars", "6000", "--epochs", "0.5"), "char transformer, 2 workers on ray"),
    ("augmented_fmnist.py", ("--epochs", "0.02"), "augmented Fashion-MNIST, 2 workers on ray"),
    ("dropconnect.py", ("--epochs", "0.02"), "dropconnect (p = 0.5), 2 workers on ray"),
])
def test_the_examples_run_on_ray(script, args, says):
    result = run_example(script, "--backend", "ray", "--workers", "2", *args)      # each starts its own local Ray
    assert result.returncode == 0, result.stderr
    assert says in result.stdout


# ---------------------------------------------------------------- Ray


class Memmapped(Dataset):
    """100k rows of a memory-mapped array on disk; every read is logged to ``<log_dir>/<pid>`` (in order).

    Pickles as its paths only: a worker opens the map itself, on first read.
    """

    def __init__(self, path: Path, log_dir: Path, n: int) -> None:
        self.path, self.log_dir, self.n = str(path), str(log_dir), n
        self.rows = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self) -> dict:
        return {**self.__dict__, "rows": None}

    def __getitem__(self, i: int):
        if self.rows is None:
            self.rows = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.n, 4))
        with open(os.path.join(self.log_dir, str(os.getpid())), "a") as log:
            log.write(f"{i}\n")
        row = torch.from_numpy(np.array(self.rows[i]))
        return row, int(row[0] > 0)


def make_row_classifier() -> nn.Module:
    return nn.Linear(4, 2)


@pytest.mark.ray
def test_on_ray_each_worker_reads_only_its_own_shard_lazily(local_ray, tmp_path):
    from ray import cloudpickle
    n = 100_000
    path = tmp_path / "rows.f32"
    np.random.default_rng(0).standard_normal((n, 4), dtype=np.float32).tofile(path)
    logs = tmp_path / "reads"
    logs.mkdir()
    data = Memmapped(path, logs, n)
    assert len(cloudpickle.dumps(data)) < 1000                          # what travels: paths, not rows
    test = TensorDataset(torch.randn(50, 4), torch.randint(2, (50,)))
    result = dcasgd.train(make_row_classifier, data, eval_data=test, backend="ray", workers=2, epochs=0.004,
                          batch_size=50, lr=0.1, seed=7, progress=False)
    pushes = result.summary["pushes_per_worker"]
    reads = {int(p.name): [int(v) for v in p.read_text().split()] for p in logs.iterdir()}
    assert reads.pop(os.getpid()) == [0, 1]                              # the driver: a first-batch check only
    shards = shard_indices(n, 2, epoch=0, seed=7)
    assert len(reads) == 2
    for seq in reads.values():
        m = 0 if seq[0] in set(shards[0][:50].tolist()) else 1
        assert seq == shards[m][:len(seq)].tolist()                      # its own shard, in its order
        assert pushes[m] * 50 <= len(seq) <= (pushes[m] + 1) * 50        # what it trained on, and no more
    assert sum(map(len, reads.values())) < n / 100


@pytest.mark.ray
def test_a_dict_batch_model_trains_with_a_step_fn_on_ray(local_ray):
    train, test = DictItems(320), DictItems(101, seed=2)
    result = dcasgd.train(make_classifier, train, eval_data=test, step_fn=dict_step, eval_fn=dict_errors, workers=2,
                          epochs=3, batch_size=16, lr=0.1, backend="ray", loader_workers=1, progress=False)
    check_dict_run(result, train, test, 3 * 320 // 16)
    assert result.summary["backend"] == "ray"
