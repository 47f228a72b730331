"""Never lose or mix up a run's results, say plainly how a run ended, and refuse bad input cleanly.

Each test names the failure it guards against; every one failed before the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcasgd.io.checkpoint import list_checkpoints, load_latest, save_checkpoint
from dcasgd.cli import main
from dcasgd.config import TrainConfig
from dcasgd.engine.context import ignored_settings
from dcasgd.engine.recorder import advance_eval_mark
from dcasgd.core.server import NonFiniteUpdate, PushRejected, ServerCore

TINY = ["--dataset", "synthetic", "--workers", "2", "--epochs", "1", "--batch-size", "64", "--no-progress"]
UPDATES = 32                                   # 2048 samples / 64 per gradient


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcasgd", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def lines_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- 1. a run directory belongs to one run


def test_a_new_run_refuses_a_directory_holding_another_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--checkpoint-every", "10"]) == 0
    before = digest(out)
    assert main(["train", *TINY, "--out", str(out), "--seed", "1"]) == 2
    assert "holds another run's files" in capsys.readouterr().err
    assert digest(out) == before                                       # nothing touched


def test_overwrite_replaces_every_file_of_the_old_run(tmp_path):
    """The old run's checkpoints must go too: a later --resume must never continue the old run."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--checkpoint-every", "10"]) == 0
    assert list_checkpoints(out / "checkpoints")
    assert main(["train", *TINY, "--out", str(out), "--seed", "1", "--overwrite"]) == 0
    assert not (out / "checkpoints").exists()
    assert summary_of(out)["config"]["seed"] == 1
    records = lines_of(out)
    assert sum(r["kind"] == "update" for r in records) == UPDATES      # one run's lines, every one parses
    assert main(["train", "--resume", str(out)]) == 2                  # nothing of the old run to resume


def test_a_tensorboard_directory_belongs_to_one_run(tmp_path, capsys):
    pytest.importorskip("torch.utils.tensorboard")
    tb = tmp_path / "tb"
    assert main(["train", *TINY, "--out", str(tmp_path / "a"), "--tensorboard", str(tb)]) == 0
    events = sorted(tb.glob("events.out.tfevents.*"))
    assert main(["train", *TINY, "--out", str(tmp_path / "b"), "--tensorboard", str(tb)]) == 2
    assert "event files" in capsys.readouterr().err and sorted(tb.glob("events.out.tfevents.*")) == events
    assert not (tmp_path / "b").exists()
    assert main(["train", *TINY, "--out", str(tmp_path / "b"), "--tensorboard", str(tb), "--overwrite"]) == 0
    assert len(list(tb.glob("events.out.tfevents.*"))) == 1 and not set(tb.glob("*")) & set(events)


def test_compare_refuses_a_directory_holding_a_training_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = digest(out)
    assert main(["compare", str(out), "--dataset", "synthetic", "--methods", "asgd", "--workers-grid", "2",
                 "--seeds", "0", "--lr-grid", "0.1", "--val-size", "64", "--epochs", "0.25"]) == 2
    assert "not a study" in capsys.readouterr().err and digest(out) == before


# ---------------------------------------------------------------- 2. --resume DIR resumes into DIR


def test_resuming_a_copied_run_writes_into_the_copy_not_the_original(tmp_path):
    original = tmp_path / "original"
    assert main(["train", *TINY, "--out", str(original), "--checkpoint-every", "8",
                 "--stop-after-updates", "16"]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    before = digest(original)
    assert main(["train", "--resume", str(copy / "checkpoints")]) == 0   # DIR/checkpoints works too
    assert digest(original) == before
    assert summary_of(copy)["updates"] == UPDATES and summary_of(copy)["outcome"] == "finished"


def test_a_run_with_a_worker_that_never_rejoins_resumes(tmp_path):
    """`--fail W:T` without a rejoin time is recorded as [W, T, null]; resuming must read it back."""
    out = tmp_path / "failed"
    assert main(["train", *TINY, "--workers", "3", "--fail", "1:4", "--out", str(out), "--checkpoint-every", "8",
                 "--stop-after-updates", "16"]) == 0
    assert main(["train", "--resume", str(out)]) == 0
    summary = summary_of(out)
    assert summary["outcome"] == "finished" and summary["config"]["failures"] == [[1, 4.0, None]]


def test_resume_says_when_it_skips_a_corrupt_newest_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--checkpoint-every", "8", "--stop-after-updates", "16"]) == 0
    newest = list_checkpoints(out / "checkpoints")[-1]
    blob = bytearray(newest.read_bytes())
    blob[-10] ^= 0xFF
    newest.write_bytes(bytes(blob))
    capsys.readouterr()
    assert main(["train", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped a checkpoint that does not verify (checkpoint {newest}: checksum mismatch" in err
    assert "resuming from the older checkpoint" in err and summary_of(out)["updates"] == UPDATES


def test_rotation_never_deletes_a_good_checkpoint_while_keeping_a_corrupt_one(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, {"version": step}, step=step, keep=2)
    second = list_checkpoints(tmp_path)[-1]
    second.write_bytes(second.read_bytes()[:-5] + b"rot!!")          # bit rot in the newest
    save_checkpoint(tmp_path, {"version": 3}, step=3, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-000000001.pt", "ckpt-000000003.pt"]
    path, state = load_latest(tmp_path)
    assert state["version"] == 3


# ---------------------------------------------------------------- 3. stop and resume as the README says


def test_the_readme_stop_and_resume_cycle(tmp_path):
    """README: `dcasgd train ... --checkpoint-every N --stop-after-updates K --out DIR`, later
    `dcasgd train --resume DIR`: the run continues to the end, bit-identical to one never stopped."""
    stopped, whole = tmp_path / "stopped", tmp_path / "whole"
    first = run_cli("train", *TINY, "--checkpoint-every", "5", "--stop-after-updates", "12", "--out", str(stopped))
    assert first.returncode == 0, first.stderr
    assert "stopped after 12 updates as asked" in first.stdout
    assert f"continue with: dcasgd train --resume {stopped}" in first.stdout
    second = run_cli("train", "--resume", str(stopped))
    assert second.returncode == 0, second.stderr
    assert "final test error" in second.stdout and summary_of(stopped)["updates"] == UPDATES
    assert main(["train", *TINY, "--checkpoint-every", "5", "--out", str(whole)]) == 0
    assert (stopped / "metrics.jsonl").read_bytes() == (whole / "metrics.jsonl").read_bytes()


def test_a_resume_may_change_the_stop_conditions_but_not_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--checkpoint-every", "4", "--stop-after-updates", "8"]) == 0
    assert main(["train", "--resume", str(out), "--stop-after-updates", "20", "--checkpoint-every", "4"]) == 0
    assert summary_of(out)["updates"] == 20 and summary_of(out)["outcome"] == "stopped"
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "is from a different run (lr:" in capsys.readouterr().err


# ---------------------------------------------------------------- 4. the console says how a run ended


def test_a_diverged_run_says_so_and_exits_3(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--rule", "sgd", "--lr", "1e30", "--out", str(out)]) == 3
    captured = capsys.readouterr()
    assert "the model diverged after" in captured.err and "final test error" not in captured.out
    assert summary_of(out)["outcome"] == "diverged"


def test_a_max_refused_stop_says_so_and_exits_4(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--corrupt", "1:1.0", "--max-refused", "3", "--out", str(out)]) == 4
    err = capsys.readouterr().err
    assert "worker 1 had 3 refused pushes (--max-refused 3)" in err
    assert summary_of(out)["outcome"] == "max_refused" and list_checkpoints(out / "checkpoints")


def test_a_run_whose_workers_all_failed_exits_5(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--fail", "0:3", "--fail", "1:3", "--out", str(out)]) == 5
    assert "no live workers were left" in capsys.readouterr().err
    assert summary_of(out)["outcome"] == "no_live_workers"


def test_the_final_line_names_the_validation_split(tmp_path, capsys):
    assert main(["train", *TINY, "--val-size", "256", "--eval-split", "val", "--out", str(tmp_path / "r")]) == 0
    assert "final validation error" in capsys.readouterr().out


def test_settings_a_backend_ignores_are_warned_about_once_and_recorded(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--servers", "2", "--worker-restarts", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert err.count("dcasgd: warning: --backend sim ignores --servers, --worker-restarts") == 1
    assert summary_of(out)["ignored_settings"] == ["servers", "worker_restarts"]
    ray_cfg = TrainConfig(backend="ray", corrupt={0: 0.5}, jitter=0.2, failures=((0, 1.0, None),))
    assert ignored_settings(ray_cfg) == ["jitter", "failures", "corrupt"]


def test_exit_statuses_are_documented_in_help_and_readme():
    help_text = run_cli("train", "--help").stdout
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for status in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 "):
        assert f"\n  {status}" in help_text
    for words in ("diverged", "--max-refused", "no live workers"):
        assert words in help_text and words in readme


# ---------------------------------------------------------------- 5. bad input: one line, exit 2, nothing left


def test_a_mistyped_choice_is_one_line_not_a_usage_block(tmp_path):
    result = run_cli("train", "--rule", "foo", "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("dcasgd: error:")


def test_help_does_not_import_torch():
    code = ("import sys; from dcasgd.cli import build_parser; build_parser().format_help(); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@given(mark=st.floats(0, 10), ahead=st.floats(0, 50), every=st.floats(1e-3, 5))
def test_the_next_evaluation_mark_is_the_plain_loop_s_for_ordinary_cadences(mark, ahead, every):
    epoch = mark + ahead
    plain = mark
    while plain <= epoch + 1e-12:
        plain += every
    if (epoch - mark) / every <= 16:
        assert advance_eval_mark(mark, epoch, every) == plain          # bit for bit: the committed runs
    assert epoch < advance_eval_mark(mark, epoch, every) <= epoch + every + 1e-9


def test_a_tiny_eval_cadence_takes_one_step_not_a_billion():
    mark = advance_eval_mark(0.0, 3.0, 1e-9)
    assert 3.0 < mark <= 3.0 + 2e-9


def test_a_tiny_eval_cadence_evaluates_after_every_update(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--stop-after-updates", "4", "--eval-every", "1e-9", "--out", str(out)]) == 0
    evals = [r["version"] for r in lines_of(out) if r["kind"] == "eval"]
    assert evals == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- 6. the server never lets weights go non-finite


from dcasgd.names import RULES  # noqa: E402  (every rule, the newer ones too)


def _server(rule: str, momentum: float = 0.0, wd: float = 0.0) -> ServerCore:
    server = ServerCore(torch.linspace(-1, 1, 16), rule=rule, num_workers=2, lr=0.1, momentum=momentum, wd=wd)
    server.pull(0)
    server.push(0, torch.linspace(0.5, -0.5, 16), 0)
    return server


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("momentum", (0.0, 0.9))
def test_a_huge_finite_gradient_is_refused_or_leaves_finite_weights(rule, momentum):
    server = _server(rule, momentum)
    _, version = server.pull(1)
    server.push(0, torch.full((16,), 0.3), 0)                       # worker 1's gradient is now stale
    before = server.state_dict()
    try:
        server.push(1, torch.full((16,), 3e37), version)
    except NonFiniteUpdate as exc:
        assert "non-finite" in str(exc)
        after = server.state_dict()
        assert torch.equal(after["weights"], before["weights"]) and after["version"] == before["version"]
        assert all(torch.equal(after["state"][k], before["state"][k]) for k in before["state"])
        assert after["refused"].tolist() == [0, 1]
    else:
        assert torch.isfinite(server.weights).all()
    assert all(torch.isfinite(t).all() for t in server.state.values() if t.is_floating_point())
    before = server.weights.clone()
    try:                                                             # a later push: applied to finite weights,
        server.push(0, torch.full((16,), 0.1), server.version)       # or (state poisoned by the huge step) refused
    except NonFiniteUpdate:
        assert torch.equal(server.weights, before)
    assert torch.isfinite(server.weights).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule=st.sampled_from(RULES), momentum=st.sampled_from([0.0, 0.9]), wd=st.sampled_from([0.0, 0.01]),
       exponents=st.lists(st.floats(-3, 38), min_size=1, max_size=6), sign=st.sampled_from([-1.0, 1.0]))
def test_every_accepted_push_leaves_finite_weights(rule, momentum, wd, exponents, sign):
    server = _server(rule, momentum, wd)
    for k, exponent in enumerate(exponents):
        worker = k % 2
        _, version = server.pull(worker)
        grad = torch.full((16,), sign * 10.0**exponent) * torch.linspace(0.5, 1.0, 16)
        before = server.weights.clone()
        try:
            server.push(worker, grad, version)
        except NonFiniteUpdate:
            assert torch.equal(server.weights, before)
        assert torch.isfinite(server.weights).all()
        assert all(torch.isfinite(t).all() for t in server.state.values() if t.is_floating_point())


def test_the_finiteness_guard_changes_no_bits_of_ordinary_updates():
    """Proven-safe pushes take the same in-place path as before: same bits as the bare rule."""
    from dcasgd.core.rules import make_rule
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(1000, generator=gen)
    for rule_name in RULES:
        server = ServerCore(w0, rule=rule_name, num_workers=2, lr=0.05, momentum=0.9)
        rule = make_rule(rule_name, momentum=0.9).resolved(2)
        w, state, backup = w0.clone(), rule.init(1000, 2), w0.clone()
        server.pull(0)
        for step in range(3):
            g = torch.randn(1000, generator=gen)
            server.push(0, g, 0)
            rule.apply_(w, g, backup, step, 0.05, state, 0)
        assert torch.equal(server.weights, w)


def test_api_type_errors_name_the_real_problem():
    server = ServerCore(torch.zeros(4), rule="dc-asgd-a", num_workers=2)
    _, version = server.pull(np.int64(1))                           # numpy integers are worker ids
    assert server.push(np.int64(1), torch.ones(4), np.int64(version)) == 1
    with pytest.raises(PushRejected, match="worker id must be an integer, got float"):
        server.push(1.0, torch.ones(4), 0)
    with pytest.raises(PushRejected, match="dense tensor, got layout torch.sparse_coo"):
        server.push(1, torch.ones(4).to_sparse(), 1)
    with pytest.raises(PushRejected, match="on device meta"):
        server.push(1, torch.ones(4, device="meta"), 1)
    with pytest.raises(PushRejected, match="unknown worker 5"):
        server.pull(np.int64(5))
    assert server.refused.tolist() == [0, 2] and server.version == 1      # (a push names no valid worker: not counted)


def test_the_server_memory_estimate_matches_what_it_allocates():
    for rule, momentum in (("sgd", 0.0), ("sgd", 0.9), ("dc-asgd-c", 0.0), ("dc-asgd-a", 0.9)):
        server = ServerCore(torch.zeros(1000), rule=rule, num_workers=3, momentum=momentum)
        assert math.isclose(ServerCore.memory_bytes(1000, rule, 3, momentum=momentum), server.bytes_per_param() * 1000)


# ---------------------------------------------------------------- 7. a suite that cannot flake


def test_no_test_reads_a_wall_clock():
    """Waiting and ordering are checked with events and fake clocks, never with durations."""
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("test_*.py")):
        if path.name in ("test_soak.py", Path(__file__).name):     # the soak (slow, not in make test) times itself
            continue
        text = path.read_text()
        for clock in ("time.perf_counter(", "time.time(", "time.monotonic(", "datetime.now("):
            assert clock not in text, f"{path.name} reads the wall clock ({clock})"
