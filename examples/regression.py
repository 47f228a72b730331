"""Your own model on your own data: regression of y = sin(3x) + noise with a small MLP.

    python examples/regression.py [--backend sim|ray] [--epochs E] [--workers M]

The data is a TensorDataset made here, the loss mean squared error, the
metric mean absolute error: nothing of dcasgd's built-in models or data sets.
"""

import argparse
import math

import torch
from torch import nn
from torch.utils.data import TensorDataset

import dcasgd


def make_net() -> nn.Module:
    """A model factory: every worker builds its own copy (the run seeds torch first)."""
    return nn.Sequential(nn.Linear(1, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


def mean_absolute_error(output: torch.Tensor, target: torch.Tensor) -> float:
    """The evaluation metric: a mean over the batch, lower is better."""
    return (output - target).abs().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sim", "ray"], default="sim")
    parser.add_argument("--epochs", type=float, default=30)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2048, 1, generator=gen) * 4 - 2
    y = torch.sin(3 * x) + 0.1 * torch.randn(2048, 1, generator=gen)
    train, test = TensorDataset(x[:1536], y[:1536]), TensorDataset(x[1536:], y[1536:])

    result = dcasgd.train(make_net, train, eval_data=test, loss_fn=nn.functional.mse_loss,
                          metric=mean_absolute_error, rule="dc-asgd-a", workers=args.workers,
                          epochs=args.epochs, batch_size=32, lr=0.05, lr_schedule="constant",
                          backend=args.backend, progress=False)
    print(f"test mean absolute error {result.final_error:.4f} after {result.summary['updates']} updates "
          f"(mean staleness {result.summary['mean_staleness']:.2f})")
    with torch.no_grad():
        print(f"at x = 0.5 the trained model says {result.model(torch.tensor([[0.5]])).item():.3f}, "
              f"sin(1.5) = {math.sin(1.5):.3f}")


if __name__ == "__main__":
    main()
