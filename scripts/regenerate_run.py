"""Run a committed run again from its recorded configuration and compare the summaries, bit for bit.

    python scripts/regenerate_run.py results/fmnist-mlp/runs/final/dc-asgd-a-M16-s0 [more run dirs]

Every field the committed summary.json holds must come out equal, except the
wall-clock ones (``wall_time_s``, ``eval_wall_s``) and the command line; the
configuration is compared field by field for the settings it records.  Each
run uses the torch thread count its summary records (``torch_threads``; one
where a summary predates that key, as ``dcasgd compare --jobs 2`` used on 2
cores), since float sums, and so the bits, depend on it.  Exit
status 0 when every run reproduced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

from dcasgd.api import run
from dcasgd.config import TrainConfig

WALL_CLOCK = {"wall_time_s", "eval_wall_s", "command"}


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
    known = set(TrainConfig.__dataclass_fields__)
    settings = {k: v for k, v in committed["config"].items() if k in known}
    for key in ("speeds", "lr_milestones"):
        settings[key] = tuple(settings.get(key, ()))
    for key in ("stragglers", "corrupt"):
        settings[key] = {int(k): v for k, v in settings.get(key, {}).items()}
    settings["failures"] = tuple(tuple(f) for f in settings.get("failures", ()))
    torch.set_num_threads(committed.get("torch_threads", 1))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(TrainConfig(**settings), out=str(Path(tmp) / "run"), progress=False)
        fresh = json.loads(json.dumps(run(cfg.validate()).summary))   # as summary.json holds it
    committed["config"].pop("out", None)
    fresh["config"].pop("out", None)
    return differences(committed, fresh)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = 0
    for run_dir in args.runs:
        diff = regenerate(run_dir)
        print(f"{run_dir}: {'reproduced bit for bit' if not diff else 'DIFFERS: ' + '; '.join(diff[:8])}",
              flush=True)
        failed += bool(diff)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
