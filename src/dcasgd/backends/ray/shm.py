"""Weights and gradients through shared memory, between a worker and the lead shard on one node.

Ray's object store is shared memory too, but every transfer creates, seals,
maps and releases an object, and a reply is first copied into the store.  A
worker on the lead shard's node instead gets two flat float32 files in
``/dev/shm`` of its own (plus one for BatchNorm statistics): its model's
gradient buffer *is* the first (the server reads the gradient where backward
wrote it), its parameters *are* the second (the server writes a pull straight
into them).  The call that carries a gradient exchange then holds a few
numbers only.

No locks are needed: a worker touches its files only between calls (it waits
for each reply), and the server only while it answers that worker's call.
The lead shard creates the files (named after the run) and keeps them for the
worker's restarts; the driver removes them when the run ends, whatever ended it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

SHM_DIR = Path("/dev/shm")


def available() -> bool:
    """Whether this machine has a shared-memory file system to map files from."""
    return SHM_DIR.is_dir() and os.access(SHM_DIR, os.W_OK)


def run_prefix() -> str:
    """A name prefix unique to one run: every file of the run starts with it."""
    return f"dcasgd-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def paths(prefix: str, worker: int) -> dict[str, str]:
    """The files of one worker: its gradient, the weights it pulls, its BatchNorm statistics."""
    return {kind: str(SHM_DIR / f"{prefix}-w{worker}-{kind}") for kind in ("grad", "weights", "buffers")}


def create(path: str, numel: int) -> torch.Tensor:
    """A new (or reused) zeroed shared file of ``numel`` float32 values, mapped."""
    with open(path, "wb") as f:
        f.truncate(max(1, numel) * 4)
    return mapped(path, numel)


def mapped(path: str, numel: int) -> torch.Tensor:
    """The shared file at ``path`` as a float32 tensor (writes are seen by every process mapping it)."""
    return torch.from_file(path, shared=True, size=max(1, numel), dtype=torch.float32)[:numel]


def remove(prefix: str) -> None:
    """Delete every shared file of the run (mappings stay valid until their processes let go)."""
    for path in SHM_DIR.glob(f"{prefix}-*"):
        path.unlink(missing_ok=True)
