"""scripts/regenerate_run.py --one-per-table: which committed run stands for each study table."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import regenerate_run  # noqa: E402


def test_one_run_per_table_cycles_methods_and_takes_the_largest_m_and_last_seed(tmp_path):
    names = ["asgd-M4-s0", "asgd-M16-s0", "asgd-M16-s1", "dana-M4-s2", "dana-M16-s0", "sequential-M1-s0"]
    for study, groups in (("a", ["g1", "g2"]), ("b", ["g3"])):
        for group in groups:
            for name in names:
                run = tmp_path / study / "runs" / "final" / group / name
                run.mkdir(parents=True)
                (run / "summary.json").write_text("{}")
    picked = [str(p.relative_to(tmp_path)) for p in regenerate_run.one_per_table(tmp_path)]
    # tables in sorted order take methods asgd, dana, sequential in turn; "M16" beats "M4" as a number
    assert picked == ["a/runs/final/g1/asgd-M16-s1", "a/runs/final/g2/dana-M16-s0",
                      "b/runs/final/g3/sequential-M1-s0"]
