"""Check that this checkout computes the same bits as another commit: metrics.jsonl byte for byte.

    python scripts/same_bits_as.py REV [--cases all|quick]

Checks out REV into a temporary git worktree, runs each case below through
``python -m dcasgd train`` with that commit's code and with this checkout's,
and compares the two ``metrics.jsonl`` files byte for byte (every update,
evaluation, staleness snapshot, event and probe line).  The cases cover the
rules, the three consistency modes, heterogeneous and jittered timing, a
worker failure and rejoin, BatchNorm and dropout (cnn), the compensation
probe.  Exit status 0 when every case matches.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--no-progress", "--batch-size", "64"]
CASES = {
    "dc-asgd-a, 8 workers, fmnist mlp, jitter": ["--dataset", "fashion-mnist", "--model", "mlp", "--workers", "8",
                                                 "--epochs", "0.3", "--jitter", "0.2", "--eval-every", "0.1"],
    "dc-asgd-c, ssp:1, a straggler, synthetic": ["--dataset", "synthetic", "--rule", "dc-asgd-c", "--consistency",
                                                 "ssp:1", "--workers", "4", "--epochs", "2", "--straggler", "1:3"],
    "sgd, sync, cnn (BatchNorm, dropout)": ["--dataset", "fashion-mnist", "--model", "cnn", "--rule", "sgd",
                                            "--consistency", "sync", "--workers", "4", "--epochs", "0.05"],
    "staleness, lognormal speeds, a failure and rejoin": ["--dataset", "synthetic", "--rule", "staleness",
                                                          "--workers", "6", "--epochs", "3", "--hetero-sigma", "0.5",
                                                          "--fail", "2:5:12"],
    "dc-asgd-a with momentum and the probe": ["--dataset", "synthetic", "--workers", "4", "--epochs", "1",
                                              "--momentum", "0.9", "--probe-every", "3"],
    "gap-aware with momentum, lognormal speeds": ["--dataset", "synthetic", "--rule", "gap-aware", "--workers", "4",
                                                  "--epochs", "1", "--momentum", "0.9", "--hetero-sigma", "0.5"],
    "dana (look-ahead pulls), cnn": ["--dataset", "fashion-mnist", "--model", "cnn", "--rule", "dana",
                                     "--workers", "4", "--epochs", "0.03", "--momentum", "0.9"],
    "delay-adaptive and adadelay, a straggler": ["--dataset", "synthetic", "--rule", "adadelay", "--workers", "5",
                                                 "--epochs", "1", "--straggler", "0:4"],
}


def train(python_path: str, args: list[str], out: Path) -> bytes | None:
    """metrics.jsonl of one run, or None when that code refuses the case (a rule it does not have yet)."""
    env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "dcasgd", "train", *COMMON, *args, "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=900)
    if result.returncode == 2:
        return None
    if result.returncode != 0:
        raise SystemExit(f"dcasgd train failed ({python_path}): {result.stderr.strip().splitlines()[-1:]}")
    return (out / "metrics.jsonl").read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="the commit to compare with")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dcasgd-bits-") as tmp_name:
        tmp = Path(tmp_name)
        subprocess.run(["git", "worktree", "add", "--detach", str(tmp / "other"), args.rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            failed = compared = 0
            for k, (name, case) in enumerate(CASES.items()):
                theirs = train(str(tmp / "other" / "src"), case, tmp / "theirs" / str(k))
                if theirs is None:
                    print(f"skipped: {name} ({args.rev} does not have it)", flush=True)
                    continue
                ours = train(str(ROOT / "src"), case, tmp / "ours" / str(k))
                same = theirs == ours
                failed += not same
                compared += 1
                lines = ours.count(b"\n")
                print(f"{'same bytes' if same else 'DIFFERENT'}: {name} ({len(ours)} bytes, {lines} lines)",
                      flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "other")], cwd=ROOT,
                           capture_output=True)
    print(f"{compared - failed} of {compared} cases give the same metrics.jsonl as {args.rev}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
