"""The public Python API: a user's own model, data, loss and metric through dcasgd.train.

Ray versions of these tests are in test_ray_backend.py (they share its local Ray).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

import dcasgd
from dcasgd.cli import main

ROOT = Path(__file__).resolve().parent.parent


def make_regressor() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1))


def huber(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.huber_loss(output, target)


def mean_abs_error(output: torch.Tensor, target: torch.Tensor) -> float:
    """A user metric: the batch mean of |output - target|."""
    return (output - target).abs().mean().item()


def regression_data(n: int = 512, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5]])) + 0.05 * torch.randn(n, 1, generator=gen)
    return TensorDataset(x[: n * 3 // 4], y[: n * 3 // 4]), TensorDataset(x[n * 3 // 4:], y[n * 3 // 4:])


def test_a_user_regression_model_trains_and_comes_back_with_the_measured_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train, test = regression_data()
    result = dcasgd.train(make_regressor, train, eval_data=test, loss_fn=huber, metric=mean_abs_error,
                          rule="dc-asgd-a", workers=3, epochs=4, batch_size=16, lr=0.1, progress=False)
    summary = result.summary
    assert result.out is None and not list(tmp_path.iterdir())                  # out=None: nothing written
    curve = [p["test_error"] for p in summary["curve"]]
    assert curve[-1] < 0.5 * curve[0]                                             # it learned
    x, y = test.tensors
    with torch.no_grad():
        assert math.isclose(mean_abs_error(result.model(x), y), summary["final_test_error"], rel_tol=1e-6)
    assert summary["metric"] == f"{__name__}:mean_abs_error" and summary["loss"] == f"{__name__}:huber"
    assert summary["config"]["model"] == f"{__name__}:make_regressor" and summary["eval_split"] == "test"
    assert sum(r["kind"] == "update" for r in result.metrics) == summary["updates"]
    assert isinstance(result.model[0].weight, nn.Parameter)                     # an ordinary module


class PairsDataset(Dataset):
    """A plain map-style Dataset of (input, target) pairs, as a user would write one."""

    def __init__(self, n: int) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 6, dtype=torch.float64, generator=gen)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def make_classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


def test_a_plain_dataset_is_read_lazily_and_classified_with_the_default_loss_and_metric(tmp_path):
    out = tmp_path / "run"
    result = dcasgd.train(make_classifier, PairsDataset(400), eval_data=PairsDataset(100), workers=2, epochs=3,
                          batch_size=20, lr=0.2, out=str(out), progress=False)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_test_error"] == result.final_error < 20.0
    assert summary["metric"].endswith(":classification_error")
    assert (out / "metrics.jsonl").exists() and result.out == out


def test_the_same_seed_gives_the_same_bits_for_a_user_model():
    train, test = regression_data()
    runs = [dcasgd.train(make_regressor, train, eval_data=test, loss_fn=huber, workers=3, epochs=1,
                         batch_size=32, hetero_sigma=0.5, seed=7, progress=False) for _ in range(2)]
    assert runs[0].metrics == runs[1].metrics
    assert all(torch.equal(a, b) for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()))


def test_a_config_object_and_keywords_are_validated_like_the_cli():
    train, _ = regression_data()
    with pytest.raises(dcasgd.ConfigError, match="workers must be an integer >= 1"):
        dcasgd.train(make_regressor, train, loss_fn=huber, workers=0)
    with pytest.raises(dcasgd.ConfigError, match="unknown setting"):
        dcasgd.train(make_regressor, train, loss_fn=huber, worker=2)
    with pytest.raises(dcasgd.ConfigError, match="rule: unknown value 'adam'"):
        dcasgd.train(make_regressor, train, config=dcasgd.TrainConfig(rule="adam"))
    with pytest.raises(dcasgd.InputError, match="expected a torch Dataset"):
        dcasgd.train(make_regressor, [1, 2, 3], loss_fn=huber)


def test_the_cli_compare_and_presets_take_a_users_factories_by_import_path(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "task.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        def make_net():
            return nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3))

        def load():
            gen = torch.Generator().manual_seed(3)
            x = torch.randn(600, 4, generator=gen)
            y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
            return (x[:480], y[:480]), (x[480:], y[480:])
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    assert main(["train", "--model", "mypkg.task:make_net", "--dataset", "mypkg.task:load", "--workers", "2",
                 "--epochs", "1", "--batch-size", "16", "--no-progress", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["model"] == "mypkg.task:make_net" and summary["final_test_error"] < 60
    study = tmp_path / "study"
    assert main(["compare", str(study), "--model", "mypkg.task:make_net", "--dataset", "mypkg.task:load",
                 "--methods", "asgd,dc-asgd-a", "--workers-grid", "2", "--seeds", "0", "--lr-grid", "0.1",
                 "--val-size", "60", "--epochs", "0.5", "--batch-size", "16", "--lam0-grid", ""]) == 0
    finals = sorted(str(p.parent.relative_to(study / "final")) for p in (study / "final").glob("*/*/summary.json"))
    assert finals == ["homogeneous-tuned-mom0/asgd-M2-s0", "homogeneous-tuned-mom0/dc-asgd-a-M2-s0"]
    preset = tmp_path / "mine.toml"
    preset.write_text('model = "mypkg.task:make_net"\ndataset = "mypkg.task:load"\nworkers = 2\nepochs = 0.5\n'
                      'batch_size = 16\nloss = "cross-entropy"\nmetric = "error"\n')
    assert main(["train", "--config", str(preset), "--no-progress", "--out", str(tmp_path / "viaconfig")]) == 0
    assert main(["train", "--model", "mypkg.task:nothing", "--dataset", "mypkg.task:load",
                 "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def run_example(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          timeout=600)


def test_the_regression_example_runs_and_is_the_readme_s_example():
    result = run_example("regression.py", "--epochs", "3", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "test mean absolute error" in result.stdout
    code = (ROOT / "examples" / "regression.py").read_text()
    assert code in (ROOT / "README.md").read_text()


def test_the_highway_example_runs_on_the_simulator():
    result = run_example("highway_fmnist.py", "--epochs", "0.05", "--workers", "2", "--layers", "2")
    assert result.returncode == 0, result.stderr
    assert "highway network, 2 layers, 2 workers on sim: test error" in result.stdout
