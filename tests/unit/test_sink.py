"""Incremental Parquet results and task streaming, on a local folder (S3: integration tier)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sale_ray.batch import iter_tasks
from sale_ray.errors import TaskValidationError
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
