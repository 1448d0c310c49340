"""Incremental Parquet results and task streaming, on a local folder (S3: integration tier)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sale_ray.batch import iter_tasks
from sale_ray.errors import InfraError, TaskValidationError
from sale_ray.sink import ResultSink
from sale_ray.types import AuctionRecord, Task


def rec(tid, *, error=None, winner="a", cost=0.001):
    from sale_ray.types import Usage

    return AuctionRecord(
        auction_id=f"{tid}#x",
        task_id=tid,
        kind="answer",
        winner=winner,
        error=error,
        phase_usage={"bid": Usage(cost_usd=cost)},
    )


def test_parts_appear_whole_and_resume_reads_done_ids(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=2)
    s.add([rec("t1")])
    assert list((tmp_path / "parts").iterdir()) == []  # buffered
    s.add([rec("t2"), rec("t3")])
    parts = list((tmp_path / "parts").iterdir())
    assert len(parts) == 1 and not parts[0].name.startswith(".")
    (tmp_path / "parts" / ".part-crashed.parquet.tmp").write_bytes(b"half a file")
    assert ResultSink(str(tmp_path)).done_ids() == {"t1", "t2", "t3"}


def test_budget_refusals_are_not_done_and_a_later_result_replaces_them(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("t1", error="budget exhausted: run budget", winner=None), rec("t2")])
    assert s.done_ids() == {"t2"}
    s2 = ResultSink(str(tmp_path), flush_rows=1)
    s2.add([rec("t1")])
    path, table, dupes = s2.finalize()
    rows = {r["task_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"t1", "t2"} and rows["t1"]["error"] is None and dupes == 1


def test_finalize_merges_dedupes_and_removes_parts(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("t1"), rec("t2")])
    path, table, _ = s.finalize()
    assert path == str(tmp_path / "auctions.parquet") and table.num_rows == 2
    assert list((tmp_path / "parts").iterdir()) == []
    # a crash between writing the final file and deleting parts leaves duplicates: merged away
    s2 = ResultSink(str(tmp_path), flush_rows=1)
    s2.add([rec("t3")])
    pq.write_table(pq.read_table(path), tmp_path / "parts" / "part-0-dup.parquet")
    _, table, dupes = s2.finalize()
    assert sorted(table.column("task_id").to_pylist()) == ["t1", "t2", "t3"] and dupes == 2
    assert ResultSink(str(tmp_path)).done_ids() == {"t1", "t2", "t3"}


def test_reset_forgets_everything(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("t1")])
    s.finalize()
    s.reset()
    assert s.done_ids() == set()


def test_tasks_stream_from_jsonl_and_parquet_in_chunks(tmp_path):
    rows = [
        {"id": f"t{i}", "prompt": f"p {i}", "kind": "answer", "expected": "x"} for i in range(7)
    ]
    j = tmp_path / "tasks.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    chunks = list(iter_tasks(str(j), batch_size=3))
    assert [len(c) for c in chunks] == [3, 3, 1] and chunks[0][0] == Task(**rows[0])
    p = tmp_path / "tasks.parquet"
    extra = [dict(r, canonical_solution="ignored") for r in rows]
    pq.write_table(pa.Table.from_pylist(extra), p)
    assert [t.id for c in iter_tasks(str(p), batch_size=4) for t in c] == [r["id"] for r in rows]


@pytest.mark.parametrize(
    "line, msg",
    [
        ("not json", "line 2: not JSON"),
        ('{"id": "bad id!", "prompt": "p"}', "line 2: id"),
        ('{"id": "x", "prompt": "p", "promtp": 1}', "line 2: promtp"),
    ],
)
def test_a_bad_task_line_is_named(tmp_path, line, msg):
    j = tmp_path / "t.jsonl"
    j.write_text('{"id": "ok", "prompt": "p"}\n' + line + "\n")
    with pytest.raises(TaskValidationError, match=msg):
        list(iter_tasks(str(j)))


# --- results files are not trusted further than they are checked (issue 13, item 6) ----------
class _FaultyFS:
    """Wraps a pyarrow filesystem; ``faults`` maps a method name to a callable run instead."""

    def __init__(self, fs, **faults):
        self._fs, self._faults = fs, faults

    def __getattr__(self, name):
        if name in self._faults:
            return lambda *a, **k: self._faults[name](self._fs, *a, **k)
        return getattr(self._fs, name)


def _parts(tmp_path):
    return sorted(p.name for p in (tmp_path / "parts").glob("*.parquet"))


def test_an_exception_mid_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    real = pq.ParquetWriter.write_table

    def half_then_fail(self, table, *a, **k):
        real(self, table.slice(0, 1), *a, **k)
        raise RuntimeError("disk full, say")

    s = ResultSink(str(tmp_path), flush_rows=10)
    s.add([rec("t1"), rec("t2")])
    monkeypatch.setattr(pq.ParquetWriter, "write_table", half_then_fail)
    with pytest.raises(RuntimeError):
        s.flush()
    monkeypatch.undo()
    assert list((tmp_path / "parts").iterdir()) == []  # no part, no temp debris


def test_a_short_upload_is_caught_before_the_rename(tmp_path):
    # A stream that closes "successfully" with half the bytes (what a pyarrow S3 stream does
    # when it is closed after an error): the stored size is checked before the rename.
    class Short:
        def __init__(self, out):
            self.out = out

        def write(self, data):
            self.out.write(data[: len(data) // 2])

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.out.close()

    s = ResultSink(str(tmp_path), flush_rows=10)
    s.add([rec("t1")])
    s.fs = _FaultyFS(s.fs, open_output_stream=lambda fs, p: Short(fs.open_output_stream(p)))
    with pytest.raises(InfraError, match=r"stored \d+ bytes, wrote \d+"):
        s.flush()
    assert list((tmp_path / "parts").iterdir()) == []


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda p: p.write_bytes(b"not parquet at all"),
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
        lambda p: pq.write_table(pa.table({"something": [1, 2]}), p),  # not a results file
    ],
)
def test_a_corrupt_part_is_quarantined_reported_and_does_not_block_resume(
    tmp_path, corrupt, caplog
):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("t1")])
    s.add([rec("t2")])
    s.add([rec("t3")])
    bad = tmp_path / "parts" / _parts(tmp_path)[1]
    corrupt(bad)
    s2 = ResultSink(str(tmp_path), flush_rows=1)
    with caplog.at_level("WARNING", logger="sale_ray.sink"):
        assert s2.done_ids() == {"t1", "t3"}  # t2 will run again
    assert len(s2.quarantined) == 1 and s2.quarantined[0].endswith(bad.name)
    assert any(bad.name in r.getMessage() and "moved to" in r.getMessage() for r in caplog.records)
    moved = list((tmp_path / "parts" / "_quarantine").iterdir())
    assert [m.name.endswith(bad.name) for m in moved] == [True] and not bad.exists()
    s2.add([rec("t2")])
    _, table, dupes = s2.finalize()
    assert sorted(table.column("task_id").to_pylist()) == ["t1", "t2", "t3"] and dupes == 0
    assert _parts(tmp_path) == [] and len(list((tmp_path / "parts" / "_quarantine").iterdir()))


def test_a_storage_error_is_raised_not_mistaken_for_corruption(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("t1")])

    def unreachable(fs, path):
        raise OSError("connection reset")

    s2 = ResultSink(str(tmp_path))
    s2.fs = _FaultyFS(s2.fs, open_input_file=unreachable)
    with pytest.raises(InfraError, match=r"part-.*: cannot read results file \(OSError\)"):
        s2.done_ids()
    assert s2.quarantined == [] and len(_parts(tmp_path)) == 1


def test_a_crash_between_the_final_file_and_the_part_deletes_loses_nothing(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=1)
    for i in range(4):
        s.add([rec(f"t{i}")])
    deleted = []

    def crash_after_one(fs, path):
        if deleted:
            raise OSError("killed")
        deleted.append(path)
        fs.delete_file(path)

    s.fs = _FaultyFS(s.fs, delete_file=crash_after_one)
    with pytest.raises(OSError, match="killed"):
        s.finalize()
    assert (tmp_path / "auctions.parquet").exists() and len(_parts(tmp_path)) == 3
    s2 = ResultSink(str(tmp_path), flush_rows=1)
    assert s2.done_ids() == {"t0", "t1", "t2", "t3"}
    _, table, dupes = s2.finalize()
    assert sorted(table.column("task_id").to_pylist()) == ["t0", "t1", "t2", "t3"]
    assert dupes == 3 and _parts(tmp_path) == []


def test_a_crash_while_writing_the_final_file_keeps_every_part(tmp_path, monkeypatch):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("t0"), rec("t1")])
    s.finalize()
    s.add([rec("t2")])

    def fail(self, *a, **k):
        raise RuntimeError("crash mid-merge")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", fail)
    with pytest.raises(RuntimeError):
        s.finalize()
    monkeypatch.undo()
    assert pq.read_table(tmp_path / "auctions.parquet").num_rows == 2 and len(_parts(tmp_path))
    _, table, _ = ResultSink(str(tmp_path)).finalize()
    assert sorted(table.column("task_id").to_pylist()) == ["t0", "t1", "t2"]


def test_old_results_without_a_newer_nullable_column_still_merge(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("t1")])
    part = tmp_path / "parts" / _parts(tmp_path)[0]
    t = pq.read_table(part)
    nullable = next(f.name for f in t.schema if f.nullable and f.name not in ("task_id", "error"))
    pq.write_table(t.drop_columns([nullable]), part)
    s2 = ResultSink(str(tmp_path))
    assert s2.done_ids() == {"t1"} and s2.quarantined == []
    assert s2.merged()[0].column(nullable).to_pylist() == [None]


def test_a_too_long_task_line_is_an_error_naming_file_and_line(tmp_path, monkeypatch):
    import sale_ray.batch as batch

    monkeypatch.setattr(batch, "MAX_LINE_BYTES", 1000)
    j = tmp_path / "t.jsonl"
    ok = json.dumps({"id": "ok", "prompt": "p"})
    j.write_text(ok + "\n" + json.dumps({"id": "big", "prompt": "x" * 2000}) + "\n" + ok + "\n")
    with pytest.raises(TaskValidationError, match=rf"{j}: line 2: longer than 1000 bytes"):
        list(iter_tasks(str(j)))
    j.write_text(ok + "\n" + "y" * 5000)  # a last line without a newline
    with pytest.raises(TaskValidationError, match=rf"{j}: line 2: longer than 1000 bytes"):
        list(iter_tasks(str(j)))
    j.write_text(ok + "\n" + json.dumps({"id": "fits", "prompt": "x" * 900}) + "\n")
    assert [t.id for c in iter_tasks(str(j)) for t in c] == ["ok", "fits"]


def test_a_long_line_is_refused_without_reading_all_of_it():
    from sale_ray.batch import _lines

    class Endless:  # one line that never ends: reading it whole would never return
        read_bytes = 0

        def read(self, n):
            self.read_bytes += n
            return b"x" * n

    s = Endless()
    with pytest.raises(TaskValidationError, match=r"where: line 1: longer than 4096 bytes"):
        list(_lines(s, "where", max_line=4096, block=1024))
    assert s.read_bytes <= 4096 + 1024


def test_a_batch_result_shows_the_quarantined_count():
    from sale_ray.batch import BatchResult

    text = BatchResult(quarantined=["out/parts/_quarantine/1-part-a.parquet"]).describe()
    assert "unreadable result files moved aside 1" in text and "1-part-a.parquet" in text


def test_old_results_whose_bids_predate_the_screened_field_still_merge(tmp_path):
    from sale_ray.types import Bid, ScoredBid

    s = ResultSink(str(tmp_path), flush_rows=1)
    bid = Bid(agent="a", plan="p", screened=["rating request"])
    s.add([rec("t1").model_copy(update={"bids": [ScoredBid(bid=bid)]})])
    part = tmp_path / "parts" / _parts(tmp_path)[0]
    t = pq.read_table(part)
    assert t.column("bids").to_pylist()[0][0]["screened"] == ["rating request"]
    i = t.schema.get_field_index("bids")
    old_bid = pa.struct([f for f in t.schema.field("bids").type.value_type if f.name != "screened"])
    old = t.set_column(i, "bids", t.column("bids").cast(pa.list_(old_bid)))
    pq.write_table(old, part)
    merged = ResultSink(str(tmp_path)).merged()[0].column("bids").to_pylist()
    assert merged[0][0]["plan"] == "p" and merged[0][0]["screened"] is None


def test_resume_reruns_retriable_failures_and_keeps_final_ones(tmp_path):
    s = ResultSink(str(tmp_path), flush_rows=1)
    s.add([rec("crashed", error="auction crashed: RuntimeError: bug").model_copy(update={"failure": "retriable"})])  # fmt: skip
    s.add([rec("dup", error="duplicate task id").model_copy(update={"failure": "final"})])
    s.add([rec("fine")])
    assert ResultSink(str(tmp_path)).done_ids() == {"dup", "fine"}
    s.add([rec("crashed")])  # the rerun's result replaces the crashed row at the merge
    merged = ResultSink(str(tmp_path)).merged()[0]
    rows = {r["task_id"]: r for r in merged.to_pylist()}
    assert rows["crashed"]["error"] is None and rows["dup"]["failure"] == "final"
