"""Weights, gradients and the step call itself through shared memory and a local socket, on one node.

Ray's object store is shared memory too, but every transfer creates, seals,
maps and releases an object, and a reply is first copied into the store.  A
worker on the lead shard's node instead gets two flat float32 files in
``/dev/shm`` of its own (plus one for BatchNorm statistics): its model's
gradient buffer *is* the first (the server reads the gradient where backward
wrote it), its parameters *are* the second (the server writes a pull straight
into them).  The call that carries a gradient exchange then holds a few
numbers only, and it travels over a Unix socket of the run (:class:`Channel`)
instead of a Ray actor call: a Ray call costs about a millisecond of
submission, scheduling and event-loop hops on each side, the socket a few
tens of microseconds.  Messages are JSON (nothing is unpickled), the socket
file is readable by its owner only, and each message is a 4-byte length and
its bytes.

No locks are needed: a worker touches its files only between calls (it waits
for each reply), and the server only while it answers that worker's call.
The lead shard creates the files (named after the run) and keeps them for the
worker's restarts; the driver removes them when the run ends, whatever ended it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
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


SOCKET_SUFFIX = "-step.sock"


def socket_path(prefix: str) -> str:
    return str(SHM_DIR / f"{prefix}{SOCKET_SUFFIX}")


def encode(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return struct.pack("!I", len(body)) + body


class Channel:
    """A worker's end of the lead shard's local socket: send a message, wait for its answer."""

    def __init__(self, path: str, timeout_s: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout_s)
        self.sock.connect(path)

    def send(self, message: dict) -> None:
        self.sock.sendall(encode(message))

    def receive(self) -> dict:
        size = struct.unpack("!I", self._exactly(4))[0]
        return json.loads(self._exactly(size))

    def _exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(left)
            if not chunk:
                raise ConnectionError("the lead server closed the step channel (it died or the run ended)")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


async def read_message(reader) -> dict | None:
    """The next message from an asyncio stream, or None at its end."""
    try:
        header = await reader.readexactly(4)
        return json.loads(await reader.readexactly(struct.unpack("!I", header)[0]))
    except asyncio.IncompleteReadError:
        return None
