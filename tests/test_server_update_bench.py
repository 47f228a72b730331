"""benchmarks/server_update.py covers every rule the registry has (a rule added later must not break the bench).

Only the shape of the result is checked, never a speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import server_update  # noqa: E402

from dcasgd.core.rules import RULES, make_rule  # noqa: E402


def test_every_rule_has_a_byte_count_at_least_what_its_state_vectors_force():
    for rule in RULES:
        r = make_rule(rule).resolved(4)
        state = r.init(10, 1)
        # w read + written, g read; one read of each backup; a read and a write of each per-parameter state row
        # (the scratch buffer is an eager temporary, not state a fused update must touch)
        rows = sum(v.shape[0] if v.dim() == 2 else 1 for k, v in state.items()
                   if v.dim() >= 1 and v.shape[-1] == 10 and k != "scratch")
        least = 12 + (4 if r.needs_backup else 0) + 8 * rows
        assert server_update.rule_bytes(rule) == least, rule
        assert server_update.rule_bytes(rule, push=True) == least + 4


def test_a_small_size_times_every_rule_on_both_paths():
    result = server_update.time_size(1000, 2)
    for rule in RULES:
        for path in ("push", "bare"):
            seconds = result["times"][f"{path} {rule}"]
            assert seconds > 0 and torch.isfinite(torch.tensor(seconds))
            assert result["copies"][result["bytes"][f"{path} {rule}"]] in result["times"]
