"""Random crop and flip on Fashion-MNIST through ``transform``: fresh crops every epoch, the same ones for a seed.

    python examples/augmented_fmnist.py [--backend sim|ray] [--epochs E] [--workers M] [--loader-workers K]

``random_crop_flip`` is an ordinary torchvision-style transform of one image: it pads the
(1, 28, 28) image by 4 pixels of its background, crops 28 x 28 at a random place and flips it
horizontally half the time, drawing from torch's global generator.  dcasgd seeds that
generator (and ``random``, ``numpy.random``) for every batch from (run seed, worker, batch
number), so:

- each epoch crops a sample anew (its batch number differs), and
- a run with the same seed sees exactly the same crops, on the simulator or on Ray, with or
  without ``--loader-workers`` processes building the batches ahead.

Before training, the script shows both with :func:`dcasgd.worker_batches` (the batches a
worker reads, built as in the run): a sample's crop in epoch 0 and in epoch 1 of worker 0,
and the same two crops drawn again.  Then it trains a small CNN with DC-ASGD.
"""

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import dcasgd


def random_crop_flip(image: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Pad by ``pad`` pixels of the image's background, crop back to its size at random, flip half the time."""
    _, h, w = image.shape
    padded = F.pad(image, (pad, pad, pad, pad), value=float(image.min()))
    dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,)))
    crop = padded[:, dy:dy + h, dx:dx + w]
    return crop.flip(-1) if torch.rand(()) < 0.5 else crop


class SmallCNN(nn.Module):
    """conv(1->16) -> pool -> conv(16->32) -> pool -> linear(32*7*7 -> 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def crops_of_one_sample(settings: dict) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(a sample worker 0 reads in epochs 0 and 1, its crop in epoch 0, its crop in epoch 1).

    Every epoch deals the samples out to the workers afresh, so the sample is one of worker 0's
    first epoch-1 batch that was in its epoch-0 shard too.
    """
    epoch0 = {}                                    # sample -> the epoch-0 batch that holds it
    for batch in dcasgd.worker_batches("fashion-mnist", transform=random_crop_flip, **settings):
        if batch.epoch == 0:
            epoch0.update((s, batch) for s in batch.indices.tolist())
            continue
        again = [s for s in batch.indices.tolist() if s in epoch0]
        if again:
            sample, before = again[0], epoch0[again[0]]
            return (sample, before.read()[0][before.indices.tolist().index(sample)],
                    batch.read()[0][batch.indices.tolist().index(sample)])
    raise AssertionError("unreachable: worker_batches has no end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sim", "ray"], default="sim")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--loader-workers", type=int, default=0, help="processes building batches ahead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = {"workers": args.workers, "batch_size": 128, "seed": args.seed}

    sample, epoch0, epoch1 = crops_of_one_sample(settings)
    _, again0, again1 = crops_of_one_sample(settings)
    print(f"sample {sample}: crops in epochs 0 and 1 differ: {not torch.equal(epoch0, epoch1)}; "
          f"same seed, same crops: {torch.equal(epoch0, again0) and torch.equal(epoch1, again1)}")

    result = dcasgd.train(SmallCNN, "fashion-mnist", transform=random_crop_flip, rule="dc-asgd-a", epochs=args.epochs,
                          lr=0.05, loader_workers=args.loader_workers, backend=args.backend, progress=False,
                          **settings)
    print(f"augmented Fashion-MNIST, {args.workers} workers on {args.backend}: test error {result.final_error:.2f}% "
          f"after {result.summary['updates']} updates (mean staleness {result.summary['mean_staleness']:.2f})")


if __name__ == "__main__":
    main()
