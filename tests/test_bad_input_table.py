"""The cases of docs/bad-input.md (scripts/bad_input_table.py): one error line, exit status 2, nothing left."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from bad_input_table import CASES, DOC, README, command_text, readme_with_exit_table, run_case  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_gets_one_error_line_exit_2_and_leaves_nothing(case):
    outcome = run_case(case)
    assert outcome.status == 2, outcome.stderr_lines
    assert len(outcome.stderr_lines) == 1 and outcome.stderr_lines[0].startswith("dcasgd: error:"), \
        outcome.stderr_lines
    assert case.expect in outcome.stderr_lines[0]
    assert outcome.left_behind == "nothing"


def test_the_documented_table_lists_every_case():
    doc = DOC.read_text(encoding="utf-8")
    for case in CASES:
        assert f"`{command_text(case)}`" in doc


def test_the_readme_exit_table_is_the_clis_own():
    readme = README.read_text(encoding="utf-8")
    assert readme_with_exit_table(readme) == readme, "run: python scripts/bad_input_table.py --write"
