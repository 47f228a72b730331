"""Run a committed run again from its recorded configuration and compare the summaries, bit for bit.

    python scripts/regenerate_run.py results/fmnist-mlp/runs/final/dc-asgd-a-M16-s0 [more run dirs]
    python scripts/regenerate_run.py --one-per-table --record results/regenerated.md

``--one-per-table`` takes one committed run from every table of every study
under results/ (a table: one cluster x protocol x momentum group of
``final`` runs): the k-th table takes the k-th of its methods, cycling, at
that method's largest M and last seed; ``--record FILE``
writes what came out, with the date, commit and command, as Markdown.

Every field the committed summary.json holds must come out equal, except the
wall-clock ones (``wall_time_s``, ``eval_wall_s``), the command line and the run's
identity (``run_id``, new for every run); the
configuration is compared field by field for the settings it records.  Each
run uses the torch thread count its summary records (``torch_threads``; one
where a summary predates that key, as ``dcasgd compare --jobs 2`` used on 2
cores), since float sums, and so the bits, depend on it.  Exit
status 0 when every run reproduced.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import tempfile
from pathlib import Path

import torch

from dcasgd.api import run
from dcasgd.study.compare import git_commit
from dcasgd.study.findings import base_config

WALL_CLOCK = {"wall_time_s", "eval_wall_s", "command", "run_id"}      # (and the identity: each run its own)
RESULTS = Path(__file__).resolve().parent.parent / "results"


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Where ``new`` differs from ``old`` for every key ``old`` has (recursively)."""
    found = []
    for key, value in old.items():
        if key in WALL_CLOCK:
            continue
        if key not in new:
            found.append(f"{prefix}{key}: missing")
        elif isinstance(value, dict) and isinstance(new[key], dict):
            found += differences(value, new[key], f"{prefix}{key}.")
        elif value != new[key]:
            found.append(f"{prefix}{key}: {str(value)[:60]} -> {str(new[key])[:60]}")
    return found


def regenerate(run_dir: Path) -> list[str]:
    committed = json.loads((run_dir / "summary.json").read_text())
    torch.set_num_threads(committed.get("torch_threads", 1))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(base_config(committed["config"]), out=str(Path(tmp) / "run"), progress=False)
        fresh = json.loads(json.dumps(run(cfg.validate()).summary))   # as summary.json holds it
    committed["config"].pop("out", None)
    fresh["config"].pop("out", None)
    return differences(committed, fresh)


def one_per_table(results: Path = RESULTS) -> list[Path]:
    """One final run of every table: the k-th table (sorted) takes the k-th of its methods (sorted, cycling,
    so the tables cover different rules), at that method's largest M, last seed."""
    picked = []
    for k, group in enumerate(sorted(results.glob("*/runs/final/*"))):
        runs = sorted(p.parent for p in group.glob("*/summary.json"))     # names: METHOD-M<workers>-s<seed>
        if not runs:
            continue
        parsed = [(r.name.rsplit("-M", 1)[0], int(r.name.rsplit("-M", 1)[1].split("-s")[0]),
                   int(r.name.rsplit("-s", 1)[1]), r) for r in runs]
        methods = sorted({method for method, *_ in parsed})
        method = methods[k % len(methods)]
        picked.append(max((m, s, r) for name, m, s, r in parsed if name == method)[2])
    return picked


def record(path: Path, lines: list[str], argv: list[str]) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    path.write_text(f"# Committed runs regenerated\n\n_Command: `python scripts/regenerate_run.py {' '.join(argv)}`; "
                    f"date: {stamp}; commit: {git_commit()}_\n\n" + "\n".join(f"- {line}" for line in lines) + "\n",
                    encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path)
    parser.add_argument("--one-per-table", action="store_true", help="add one final run of every study table")
    parser.add_argument("--record", type=Path, help="write the outcome as Markdown to this file")
    args = parser.parse_args(argv)
    runs = list(args.runs) + (one_per_table() if args.one_per_table else [])
    if not runs:
        parser.error("name run directories or pass --one-per-table")
    failed, lines = 0, []
    for run_dir in runs:
        diff = regenerate(run_dir)
        shown = run_dir.resolve().relative_to(RESULTS.parent) if run_dir.resolve().is_relative_to(RESULTS.parent) \
            else run_dir
        lines.append(f"`{shown}`: {'reproduced bit for bit' if not diff else 'DIFFERS: ' + '; '.join(diff[:8])}")
        print(lines[-1], flush=True)
        failed += bool(diff)
    if args.record:
        record(args.record, lines, sys.argv[1:] if argv is None else argv)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
