"""A small causal transformer language model on Python's own standard library sources, trained with DC-ASGD.

    python examples/char_transformer.py [--backend sim|ray] [--epochs E] [--workers M] [--chars N]

The text is the first N bytes of this Python's standard-library ``.py`` files, found on every
machine; the last tenth is held out for evaluation.  It is cut at line ends into pieces of 8
to 96 bytes, so the sequences have different lengths.  What makes it a data pipeline rather
than a tensor pair:

- the items are dicts ``{"ids": int64 (T,)}`` of varying T, read lazily by each worker
  (``data`` is a zero-argument function: on Ray every worker reads the files itself);
- ``pad`` (the ``collate_fn``) pads a batch to its longest piece and adds the mask of real bytes:
  ``{"ids": (B, T), "real": (B, T)}``;
- ``next_byte_loss`` (the ``step_fn``) predicts byte t+1 from bytes 0..t: the mean cross-entropy
  over every real next byte of the batch (padding ignored);
- ``next_byte_nll`` (the ``eval_fn``) returns (sum of the next-byte negative log-likelihoods,
  number of next bytes), so the reported mean is per byte over the whole held-out text whatever
  the batches' lengths; the perplexity is ``exp(mean NLL)``.

The model: byte and position embeddings, ``--layers`` pre-norm transformer layers with causal
self-attention (dropout 0.1, seeded per gradient as everywhere in dcasgd), a linear head.
"""

import argparse
import functools
import math
import sysconfig
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import dcasgd

VOCAB, PAD = 256, 256          # bytes, and one padding id
MAX_LEN = 96


def stdlib_text(chars: int) -> bytes:
    """The first ``chars`` bytes of the standard library's top-level .py files, in name order."""
    out = bytearray()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        out += path.read_bytes()
        if len(out) >= chars:
            break
    return bytes(out[:chars])


def pieces(text: bytes) -> list[bytes]:
    """``text`` cut at line ends into pieces of 8..MAX_LEN bytes (a longer line is cut at MAX_LEN)."""
    out, current = [], b""
    for line in text.splitlines(keepends=True):
        while len(line) > MAX_LEN:
            out.append(line[:MAX_LEN])
            line = line[MAX_LEN:]
        if len(current) + len(line) > MAX_LEN:
            out.append(current)
            current = b""
        current += line
    out.append(current)
    return [p for p in out if len(p) >= 8]


class TextPieces(Dataset):
    """Pieces of text as ``{"ids": int64 (T,)}`` items."""

    def __init__(self, text: bytes) -> None:
        self.pieces = pieces(text)

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, i: int) -> dict:
        return {"ids": torch.tensor(list(self.pieces[i]), dtype=torch.int64)}


def split(chars: int, part: str) -> TextPieces:
    """The first nine tenths of the text (``train``) or the last tenth (``test``)."""
    text = stdlib_text(chars)
    cut = len(text) * 9 // 10
    return TextPieces(text[:cut] if part == "train" else text[cut:])


def pad(items: list[dict]) -> dict:
    """The collate_fn: pad to the longest piece; ``real`` marks the bytes that are not padding."""
    ids = nn.utils.rnn.pad_sequence([it["ids"] for it in items], batch_first=True, padding_value=PAD)
    return {"ids": ids, "real": ids != PAD}


class CharTransformer(nn.Module):
    """Byte + position embeddings -> causal pre-norm transformer layers -> logits over the next byte."""

    def __init__(self, d: int = 64, heads: int = 4, layers: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB + 1, d)
        self.position = nn.Embedding(MAX_LEN, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, VOCAB)

    def forward(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        h = self.embed(ids) + self.position(torch.arange(t, device=ids.device))
        causal = torch.ones(t, t, dtype=torch.bool, device=ids.device).triu(1)      # True: may not attend
        return self.head(self.body(h, mask=causal, src_key_padding_mask=~real))      # (B, T, VOCAB)


def next_byte_terms(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of -log p(byte t+1 | bytes 0..t) over real next bytes, their number)."""
    ids, real = batch["ids"], batch["real"]
    logits = model(ids[:, :-1], real[:, :-1])
    target = ids[:, 1:].masked_fill(~real[:, 1:], -100)
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=-100, reduction="sum")
    return nll, real[:, 1:].sum()


def next_byte_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """The step_fn: mean next-byte cross-entropy of the batch (nats per byte)."""
    nll, count = next_byte_terms(model, batch)
    return nll / count


def next_byte_nll(model: nn.Module, batch: dict) -> tuple[float, int]:
    """The eval_fn: (sum of next-byte NLL, number of next bytes)."""
    nll, count = next_byte_terms(model, batch)
    return float(nll), int(count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sim", "ray"], default="sim")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--chars", type=int, default=200_000, help="bytes of text (train and test)")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()

    def make_model() -> nn.Module:
        return CharTransformer(layers=args.layers)

    result = dcasgd.train(make_model, functools.partial(split, args.chars, "train"),
                          eval_data=split(args.chars, "test"), collate_fn=pad, step_fn=next_byte_loss,
                          eval_fn=next_byte_nll, rule="dc-asgd-a", workers=args.workers, epochs=args.epochs,
                          batch_size=32, lr=0.1, eval_every=max(0.5, args.epochs / 4),
                          backend=args.backend, progress=False)
    curve = result.summary["curve"]
    if result.final_error is None:
        print(f"char transformer, {args.workers} workers on {args.backend}: diverged (try a smaller lr)")
        return
    print(f"char transformer, {args.workers} workers on {args.backend}: test perplexity "
          f"{math.exp(result.final_error):.2f} per byte (mean NLL {result.final_error:.3f} nats; untrained "
          f"{math.exp(curve[0]['test_error']):.1f}) after {result.summary['updates']} updates "
          f"(mean staleness {result.summary['mean_staleness']:.2f})")


if __name__ == "__main__":
    main()
