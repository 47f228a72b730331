"""MetricsWriter holds lines and encodes them together: what reaches the file is what json.dumps writes."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from dcasgd.io import metrics as metrics_module
from dcasgd.io.metrics import MetricsWriter

VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.lists(st.integers(0, 9), max_size=3))
RECORDS = st.lists(st.tuples(st.sampled_from(["update", "eval", "event"]),
                             st.dictionaries(st.sampled_from(["version", "worker", "loss", "time_s", "b", "a"]),
                                             VALUES, max_size=6)), max_size=30)


@settings(max_examples=40, deadline=None)
@given(records=RECORDS, pending=st.integers(1, 8))
def test_the_file_holds_exactly_the_lines_json_dumps_writes(tmp_path_factory, records, pending):
    path = tmp_path_factory.mktemp("metrics") / "metrics.jsonl"
    original = metrics_module.PENDING_LINES
    metrics_module.PENDING_LINES = pending                  # encode every few lines, as a long run does
    try:
        writer = MetricsWriter(path)
        for kind, fields in records:
            writer.write(kind, **fields)
        size = writer.tell()                                # tell() flushes what is held first
        writer.close()
    finally:
        metrics_module.PENDING_LINES = original
    expected = "".join(json.dumps({"kind": kind, **fields}, sort_keys=True) + "\n" for kind, fields in records)
    assert path.read_text(encoding="utf-8") == expected
    assert size == len(expected.encode("utf-8"))


def test_held_lines_reach_the_file_at_flush_and_appending_continues_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write("update", version=1, loss=0.5)
    writer.flush()
    assert path.read_text(encoding="utf-8") == '{"kind": "update", "loss": 0.5, "version": 1}\n'
    writer.write("eval", version=1)
    writer.close()                                          # close writes what is held
    again = MetricsWriter(path, append=True)
    again.write("event", worker=2)
    again.close()
    kinds = [json.loads(line)["kind"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert kinds == ["update", "eval", "event"]


def test_without_a_file_the_records_stay_in_memory_in_order():
    writer = MetricsWriter(None)
    writer.write("update", version=1)
    writer.write("eval", version=1, test_error=12.5)
    assert writer.records == [{"kind": "update", "version": 1}, {"kind": "eval", "version": 1, "test_error": 12.5}]
    assert writer.tell() == 0
