"""Flat views of a module's parameters, gradients and BatchNorm statistics.

:class:`FlatModel` moves every parameter of a ``torch.nn.Module`` into one
contiguous float32 buffer ``params`` (each ``p.data`` becomes a view into
it), and gives every parameter a ``.grad`` that is a view into a second buffer
``grads``.  Loading weights is then one ``copy_`` and reading the gradient is
one view, with no per-tensor Python loop on the hot path.

Floating-point buffers (BatchNorm ``running_mean`` / ``running_var``) are
gathered into a third flat buffer ``buffers`` the same way, so their
statistics can travel with a push.  Integer buffers (``num_batches_tracked``)
stay local: they only matter for BatchNorm with ``momentum=None``.
"""

from __future__ import annotations

import torch
from torch import nn


def _flatten_into(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One contiguous float32 buffer holding ``tensors`` end to end."""
    total = sum(t.numel() for t in tensors)
    flat = torch.zeros(total, dtype=torch.float32)
    offset = 0
    for t in tensors:
        flat[offset:offset + t.numel()].copy_(t.detach().reshape(-1))
        offset += t.numel()
    return flat


def views_of(flat: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Views of consecutive slices of ``flat`` shaped like ``tensors``, in order."""
    views, offset = [], 0
    for t in tensors:
        views.append(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
    return views


class FlatModel:
    """A module whose parameters, gradients and float buffers live in flat tensors."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("module has no trainable parameters")
        if any(p.dtype != torch.float32 for p in params):
            raise ValueError("FlatModel needs float32 parameters")
        self.tensor_sizes = [p.numel() for p in params]
        self._trainable = params                    # fixed here: a walk of module.parameters() costs ~10 us
        self.params = _flatten_into(params)
        self.grads = torch.zeros_like(self.params)
        self._own_params = self.params              # the model's own storage (point_to may lend it another)
        for p, view, gview in zip(params, views_of(self.params, params), views_of(self.grads, params)):
            p.data = view
            p.grad = gview
        float_buffers = [b for b in module.buffers() if b.is_floating_point()]
        self._buffer_owners = [(mod, name) for mod in module.modules()
                               for name, b in mod.named_buffers(recurse=False) if b.is_floating_point()]
        self.buffers = _flatten_into(float_buffers)
        for (mod, name), view in zip(self._buffer_owners, views_of(self.buffers, float_buffers)):
            setattr(mod, name, view)

    @property
    def num_params(self) -> int:
        return self.params.numel()

    def rebind(self, params: torch.Tensor, grads: torch.Tensor) -> None:
        """Move the parameters and gradients into ``params`` and ``grads`` (flat float32 tensors of
        :attr:`num_params` elements: shared memory, another device), keeping their values."""
        params.copy_(self.params)
        grads.copy_(self.grads)
        self.params, self.grads, self._own_params = params, grads, params
        tensors = self._trainable
        for p, view, gview in zip(tensors, views_of(self.params, tensors), views_of(self.grads, tensors)):
            p.data = view
            p.grad = gview

    def point_to(self, weights: torch.Tensor) -> None:
        """Let the module read its parameters straight from ``weights`` (no copy), until the next
        :meth:`load` of other weights.  ``weights`` must not change while the module computes on them;
        the module never writes its parameters (gradients and buffers live elsewhere)."""
        if weights is not self.params:
            self._view_params(weights)

    def _view_params(self, storage: torch.Tensor) -> None:
        tensors = self._trainable
        for p, view in zip(tensors, views_of(storage, tensors)):
            p.data = view
        self.params = storage

    def load(self, weights: torch.Tensor, buffers: torch.Tensor | None = None) -> None:
        """Set the module's parameters (and float buffers) from flat tensors.

        Copies into the model's own storage; weights it already reads (:meth:`point_to`) are not copied.
        """
        if weights is not self.params:
            if self.params is not self._own_params:
                self._view_params(self._own_params)
            self.params.copy_(weights)
        if buffers is not None and buffers.numel():
            self.buffers.copy_(buffers)

    def zero_grad(self) -> None:
        self.grads.zero_()
