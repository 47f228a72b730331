"""Local study processes: each makes RUNS_PER_PROCESS runs, then a fresh one takes its place."""

from __future__ import annotations

from dcasgd.config import TrainConfig
from dcasgd.study import dispatch


def test_each_process_makes_its_share_of_runs_then_gives_way_to_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setattr(dispatch, "RUNS_PER_PROCESS", 2)
    pids: list[int] = []
    submit = dispatch._Slot.submit

    def recording(slot, cfg, threads):
        future = submit(slot, cfg, threads)
        pids.append(*slot.pool._processes)           # the one process of the slot's pool
        return future

    monkeypatch.setattr(dispatch._Slot, "submit", recording)
    configs = {seed: TrainConfig(dataset="synthetic", workers=2, epochs=0.25, batch_size=64, eval_every=0.25,
                                 seed=seed, out=str(tmp_path / f"run{seed}"), progress=False).validate()
               for seed in range(5)}
    finished: dict[int, dict] = {}
    dispatch.run_local(configs, 1, 1, lambda key, summary: finished.setdefault(key, summary))

    assert sorted(finished) == list(range(5))
    assert all(summary["outcome"] == "finished" for summary in finished.values())
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] and len(set(pids)) == 3
