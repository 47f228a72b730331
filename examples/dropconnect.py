"""DropConnect (Wan, Zeiler, Zhang, LeCun and Fergus, ICML 2013) on Fashion-MNIST, trained with DC-ASGD.

    python examples/dropconnect.py [--backend sim|ray] [--epochs E] [--workers M] [--p P]

Dropout zeroes activations; DropConnect zeroes weights.  A DropConnect layer computes::

    training:  y = x (M * W)^T + b,   M_ij ~ Bernoulli(1 - p), one mask per mini-batch
    testing:   y = x ((1 - p) W)^T + b = E_M[x (M * W)^T] + b

(the paper draws a mask per example and, at test time, moment-matches a Gaussian before the
non-linearity; one mask per batch and the mean of the mask are the usual cheap forms).  The
masks come from torch's global generator, which dcasgd seeds for every gradient from
(run seed, worker, gradient number), exactly as it does for dropout: the same seed draws the
same masks, so a run is reproducible bit for bit, and a simulated worker's gradient at its
stale weights uses the mask it would have used on a real cluster.

The script first checks the test-time rule on the layer alone (the mean of many masked
outputs is the test-time output), then trains an MLP whose middle layer is a DropConnect
layer, with the built-in Fashion-MNIST.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import dcasgd


class DropConnectLinear(nn.Linear):
    """A linear layer whose weights are each kept with probability 1 - p while training."""

    def __init__(self, in_features: int, out_features: int, p: float = 0.5) -> None:
        super().__init__(in_features, out_features)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mask = torch.bernoulli(torch.full_like(self.weight, 1 - self.p))   # seeded per gradient by dcasgd
            return F.linear(x, self.weight * mask, self.bias)
        return F.linear(x, self.weight * (1 - self.p), self.bias)


def make_net(p: float) -> nn.Module:
    """Flatten -> Linear(784, 256) -> ReLU -> DropConnect(256, 256) -> ReLU -> Linear(256, 10)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 256), nn.ReLU(), DropConnectLinear(256, 256, p), nn.ReLU(),
                         nn.Linear(256, 10))


def expectation_gap(p: float, draws: int = 4000) -> float:
    """max |mean over ``draws`` masks of the training output - the test output| / max |test output|."""
    gen = torch.Generator().manual_seed(0)
    layer = DropConnectLinear(16, 4, p)
    x = torch.randn(3, 16, generator=gen)
    with torch.no_grad():
        layer.train()
        mean = torch.stack([layer(x) for _ in range(draws)]).mean(0)
        layer.eval()
        test = layer(x)
    return float((mean - test).abs().max() / test.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sim", "ray"], default="sim")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--p", type=float, default=0.5, help="probability of dropping a weight")
    args = parser.parse_args()

    torch.manual_seed(0)
    print(f"test-time rule: the mean of 4000 masked outputs is the test-time output within "
          f"{100 * expectation_gap(args.p):.1f}% of its size")

    def factory() -> nn.Module:
        return make_net(args.p)

    result = dcasgd.train(factory, "fashion-mnist", rule="dc-asgd-a", workers=args.workers, epochs=args.epochs,
                          lr=0.05, backend=args.backend, progress=False)
    print(f"dropconnect (p = {args.p}), {args.workers} workers on {args.backend}: test error "
          f"{result.final_error:.4f}% after {result.summary['updates']} updates "
          f"(mean staleness {result.summary['mean_staleness']:.2f})")


if __name__ == "__main__":
    main()
