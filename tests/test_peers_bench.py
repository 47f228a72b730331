"""benchmarks/peers.py end to end: a quick run on the mlp writes its section with every system and numeric ratios.

Nothing here is about speed: the machine may be loaded, so only the shape of
the report is checked, never how fast any system was.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "peers.py"
# first words of each system's row label in the section's table
SYSTEM_ROWS = ("dcasgd ASGD", "dcasgd DC-ASGD-a", "Ray docs'", "PyTorch Hogwild", "compute limit")
RATIO_COLUMNS = {"x Ray-doc PS": "Ray docs'", "x Hogwild": "PyTorch Hogwild", "x limit": "compute limit"}


def table_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, body rows as cells) of the first Markdown table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[2:]


@pytest.mark.ray
def test_quick_run_writes_a_row_per_system_with_numeric_ratios(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--models", "mlp", "--repeats", "1",
                           "--results-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    section = tmp_path / "peers.md"
    assert section.is_file()
    header, rows = table_rows(section.read_text(encoding="utf-8"))
    by_system = {}
    for prefix in SYSTEM_ROWS:
        matching = [row for row in rows if row[0].startswith(prefix)]
        assert len(matching) == 1, f"no single row for {prefix!r} in {rows}"
        by_system[prefix] = dict(zip(header, matching[0]))
    for prefix, row in by_system.items():
        assert float(row["updates/s (median)"]) > 0
        for column, baseline in RATIO_COLUMNS.items():
            ratio = float(row[column])                        # numeric, whatever the machine's load
            assert ratio > 0
            if prefix == baseline:
                assert ratio == pytest.approx(1.0)
