"""A highway network (Srivastava, Greff and Schmidhuber, 2015) on Fashion-MNIST, trained with DC-ASGD.

    python examples/highway_fmnist.py [--backend sim|ray] [--epochs E] [--workers M] [--layers L]

Each highway layer computes ``y = H(x) * T(x) + x * (1 - T(x))`` with
``H(x) = relu(W_H x + b_H)`` and the transform gate ``T(x) = sigmoid(W_T x +
b_T)``; ``b_T`` starts at -2 so every layer first carries its input through,
as the paper recommends.  The model is yours; the data set is dcasgd's
built-in ``fashion-mnist``.  ``--backend ray`` runs the same job on Ray
workers in real processes.
"""

import argparse

import torch
from torch import nn

import dcasgd


class Highway(nn.Module):
    """One gated layer of width d: y = H(x) * T(x) + x * (1 - T(x))."""

    def __init__(self, d: int, gate_bias: float = -2.0) -> None:
        super().__init__()
        self.h = nn.Linear(d, d)
        self.t = nn.Linear(d, d)
        nn.init.constant_(self.t.bias, gate_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.t(x))
        return torch.relu(self.h(x)) * gate + x * (1 - gate)


class HighwayNet(nn.Module):
    """Flatten -> Linear(784, d) -> ReLU -> L highway layers -> Linear(d, 10)."""

    def __init__(self, layers: int = 4, d: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, d), nn.ReLU())
        self.body = nn.Sequential(*[Highway(d) for _ in range(layers)])
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sim", "ray"], default="sim")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    def make_net() -> nn.Module:
        return HighwayNet(layers=args.layers)

    result = dcasgd.train(make_net, "fashion-mnist", rule="dc-asgd-a", workers=args.workers, epochs=args.epochs,
                          lr=0.05, backend=args.backend, progress=False)
    print(f"highway network, {args.layers} layers, {args.workers} workers on {args.backend}: test error "
          f"{result.final_error:.2f}% after {result.summary['updates']} updates "
          f"(mean staleness {result.summary['mean_staleness']:.2f})")


if __name__ == "__main__":
    main()
