"""The batch progress bar: done/total, pass@1 so far and an ETA when the total is known, a plain
counter when it is not, and a total that counts what this run will auction (resume, duplicates,
--limit)."""

import io
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from sale_ray.batch import task_ids
from sale_ray.progress import BatchProgress, pending_total, postfix
from sale_ray.types import AuctionRecord, Evaluation, Task, Usage


def rec(tid, passed):
    return AuctionRecord(
        auction_id=f"{tid}#x",
        task_id=tid,
        kind="answer",
        winner="a",
        evaluation=Evaluation(passed=passed),
        phase_usage={"execute": Usage(cost_usd=0.25)},
    )


def last_frame(out: io.StringIO) -> str:
    """What the terminal shows last (tqdm redraws the line after a carriage return)."""
    return out.getvalue().split("\r")[-1].strip()


def test_a_known_total_shows_done_of_total_pass_at_1_and_an_eta():
    out = io.StringIO()
    bar = BatchProgress(5, file=out)
    bar.add([rec("t1", True), rec("t2", False)], not_run=0)
    bar.add([rec("t3", True)], not_run=0)
    bar.close()
    line = last_frame(out)
    assert line.startswith("auctions:") and "3/5" in line
    assert "pass@1 0.667" in line and "spent $0.750000" in line
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", line), line  # elapsed<remaining: the ETA
    assert "not-run" not in line


def test_an_unknown_total_is_a_plain_counter():
    out = io.StringIO()
    bar = BatchProgress(None, file=out)
    bar.add([rec("t1", True), rec("t2", True)], not_run=1)
    bar.close()
    line = last_frame(out)
    assert "2task" in line and "/" not in line.split("[")[0]
    assert "pass@1 1.000" in line and "not-run 1" in line


def test_pass_at_1_appears_only_once_a_result_is_verified():
    assert postfix(0, 0, 0.0, 0) == "spent $0.000000"
    assert postfix(1, 4, 0.5, 2) == "pass@1 0.250 spent $0.500000 not-run 2"
    out = io.StringIO()
    bar = BatchProgress(2, file=out)
    bar.add([rec("t1", None)], not_run=0)  # a task without a verifier
    bar.close()
    assert "1/2" in last_frame(out) and "pass@1" not in last_frame(out)


def test_a_disabled_bar_writes_nothing():
    out = io.StringIO()
    bar = BatchProgress(3, enabled=False, file=out)
    bar.add([rec("t1", True)], not_run=0)
    bar.close()
    assert out.getvalue() == ""


def tasks(*ids):
    return [Task(id=i, prompt="p", kind="answer", expected="x") for i in ids]


def test_the_total_is_what_this_run_will_auction():
    ids = [t.id for t in tasks("a", "b", "b", "c", "d", "e")]
    assert pending_total(ids, set()) == 5  # "b" twice runs once
    assert pending_total(ids, {"a", "c"}) == 3  # resume: what remains
    assert pending_total(ids, {"a"}, limit=3) == 1  # --limit cuts rows: a, b, b
    assert pending_total(None, set()) is None  # an iterator: unknown


def test_task_files_are_counted_where_a_second_read_is_cheap(tmp_path):
    jsonl = tmp_path / "t.jsonl"
    rows = [{"id": f"t{i}", "prompt": "p", "kind": "answer", "expected": "x"} for i in range(4)]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # a blank line: no task
    assert pending_total(task_ids(str(jsonl)), {"t0"}) == 3
    parquet = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    assert pending_total(task_ids(str(parquet)), set(), limit=2) == 2
    assert task_ids("s3://bucket/tasks.jsonl") is None  # a second download: not counted
    assert pending_total(task_ids(str(tmp_path / "missing.jsonl")), set()) is None
    (tmp_path / "bad.jsonl").write_text('{"id": "t0"}\nnot json\n')
    assert pending_total(task_ids(str(tmp_path / "bad.jsonl")), set()) is None
