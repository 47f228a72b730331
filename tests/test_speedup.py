"""Speedup over sequential SGD, the throughput ideal, m* and the goals on hand-made summaries, worked out by hand."""

import json

import pytest

from dcasgd.study.compare import DEFAULT_GRID, Choice, Group, method_settings
from dcasgd.study.findings import Study, facts
from dcasgd.study.report import write_findings, write_tables
from dcasgd.study.speedup import m_star


def run(method, workers, seed, curve, speeds, jitter=0.0):
    """A summary as a run writes it, with only what the report reads."""
    return {"final_test_error": curve[-1][1], "diverged": False, "outcome": "finished", "speeds": speeds,
            "curve": [{"epoch": i, "time_s": t, "test_error": e} for i, (t, e) in enumerate(curve)],
            "config": {**method_settings(method, 2), "workers": workers, "seed": seed, "lr": 0.1,
                       "base_time": 2.0, "jitter": jitter, "comm_time": 0.0}}


def test_m_star_by_hand():
    # rates 1, 1, 1/4, 1/8 and c = 2: (m + 2) / (sum of the m fastest rates) = 3, 2, 2.22, 2.53 -> m* = 2
    star = m_star([0.25, 1.0, 0.125, 1.0], 2.0, sequential_rate=1.0)
    assert star["m"] == 2 and star["model_time"] == pytest.approx(2.0)
    assert star["model_speedup"] == pytest.approx(3 / 2.0)             # (1 + c) / r_seq over the model time
    assert m_star([0.5] * 4, 2.0, 0.5)["m"] == 4                       # equal speeds: every worker pays


def test_ideal_speedup_share_m_star_and_goals_on_hand_made_summaries(tmp_path):
    """Sequential SGD (speed 1) finishes at 100 s (seed 0, 10%) and 120 s (seed 1, 12%): target 11%.

    M=16, 8 workers of speed 1 and 8 of speed 2: gradient rates 8 + 8/2 = 12 times one worker's (the jitter
    factor exp(jitter^2/2) cancels).  ASGD reaches 11% at 15 s and 20 s: speedups 100/15 and 120/20 = 6.67, 6.0,
    shares of 12: 0.556, 0.5.  SSGD reaches it at 40 s in seed 0 (ASGD 40/15 = 2.67x sooner) and never in seed 1
    (ends at 150 s: at least 150/20 = 7.5x).  G1 holds (>= 6x and >= 2x on both seeds).  m* with Rennala's S = 2:
    (m + 2) / (sum of the m fastest rates) falls to 10/8 at m = 8, rises after: m* = 8, model speedup 3 / 1.25.
    M=64 (all speed 1: ideal 64): ASGD at 12 s and 18 s, mean 15 s, sooner than 17.5 s at M=16: G2 holds.
    """
    speeds16 = [1.0] * 8 + [2.0] * 8
    seq = [run("sequential", 1, 0, [(0, 90), (50, 20), (100, 10.0)], [1.0], 0.1),
           run("sequential", 1, 1, [(0, 90), (60, 20), (120, 12.0)], [1.0], 0.1)]
    asgd16 = [run("asgd", 16, 0, [(0, 90), (15, 11.0), (150, 9)], speeds16, 0.1),
              run("asgd", 16, 1, [(0, 90), (20, 10.5), (150, 9)], speeds16, 0.1)]
    ssgd16 = [run("ssgd", 16, 0, [(0, 90), (40, 11.0), (150, 10)], speeds16, 0.1),
              run("ssgd", 16, 1, [(0, 90), (40, 13.0), (150, 12)], speeds16, 0.1)]
    asgd64 = [run("asgd", 64, 0, [(0, 90), (12, 10.0)], [1.0] * 64, 0.1),
              run("asgd", 64, 1, [(0, 90), (18, 10.0)], [1.0] * 64, 0.1)]
    grid = {**DEFAULT_GRID, "methods": ["sequential", "ssgd", "asgd", "rennala"], "workers": [1, 16, 64],
            "seeds": [0, 1], "clusters": {"lognormal": {"hetero_sigma": 0.5}}}
    group = Group("lognormal", "tuned", 0.0)
    chosen = {("tuned", "lognormal-mom0", "rennala", 16): Choice(0.1, 2),
              ("tuned", "lognormal-mom0", "rennala", 64): Choice(0.1, 4)}
    study = Study(tmp_path, {"command": "c", "finished": True}, grid, chosen, [group],
                  {group.name: {("sequential", 1): seq, ("asgd", 16): asgd16, ("ssgd", 16): ssgd16,
                                ("asgd", 64): asgd64}}, {}, {}, expected=8)
    numbers = facts(study, "r")
    (g,) = numbers["groups"]
    ideal = {i["workers"]: i for i in g["ideal"]}
    assert ideal[16]["per_seed"] == {0: pytest.approx(12.0), 1: pytest.approx(12.0)}
    assert ideal[64]["mean"] == pytest.approx(64.0)
    rows = {(r["method"], r["workers"]): r for r in g["speedups"]}
    assert rows[("asgd", 16)]["per_seed"] == {0: pytest.approx(100 / 15), 1: pytest.approx(6.0)}
    assert rows[("asgd", 16)]["share"]["per_seed"] == {0: pytest.approx(100 / 15 / 12), 1: pytest.approx(0.5)}
    assert rows[("ssgd", 16)]["per_seed"] == {0: pytest.approx(2.5), 1: None}
    stars = {m["workers"]: m for m in g["m_star"]}
    assert stars[16]["per_seed"][0]["m"] == 8 and stars[16]["c"] == 2
    assert stars[16]["model_speedup"]["mean"] == pytest.approx(3 / 1.25)
    assert stars[64]["per_seed"][0]["m"] == 64                          # equal speeds, c = 4
    (soonest16,) = [s for s in g["soonest"] if s["workers"] == 16]
    assert soonest16["method"] == "asgd"
    assert soonest16["vs_ssgd"]["per_seed"] == {0: pytest.approx(40 / 15)}
    assert soonest16["vs_ssgd"]["at_least_per_seed"] == {1: pytest.approx(150 / 20)}
    verdicts = {v["goal"]: v for v in numbers["goals"]["verdicts"]}
    assert verdicts["G1"]["verdict"] == "met" and verdicts["G1"]["method"] == "asgd"
    g1_seeds = verdicts["G1"]["per_seed"]                                 # SSGD reached it on seed 0 only
    assert g1_seeds[0]["ssgd_reached"] and not g1_seeds[1]["ssgd_reached"]
    assert g1_seeds[1]["vs_ssgd"] == pytest.approx(150 / 20)
    assert verdicts["G2"]["verdict"] == "met" and verdicts["G2"]["at"]["64"]["mean_s"] == pytest.approx(15.0)
    (pick16,) = [r for r in numbers["recommendations"] if r["workers"] == 16]
    assert pick16["method"] == "asgd" and pick16["mean_s"] == pytest.approx(17.5)
    assert pick16["target_error"] == pytest.approx(11.0)                 # that group's sequential SGD error

    # one seed short of 6x: G1 is missed
    asgd16[1]["curve"][1]["time_s"] = 21.0
    assert {v["goal"]: v for v in facts(study, "r")["goals"]["verdicts"]}["G1"]["verdict"] == "missed"

    write_tables(numbers, tmp_path)
    write_findings(numbers, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "| *throughput ideal* | 12.00 ± 0.00x | 64.00 ± 0.00x |" in table
    assert "| ASGD | 6.33 ± 0.47x (2/2) | 7.50 ± 1.18x (2/2) |" in table
    text = (tmp_path / "findings.md").read_text()
    assert "- G1 `lognormal-tuned-mom0`: **met** (ASGD: seed 0: 6.67x sequential, 2.67x SSGD; seed 1: 6.00x " \
           "sequential, SSGD never reached it (its run ended at 7.50x this time))" in text
    assert json.loads((tmp_path / "findings.json").read_text())["goals"]["verdicts"][0]["verdict"] == "met"


def test_the_ideal_rates_use_each_workers_own_noise():
    """A fitted cluster (dcasgd fit) carries per-worker sigmas or quantile tables, not one jitter."""
    import math
    from dcasgd.study.speedup import gradient_rates
    base = {"base_time": 2.0, "comm_time": 0.5, "jitter": 0.0}
    lognormal = gradient_rates({"speeds": [1.0, 3.0], "config": {**base, "jitters": [0.0, 0.4]}})
    assert lognormal == [1 / (1.0 + 2.0 * 1.0), 1 / (1.0 + 2.0 * 3.0 * math.exp(0.08))]
    empirical = gradient_rates({"speeds": [1.0, 1.0], "config": {**base, "timing": "empirical",
                                                                  "timing_quantiles": [[1.0, 1.0], [0.5, 1.5, 2.5]]}})
    assert empirical == [1 / (1.0 + 2.0 * 1.0), 1 / (1.0 + 2.0 * 1.5)]        # trapezoid means 1 and 1.5


def test_ssgd_lower_bound_stated_only_above_one():
    """Where SSGD never reached the target, its end over the method's time bounds the ratio from below; a bound
    below 1 (SSGD's run ended, at its epoch cap, before the method got there) says nothing and is not a claim."""
    from dcasgd.study.report import vs_ssgd_text
    from dcasgd.study.speedup import against_ssgd
    speeds = [1.0] * 16
    asgd = [run("asgd", 16, seed, [(0, 90), (20, 10)], speeds) for seed in (0, 1)]   # target 11% at 20 s
    ssgd_long = [run("ssgd", 16, 0, [(0, 90), (150, 12)], speeds)]                     # ends at 150 s: 7.5x
    ssgd_short = [run("ssgd", 16, 0, [(0, 90), (12, 12)], speeds),                     # 12 / 20 = 0.6
                  run("ssgd", 16, 1, [(0, 90), (8.6, 12)], speeds)]                    # 8.6 / 20 = 0.43
    above = against_ssgd({("asgd", 16): asgd, ("ssgd", 16): ssgd_long}, "asgd", 16, 11.0)
    below = against_ssgd({("asgd", 16): asgd, ("ssgd", 16): ssgd_short}, "asgd", 16, 11.0)
    assert above["at_least_per_seed"] == {0: pytest.approx(7.5)} and not above["ssgd_ended_first"]
    assert below["at_least_per_seed"] == {0: pytest.approx(0.6), 1: pytest.approx(0.43)}
    assert below["ssgd_ended_first"]
    assert "at least 7.50x sooner" in vs_ssgd_text(above)
    text = vs_ssgd_text(below)
    assert "at least" not in text and "no comparison" in text and "2 seed(s)" in text and "0.43x" in text
