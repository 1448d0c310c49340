"""The named DuckDB queries over the logs in place: a run log (final file + parts of a run still
going, written by the real ResultSink), an evaluation folder and a memory export; and the
report's SQL statistics held equal to the Python ones the evaluation writes to summary.json."""

import pyarrow.parquet as pq
import pytest

from sale_ray.errors import UserError
from sale_ray.evaluation.analytics import decisions_from_auctions, method_stats, method_stats_sql
from sale_ray.logdb import open_logs
from sale_ray.memory.entry import entries_table
from sale_ray.queries import QUERIES, main, query_db, run_query
from sale_ray.sink import ResultSink
from sale_ray.types import (
    AuctionRecord,
    Bid,
    Evaluation,
    Execution,
    ScoredBid,
    Usage,
    records_table,
)
from tests.memory_entries import make_entries
from tests.unit.test_analytics import _write_eval_folder

DAY = 86400.0
T0 = 20_000 * DAY  # 2024-10-04 00:00 UTC
PRICE = {"small": 1e-8, "large": 1e-7}  # $ per token: "large" is the largest agent


def _record(i, winner, passed, day=0, error=None, refined=False):
    """Auction ``t{i}`` on UTC day ``day``: both agents bid 100 tokens, ``winner`` executes 50;
    a jury costs 2e-6 $ and, when ``refined``, small's refined bid 1e-6 $ (a refine phase)."""
    bids = [
        ScoredBid(
            bid=Bid(
                agent=a,
                plan="p",
                plan_tokens=50,
                usage=Usage(prompt_tokens=50, completion_tokens=50, cost_usd=100 * PRICE[a]),
            ),
            score=0.0,
        )
        for a in ("small", "large")
    ]
    usage = {"bid": Usage(completion_tokens=200, cost_usd=100 * (PRICE["small"] + PRICE["large"]))}
    if not error:
        usage["jury"] = Usage(completion_tokens=20, cost_usd=2e-6)
        usage["execute"] = Usage(completion_tokens=50, cost_usd=50 * PRICE[winner])
    if refined:
        bids.append(
            ScoredBid(bid=Bid(agent="small", plan="r", refined=True, usage=Usage(cost_usd=1e-6)))
        )
        usage["refine"] = Usage(completion_tokens=10, cost_usd=1e-6)
    return AuctionRecord(
        auction_id=f"a{i}-{error or 'ok'}",
        task_id=f"t{i}",
        kind="code",
        bin=i % 2,
        bids=bids,
        provisional_winner=winner,
        winner=None if error else winner,
        execution=None if error else Execution(agent=winner, answer="x"),
        evaluation=Evaluation(passed=None if error else passed),
        phase_usage=usage,
        error=error,
        started_at=T0 + day * DAY + i,
    )


def write_run_log(root, sink_kw=None):
    """A run log as a resumed run leaves it, mid-way: ``auctions.parquet`` (t0-t3, t4 refused for
    budget) and two parts written after it (t4 done now, t5; t1 again: a duplicate)."""
    sink = ResultSink(str(root), **(sink_kw or {}))
    sink.add(
        [
            _record(0, "small", True),
            _record(1, "large", True, refined=True),
            _record(2, "small", False),
            _record(3, "large", True, day=1),
            _record(4, "small", False, day=1, error="budget exhausted: 0.0 $ left"),
        ]
    )
    sink.finalize()
    sink.add([_record(4, "small", True, day=1), _record(1, "small", False)])
    sink.flush()
    sink.add([_record(5, "small", True, day=1)])
    sink.flush()
    return sink


def test_the_auctions_view_merges_final_and_parts_as_the_sink_does(tmp_path):
    sink = write_run_log(tmp_path)
    merged, _ = sink.merged()
    with open_logs(str(tmp_path)) as db:
        assert {"auctions", "decisions", "run_decisions"} <= db.views
        got = db.sql("SELECT task_id, winner, passed FROM auctions ORDER BY task_id").fetchall()
    want = sorted(
        zip(*(merged.column(c).to_pylist() for c in ("task_id", "winner", "passed")), strict=True)
    )
    assert got == want
    assert dict((t, w) for t, w, _ in got) == {
        "t0": "small",
        "t1": "large",  # the final file's done row wins over the later duplicate
        "t2": "small",
        "t3": "large",
        "t4": "small",  # the refusal was replaced by the part's done row
        "t5": "small",
    }


def test_spend_per_agent_per_day_adds_up_to_each_days_spend(tmp_path):
    write_run_log(tmp_path)
    rows = run_query("spend_per_agent_per_day", str(tmp_path)).to_pylist()
    days = sorted({r["day"] for r in rows})
    assert [d.isoformat() for d in days] == ["2024-10-04", "2024-10-05"]
    by = {(r["day"].isoformat(), r["agent"]): r for r in rows}
    # day 1: three auctions, each with both bids; small executed t0 and t2, large t1
    assert by[("2024-10-04", "small")]["bid_usd"] == pytest.approx(3 * 100 * PRICE["small"])
    assert by[("2024-10-04", "small")]["execute_usd"] == pytest.approx(2 * 50 * PRICE["small"])
    assert by[("2024-10-04", "large")]["execute_usd"] == pytest.approx(50 * PRICE["large"])
    assert by[("2024-10-04", "(jury+refine)")]["spend_usd"] == pytest.approx(3 * 2e-6 + 1e-6)
    with open_logs(str(tmp_path)) as db:
        totals = dict(
            db.sql(
                "SELECT CAST(make_timestamp(CAST(started_at * 1e6 AS BIGINT)) AS DATE), "
                "sum(cost_usd) FROM auctions GROUP BY 1"
            ).fetchall()
        )
    for d in days:
        assert sum(r["spend_usd"] for r in rows if r["day"] == d) == pytest.approx(totals[d])


def test_reliance_on_largest_and_winner_share_per_day(tmp_path):
    write_run_log(tmp_path)
    rel = run_query("reliance_on_largest", str(tmp_path)).to_pylist()
    assert [(r["auctions"], r["largest_share"]) for r in rel] == [(3, 1 / 3), (3, 1 / 3)]
    hourly = run_query("reliance_on_largest", str(tmp_path), bucket_s=3600)
    assert hourly.num_rows == 2  # the tasks of a day start within seconds of each other
    share = run_query("winner_share_over_time", str(tmp_path)).to_pylist()
    assert [(r["agent"], r["won"]) for r in share] == [
        ("large", 1),
        ("small", 2),
        ("large", 1),
        ("small", 2),
    ]


def test_pass_at_1_per_bin_counts_only_verified_auctions(tmp_path):
    write_run_log(tmp_path)
    rows = run_query("pass_at_1_per_bin", str(tmp_path)).to_pylist()
    assert [(r["bin"], r["auctions"], r["passed"], r["pass_at_1"]) for r in rows] == [
        (0, 3, 2, 2 / 3),  # t0 passed, t2 failed, t4 passed
        (1, 3, 3, 1.0),  # t1, t3, t5
    ]
    phases = {r["phase"]: r for r in run_query("spend_per_phase", str(tmp_path)).to_pylist()}
    assert phases["refine"]["cost_usd"] == pytest.approx(1e-6)
    assert phases["jury"]["tokens"] == 6 * 20


def test_run_decisions_match_the_python_reading_of_a_final_log(tmp_path):
    write_run_log(tmp_path).finalize()
    py = decisions_from_auctions(pq.read_table(tmp_path / "auctions.parquet"))
    with open_logs(str(tmp_path)) as db:
        sql = db.sql('SELECT * EXCLUDE (started_at) FROM run_decisions ORDER BY "order"')
        sql = sql.to_arrow_table().to_pylist()
        stats = method_stats_sql(db)
    assert [(d["task_id"], d["agent"], d["largest"], d["passed"]) for d in sql] == [
        (d["task_id"], d["agent"], d["largest"], d["passed"]) for d in py
    ]
    _assert_same_stats(stats, method_stats(py))


@pytest.fixture(scope="module")
def eval_folder(tmp_path_factory):
    """A synthetic `sale-ray eval` folder (decisions, matrix, summary), made once (~10 s)."""
    path = tmp_path_factory.mktemp("eval")
    _write_eval_folder(path)
    return path


def _assert_same_stats(got, want):
    assert set(got) == set(want)
    for m in want:
        assert set(got[m]) == set(want[m]), m
        for k, v in want[m].items():
            if k == "per_bin":
                assert got[m][k].keys() == v.keys(), m
                for b, figures in v.items():
                    assert got[m][k][b] == pytest.approx(figures), (m, b)
            else:
                assert got[m][k] == (pytest.approx(v) if k != "notes" else v), (m, k)


def test_the_reports_sql_statistics_equal_the_evaluations(eval_folder):
    tmp_path = eval_folder
    rows = pq.read_table(tmp_path / "decisions.parquet").to_pylist()
    with open_logs(str(tmp_path)) as db:
        assert {"decisions", "matrix"} <= db.views
        stats = method_stats_sql(db)
        cells = query_db(db, "matrix_signal_cells")
    _assert_same_stats(stats, method_stats(rows))
    assert (
        "prompt" not in cells.column_names
        and cells.num_rows == pq.read_metadata(tmp_path / "matrix.parquet").num_rows
    )


def test_winner_share_over_stream_cuts_the_stream_as_the_report_did(eval_folder):
    tmp_path = eval_folder
    rows = pq.read_table(tmp_path / "decisions.parquet").to_pylist()
    got = run_query("winner_share_over_stream", str(tmp_path)).to_pylist()
    for m in {r["method"] for r in rows}:
        ds = sorted((d for d in rows if d["method"] == m), key=lambda d: d["order"])
        n = len(ds)
        for q in range(4):  # the quarters as ds[q * n // 4 : (q + 1) * n // 4]
            part = ds[q * n // 4 : (q + 1) * n // 4]
            mine = [r for r in got if r["method"] == m and r["part"] == q]
            assert {r["agent"]: r["won"] for r in mine} == {
                a: sum(d["agent"] == a for d in part) for a in {d["agent"] for d in part}
            }
            assert {r["tasks"] for r in mine} == {len(part)}


def test_memory_export_is_queried_as_memory(tmp_path):
    path = tmp_path / "memory.parquet"
    pq.write_table(entries_table(make_entries(range(5))), path)
    rows = run_query("memory_agents", str(path)).to_pylist()
    assert rows == [
        {"agent": "big", "bids": 5, "won": 5, "won_and_passed": 3},
        {"agent": "small", "bids": 5, "won": 0, "won_and_passed": 0},
    ]


def test_wrong_query_source_or_parameter_is_a_clear_user_error(tmp_path):
    write_run_log(tmp_path)
    with pytest.raises(UserError, match="needs a 'memory' log"):
        run_query("memory_agents", str(tmp_path))
    with pytest.raises(UserError, match="unknown query"):
        run_query("nope", str(tmp_path))
    with pytest.raises(UserError, match="takes \\['bucket_s'\\]"):
        run_query("reliance_on_largest", str(tmp_path), buckets=3)
    with pytest.raises(UserError, match="no decisions.parquet"):
        open_logs(str(tmp_path / "empty"))


def test_every_query_is_documented_in_docs_queries_md():
    from pathlib import Path

    from sale_ray.queries import markdown

    doc = (Path(__file__).parents[2] / "docs" / "queries.md").read_text()
    assert doc.endswith(markdown()), "regenerate: see docs/queries.md, 'The queries'"
    assert all(f"### `{name}`" in doc for name in QUERIES)


def test_the_command_line_prints_a_query(tmp_path, capsys):
    write_run_log(tmp_path)
    assert main(["pass_at_1_per_bin", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pass_at_1" in out and "0.6666" in out
    assert main(["--list"]) == 0 and "spend_per_agent_per_day" in capsys.readouterr().out
    assert main(["memory_agents", str(tmp_path)]) == 2


def test_unreachable_storage_is_an_infra_error_that_quotes_no_key(monkeypatch):
    from sale_ray.errors import InfraError

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekret-never-printed")
    with pytest.raises(InfraError, match="cannot read the logs") as e:
        open_logs("s3://bucket/run", endpoint_url="http://127.0.0.1:1")  # nothing listens
    assert "sekret" not in str(e.value) and "AKIDEXAMPLE" not in str(e.value)


def test_typed_failures_and_logs_older_than_them_merge_as_the_sink_does(tmp_path):
    """``failure = 'retriable'`` (an actor died) is replaced by a later result; ``'final'`` is a
    result; a file written before the ``failure`` column existed still reads."""
    died = _record(0, "small", False, error="execution by small failed: actor died")
    died = died.model_copy(update={"failure": "retriable"})
    gave_up = _record(1, "small", False, error="no valid bids").model_copy(
        update={"failure": "final"}
    )
    sink = ResultSink(str(tmp_path / "typed"))
    sink.add([died, gave_up])
    sink.finalize()
    sink.add([_record(0, "large", True), _record(1, "large", True)])
    sink.flush()
    with open_logs(str(tmp_path / "typed")) as db:
        got = db.sql("SELECT task_id, winner, failure FROM auctions ORDER BY task_id").fetchall()
    assert got == [("t0", "large", None), ("t1", None, "final")]
    merged, _ = sink.merged()
    cols = (merged.column(c).to_pylist() for c in ("task_id", "winner", "failure"))
    assert sorted(zip(*cols, strict=True)) == got

    old = tmp_path / "old"
    old.mkdir()
    table = records_table([_record(2, "small", True)])
    pq.write_table(table.drop_columns(["failure"]), old / "auctions.parquet")
    assert run_query("pass_at_1_per_bin", str(old)).column("passed").to_pylist() == [1]
