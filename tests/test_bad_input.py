"""Every bad input named in the reliability issue: one clear message, exit status 2, nothing written or changed."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from test_data import write_idx_dataset


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "dcasgd", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def tree_digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def check_refused(tmp_path, args, message):
    out = tmp_path / "out"
    result = run_cli("train", "--out", str(out), "--no-progress", *args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith(("dcasgd: error:", "usage:")), result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (out / "summary.json").exists() and not (out / "metrics.jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["--rule", "adagrad"], "invalid choice"),
    (["--consistency", "bsp"], "unknown consistency"),
    (["--model", "vgg16"], "model: unknown value 'vgg16'"),
    (["--dataset", "imagenet"], "dataset: unknown value 'imagenet'"),
    (["--workers", "-2"], "workers must be an integer >= 1"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1"),
    (["--epochs", "0"], "epochs must be a finite number > 0"),
    (["--lr", "-0.1"], "lr must be a finite number > 0"),
    (["--consistency", "ssp:"], "ssp needs a staleness bound"),
    (["--consistency", "ssp:two"], "must be an integer"),
    (["--servers", "0"], "servers must be an integer >= 1"),
])
def test_bad_flags(tmp_path, args, message):
    check_refused(tmp_path, ["--dataset", "synthetic", *args] if "--dataset" not in args else args, message)


def test_more_servers_than_parameters(tmp_path):
    check_refused(tmp_path, ["--dataset", "synthetic", "--backend", "ray", "--servers", "10000000"],
                  "server shards for")


@pytest.mark.parametrize("damage, message", [
    ("missing", "incomplete"),
    ("truncated", "truncated"),
    ("mislabelled", "label"),
])
def test_bad_dataset_directory(tmp_path, damage, message):
    root = tmp_path / "data"
    directory = root / "mnist"
    write_idx_dataset(directory, gz=(False, False, False, False))
    if damage == "missing":
        (directory / "t10k-labels-idx1-ubyte").unlink()
    elif damage == "truncated":
        path = directory / "train-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path = directory / "train-labels-idx1-ubyte"
        blob = bytearray(path.read_bytes())
        blob[-1] = 42                                   # a label outside 0..9
        path.write_bytes(bytes(blob))
    before = tree_digest(root)
    check_refused(tmp_path, ["--dataset", "mnist", "--data-root", str(root), "--workers", "2"], message)
    assert tree_digest(root) == before


@pytest.mark.parametrize("content, message", [
    (b"", "no loadable checkpoint"),
    (b"garbage that is not a checkpoint", "no loadable checkpoint"),
])
def test_unreadable_or_foreign_checkpoint(tmp_path, content, message):
    run_dir = tmp_path / "old"
    (run_dir / "checkpoints").mkdir(parents=True)
    if content:
        (run_dir / "checkpoints" / "ckpt-000000005.pt").write_bytes(content)
    before = tree_digest(run_dir)
    check_refused(tmp_path, ["--resume", str(run_dir)], message)
    assert tree_digest(run_dir) == before


@pytest.mark.parametrize("change, message", [
    (["--model", "cnn"], "model: checkpoint 'mlp'"),
    (["--rule", "sgd"], "rule: checkpoint 'dc-asgd-a'"),
])
def test_checkpoint_from_a_different_model_or_rule(tmp_path, change, message):
    root = tmp_path / "data"
    write_idx_dataset(root / "mnist", n_train=64, n_test=16)        # images, so mlp and cnn both fit
    run_dir = tmp_path / "old"
    first = run_cli("train", "--dataset", "mnist", "--data-root", str(root), "--model", "mlp", "--workers", "2",
                    "--epochs", "1", "--batch-size", "8", "--stop-after-updates", "5", "--out", str(run_dir),
                    "--no-progress")
    assert first.returncode == 0, first.stderr
    before = tree_digest(run_dir)
    check_refused(tmp_path, ["--resume", str(run_dir), *change], message)
    assert tree_digest(run_dir) == before
