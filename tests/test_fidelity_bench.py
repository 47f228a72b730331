"""benchmarks/fidelity.py end to end at a tiny size: one setup, a short synthetic run on Ray and its simulations.

Only the shape of the report is checked (a row per way of running, a met/missed verdict per target),
never whether a target was met: that depends on the machine's load.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "fidelity.py"


@pytest.mark.ray
def test_a_tiny_run_reports_every_way_of_simulating_and_a_verdict_per_target(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--setups", "straggler", "--dataset", "synthetic",
                           "--epochs", "1", "--batch-size", "32", "--seeds", "2", "--results-dir", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = (tmp_path / "fidelity.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert {"ray", "replay", "fit (seed 0)", "plain flags", "fit, 2 seeds"} <= set(rows)
    for name in ("replay", "fit (seed 0)", "plain flags"):
        pushes = [int(p) for p in rows[name].split("|")[2].split(",")]
        assert len(pushes) == 4 and sum(pushes) == 64           # 1 epoch of 2048 samples, 32 per gradient
    targets = [line for line in section.splitlines() if line.startswith("- target, ")]
    assert len(targets) == 2 * 2 + 1 + 2                         # replay and fit x 2, final error, the straggler's 2
    assert all(re.search(r"\*\*(met|missed)\*\*$", line) for line in targets)
    assert (tmp_path / "fidelity.png").is_file()
