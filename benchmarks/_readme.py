"""Assemble benchmarks/README.md from the section files in benchmarks/results/.

Every number in the README comes from a section file a benchmark script
wrote; this module adds only the index (benchmark, provenance, headline
lines: the bulleted findings with a bold figure) and fixed prose.
"""

from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
ORDER = ("make_bench", "server_update", "stragglers", "scaling", "sim_overhead", "data_path", "ray_transport", "soak",
         "peers", "fidelity")

INTRO = """# Benchmarks

Every figure below was written by the script named in its section, with the
machine, date, git commit and command that made it.  Re-run them all (and
rebuild this file) with

    make bench                                 # = .venv/bin/python benchmarks/run_all.py
    .venv/bin/python benchmarks/run_all.py --quick     # a few minutes: fewer repeats and epochs

or one of them with `python benchmarks/<name>.py [--quick]`; then
`python benchmarks/run_all.py --assemble-only` rebuilds this file from
`benchmarks/results/*.md`.  The machine is usually shared: each script
measures what it compares in the same run, interleaved, and reports medians.
"""

SHARDS = """## When to add server shards

Each worker cycle (pull, compute, push) costs the server one pull and one
push over its P parameters, `t_server(P)`.  M workers with a cycle of
`T_cycle` seconds ask for `M / (T_cycle + t_server)` updates per second; one
server can give at most `1 / t_server`.  So one server saturates at

    M* = (T_cycle + t_server(P)) / t_server(P)    workers

and beyond M* more workers only add staleness, not updates.  S shards split
the vector into slices of P/S parameters that are updated in parallel, so
the ceiling becomes `1 / t_server(P/S)` and M* grows roughly S-fold while the
slices stay large (the update is memory-bound, so `t_server` is proportional to
the bytes it touches).  Add shards when:

1. **Throughput**: the planned M is above M* for one shard.  Measure
   `t_server` on the server's hardware (`benchmarks/scaling.py --params P
   --compute-s T`) and pick the smallest S with M* > M.  A fast model
   (small `T_cycle`) saturates a server sooner than a slow one.
2. **Memory**: the DC rules keep one backup per worker, so the server holds
   about (4 + state + M x 4) bytes per parameter (M x 2 with
   `--backup-dtype bfloat16`; see the memory table of server_update).  When
   that times P exceeds one machine's memory, shard; bfloat16 backups first
   halve it at little cost in accuracy (measured in server_update).
3. **Not** for small slices: once P/S is small, the fixed per-call cost
   (Python, validation, messages) dominates and more shards buy little;
   slices under the fused-kernel threshold (`DCASGD_COMPILE_MIN_PARAMS`,
   default 1M) also fall back to the eager update chain.

The scaling section below gives M* for this machine, per S, both for
ServerCore as it is and for the update work alone.
"""


RAY_TIME = """## Where the Ray backend's time goes

The `target` lines of the peers section say which of the Ray targets are met
and by how much the others are missed; its time-split tables say where a
dcasgd worker's time goes per gradient (`time_per_gradient_ms` of each run's
`summary.json`).  How to read them on a 2-core machine:

- **The compute limit assumes a free core per worker and nothing else.**  With
  M = 2 here, dcasgd runs four busy processes (2 workers, the server shard,
  the driver) on two cores, plus Ray's own threads.  So a worker's compute,
  measured inside it, is slower than the same gradients in one process alone
  (compare the table's `compute` row with its last row).  Hogwild comes
  closest to the limit because it has no server process at all: each worker
  writes its update into the shared model itself, with no lock and no
  exchange.
- **The exchange is mostly a hand-off, not work.**  With one shard a worker's
  push, the grant of its next gradient and its pull are one message over a
  local socket; the server's push and pull (the `of which` rows) are a small
  part of it.  The rest is the server process being scheduled on a core a
  worker is using, and the worker waiting for its reply.  The update rule
  matters at small P: below the fused-kernel threshold (1M parameters) the
  DC-ASGD-a update is an eager chain of tensor ops.
- **For a compute-heavy model (the cnn) the gap is the compute itself.**  Its
  exchange is a few percent of a gradient's time; what separates it from the
  limit is the `compute` row: the same forward and backward passes run slower
  in a worker sharing two cores with the server, the driver and Ray's own
  processes than in one process alone (Hogwild's workers slow down too,
  though less, having no server or driver beside them).
- **Evaluations** hold training still (`evaluation_pause`), are left out of
  the training clock, and are not counted as exchange.
- **What would close the gap**: workers applying their own updates in shared
  memory under a lock (Hogwild's data path with ServerCore's bookkeeping in
  shared memory), which removes the hand-off; not done, since it moves where
  exactly-once delivery, the consistency waits and the finite-weights proof
  are enforced, which the Ray backend's tests pin to the server shard.
"""


def _provenance(text: str) -> tuple[str, str, str]:
    """(date, commit, command) from a section's provenance line."""
    date = re.search(r"date: ([^;\n]+)", text)              # "date: X; commit: Y; command: `Z`" or one per line
    commit = re.search(r"commit: ([^;\n]+)", text)
    command = re.search(r"command: `([^`\n]+)`", text)
    return tuple(m.group(1).strip() if m else "?" for m in (date, commit, command))  # type: ignore[return-value]


def _headlines(text: str, limit: int = 6, width: int = 220) -> list[str]:
    """The section's bulleted findings that carry a bold figure, shortened for the index."""
    lines = [re.sub(r"\s+", " ", line[2:].strip()) for line in text.splitlines()
             if line.startswith("- ") and "**" in line]
    return [line if len(line) <= width else line[:width].rsplit(" ", 1)[0] + " ..." for line in lines[:limit]]


def sections() -> list[Path]:
    present = {p.stem: p for p in RESULTS.glob("*.md")}
    ordered = [present.pop(name) for name in ORDER if name in present]
    return ordered + [present[k] for k in sorted(present)]


def assemble() -> Path:
    files = sections()
    index = ["| benchmark | date | commit | command | headline figures |", "|---|---|---|---|---|"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        date, commit, command = _provenance(text)
        heads = "<br>".join(h.replace("|", "/") for h in _headlines(text)) or "see section"
        index.append(f"| [{path.stem}](#{path.stem.replace('_', '-')}) | {date} | {commit} | `{command}` | {heads} |")
    body = [INTRO, "## Latest figures\n\n" + "\n".join(index), SHARDS, RAY_TIME]
    for path in files:
        text = path.read_text(encoding="utf-8").strip()
        if text.startswith("# "):                             # keep one title for the whole file
            text = "#" + text
        body.append(f'<a id="{path.stem.replace("_", "-")}"></a>\n\n{text}')
    README.write_text("\n\n".join(part.strip() for part in body) + "\n", encoding="utf-8")
    return README


if __name__ == "__main__":
    print(assemble())
