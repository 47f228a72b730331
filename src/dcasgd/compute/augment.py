"""The built-in augmentation of tensor images (``augment = "crop-flip"``), as batched torch ops.

The standard CIFAR-10 recipe (He, Zhang, Ren and Sun, 2016, Section 4.2: "4 pixels are padded on
each side, and a 32x32 crop is randomly sampled from the padded image or its horizontal flip"),
for a batch ``x`` of shape (B, C, H, W) and a generator ``g``::

    padded = x with ``pad`` pixels of ``fill`` added on every side          (B, C, H + 2 pad, W + 2 pad)
    (dy, dx) ~ U{0, ..., 2 pad}^2 per sample                               the crop's corner
    out[b] = padded[b, :, dy:dy + H, dx:dx + W], its columns reversed with probability 1/2

``fill`` is one value per channel: the normalised value of a black pixel, ``-mean / std``, for
the built-in data sets (torchvision pads the uint8 image with 0 before normalising, the same
thing), 0 for a user's tensors.  Every draw comes from ``g`` (seeded per batch by the caller,
:func:`dcasgd.compute.batches.batch_key`), never from torch's global generator, so it is
safe beside dropout and across threads.
"""

from __future__ import annotations

import torch

from ..names import AUGMENTS

__all__ = ["AUGMENTS", "CropFlip", "make_augment"]


class CropFlip:
    """Pad by ``pad`` pixels of ``fill`` (per channel), crop back to H x W at random, flip half the images."""

    def __init__(self, pad: int = 4, fill: torch.Tensor | None = None) -> None:
        self.pad = pad
        self.fill = None if fill is None else fill.reshape(1, -1, 1, 1).float()

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pad
        padded = x.new_zeros(b, c, h + 2 * p, w + 2 * p)
        if self.fill is not None:
            padded.copy_(self.fill.to(x.dtype).expand_as(padded))
        padded[:, :, p:p + h, p:p + w] = x
        corner = torch.randint(0, 2 * p + 1, (2, b), generator=generator)
        flip = torch.rand(b, generator=generator) < 0.5
        rows = corner[0, :, None] + torch.arange(h)                           # (B, H)
        cols = corner[1, :, None] + torch.arange(w)                           # (B, W)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        picked = padded.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
        return picked.permute(0, 3, 1, 2).contiguous()                       # (B, H, W, C) -> (B, C, H, W)


def make_augment(name: str, norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> CropFlip | None:
    """The augmentation called ``name`` (:data:`AUGMENTS`), or None for ``"none"``; ``norm`` = the
    data's ``(mean, std)``, so the padding is black."""
    if name == "none":
        return None
    if name == "crop-flip":
        return CropFlip(4, None if norm is None else (-norm[0] / norm[1]).flatten())
    raise ValueError(f"augment: unknown value {name!r}; allowed: {', '.join(AUGMENTS)}")
