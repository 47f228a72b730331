"""Models buildable by name: ``mlp``, ``cnn``, ``resnet20``.

Each builder takes the dataset's input shape (without the batch dimension)
and class count and returns a fresh ``nn.Module``; :func:`build_model` seeds
the initialisation (and restores the global RNG afterwards), so the same seed
gives the same bits.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from ..errors import InputError
from ..names import MODELS


class ModelError(InputError):
    """Unknown model name or an input shape the model cannot take."""


class MLP(nn.Module):
    """Flatten -> Linear(D, h) -> ReLU -> Linear(h, h) -> ReLU -> Linear(h, classes)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        d = math.prod(input_shape)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks (conv3x3-BN-ReLU-maxpool, 16 and 32 channels), dropout, two linear layers.

    Kept small on purpose (about 0.2M parameters for 28x28 inputs): a gradient costs
    tens of milliseconds on one CPU core, so a study of many runs fits on a laptop.
    """

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.25) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ModelError(f"cnn needs image input (C, H, W), got shape {input_shape}")
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * (h // 4) * (w // 4), 128),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """ResNet basic block; option A shortcut (strided identity, zero-padded channels) as He et al. 2016."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    """ResNet-20 for 32x32 inputs: 3 stages of 3 basic blocks (16, 32, 64 channels); 0.27M parameters."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ModelError(f"resnet20 needs image input (C, H, W), got shape {input_shape}")
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for mod in self.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(mod.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int | None = 0) -> nn.Module:
    """A freshly initialised model; the same ``seed`` gives bit-identical weights.

    ``seed=None`` draws from torch's global generator as it is (the caller seeds it,
    as :func:`seeded_model` does for any model factory).
    """
    builders = {"mlp": MLP, "cnn": SmallCNN, "resnet20": ResNet20}
    if name not in builders:
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if seed is None:
        return builders[name](tuple(input_shape), num_classes)
    return seeded_model(lambda: builders[name](tuple(input_shape), num_classes), seed)


def seeded_model(model_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``model_fn()`` with torch's global generator seeded by ``seed`` (and restored afterwards).

    The same factory and seed give bit-identical initial weights; ``model_fn`` must
    return an ``nn.Module`` with float32 parameters.
    """
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        module = model_fn()
    finally:
        torch.random.set_rng_state(rng_state)
    if not isinstance(module, nn.Module):
        raise ModelError(f"the model factory must return a torch.nn.Module, got {type(module).__name__}")
    if not any(p.requires_grad for p in module.parameters()):
        raise ModelError("the model has no trainable parameters")
    bad = sorted({str(p.dtype) for p in module.parameters() if p.dtype != torch.float32})
    if bad:
        raise ModelError(f"the model's parameters must be float32, got {', '.join(bad)} (call .float() on it)")
    return module
