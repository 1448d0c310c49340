"""Ray Data as the batch door (sale_ray/data.py): tasks read with Ray Data from JSONL or
Parquet, local or on S3 (moto), auctioned through the batch path's auctioneer actor, and the
log written with Ray Data in the batch path's layout and schema: the same decisions, the
same readers (``sale-ray report``'s queries), and a bad row named in the error."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from sale_ray.batch import run_batch
from sale_ray.config import SaleConfig
from sale_ray.errors import TaskValidationError
from sale_ray.sink import filesystem
from sale_ray.types import AUCTION_SCHEMA
from tests.conftest_s3 import s3_bucket, s3_server  # noqa: F401 - until registered

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
N = 24

# Scripted agents decide from (seed, agent, task id) alone, and without memory one auction
# does not depend on another: two paths over the same tasks must pick the same winners.
POOL = {
    "pool": {
        "agents": [
            {
                "name": f"s{i}",
                "backend": "scripted",
                "model": "s",
                "max_concurrency": 256,
                "price_in_per_mtok": p,
                "price_out_per_mtok": p,
                "scripted": {"latency_ms": [5, 30], "seed": i, "quality": 0.6},
            }
            for i, p in enumerate([0.05, 0.16, 0.36])
        ]
    },
    "auctioneer": {"max_in_flight": 16},
    "memory": {"enabled": False},
}
CONFIG = SaleConfig.model_validate(POOL)


def task_rows(n=N):
    return [
        {
            "id": f"d{i:03d}",
            "prompt": f"what is {i} + 1?",
            "kind": "answer",
            "expected": str(i + 1),
            "bin": i % 5,
            "metadata": {"source": "test"},
        }
        for i in range(n)
    ]


def write_task_file(uri, rows, endpoint_url=None):
    """``rows`` as JSONL or as Parquet (with an extra column, as a dataset's file has)."""
    fs, path = filesystem(uri, endpoint_url=endpoint_url)
    if uri.endswith(".parquet"):
        t = pa.Table.from_pylist([dict(r, solution="unused") for r in rows])
        with fs.open_output_stream(path) as f:
            pq.write_table(t, f)
    else:
        with fs.open_output_stream(path) as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows).encode())


def read_log(out, endpoint_url=None):
    fs, root = filesystem(out, endpoint_url=endpoint_url)
    with fs.open_input_file(f"{root}/auctions.parquet") as f:
        return pq.read_table(f)


def winners(table):
    return dict(zip(*(table.column(c).to_pylist() for c in ("task_id", "winner")), strict=True))


@pytest.fixture(scope="module")
def batch_winners(ray_cluster, tmp_path_factory):
    """Today's batch path (run_batch) on the same tasks: the decisions to match."""
    d = tmp_path_factory.mktemp("batch")
    write_task_file(str(d / "tasks.jsonl"), task_rows())
    res = asyncio.run(run_batch(str(d / "tasks.jsonl"), str(d / "out"), CONFIG, progress=False))
    assert res.written == N
    return winners(pq.read_table(res.path))


@pytest.mark.parametrize(
    "fmt,where", [("jsonl", "local"), ("parquet", "local"), ("jsonl", "s3"), ("parquet", "s3")]
)
def test_tasks_read_auctioned_and_logged_with_ray_data_decide_as_the_batch_path(
    ray_cluster,
    batch_winners,
    tmp_path,
    s3_server,  # noqa: F811
    fmt,
    where,
):
    from sale_ray.data import AuctionSession, auction, read_tasks, write_auctions

    if where == "s3":
        bucket, url = s3_server.new_bucket(), s3_server.endpoint_url
        src, out = f"s3://{bucket}/in/tasks.{fmt}", f"s3://{bucket}/run"
    else:
        url, src, out = None, str(tmp_path / f"tasks.{fmt}"), str(tmp_path / "run")
    write_task_file(src, task_rows(), endpoint_url=url)

    tasks = read_tasks(src, endpoint_url=url)
    with AuctionSession(CONFIG) as session:
        result = write_auctions(
            auction(tasks, session, concurrency=2, batch_size=5), out, endpoint_url=url
        )

    log = read_log(out, endpoint_url=url)
    assert log.schema.equals(AUCTION_SCHEMA)  # the canonical row, not Ray Data's guess
    assert result.rows == log.num_rows == N and result.retriable == 0
    assert winners(log) == batch_winners  # the same decision on every task
    assert None not in batch_winners.values()
    assert set(log.column("bin").to_pylist()) == {0, 1, 2, 3, 4}
    assert result.summary.tasks == N
    if where == "local":  # the layout `sale-ray run` leaves: its readers read this log as well
        from sale_ray.queries import run_query

        assert sorted(os.listdir(out)) == ["auctions.parquet", "parts", "summary.json"]
        assert os.listdir(Path(out) / "parts") == []  # merged
        per_day = run_query("spend_per_agent_per_day", out)
        total = sum(per_day.column("spend_usd").to_pylist())
        assert total == pytest.approx(sum(log.column("cost_usd").to_pylist()))


def test_a_bad_jsonl_line_fails_the_read_naming_the_file_and_line(ray_cluster, tmp_path):
    from sale_ray.data import read_tasks

    rows = task_rows(5)
    rows[2]["prompt"] = "   "
    src = tmp_path / "tasks.jsonl"
    write_task_file(str(src), rows)
    with pytest.raises(TaskValidationError) as e:
        read_tasks(str(src)).take_all()
    assert f"{src}: line 3: prompt" in str(e.value)


def test_a_bad_parquet_row_on_s3_fails_the_read_naming_the_object_and_row(
    ray_cluster,
    s3_server,  # noqa: F811
    s3_bucket,  # noqa: F811
):
    from sale_ray.data import read_tasks

    rows = task_rows(4)
    rows[1]["id"] = "has spaces"
    src = f"s3://{s3_bucket}/tasks.parquet"
    write_task_file(src, rows, endpoint_url=s3_server.endpoint_url)
    with pytest.raises(TaskValidationError) as e:
        read_tasks(src, endpoint_url=s3_server.endpoint_url).take_all()
    assert f"{src}: row 2: id" in str(e.value)


def test_a_bad_row_of_any_dataset_is_named_by_its_id_when_auctioned(ray_cluster):
    import ray.data

    from sale_ray.data import auction

    rows = task_rows(3)
    rows[1]["kind"] = "essay"
    ds = ray.data.from_items(rows)  # not read_tasks: validated when auctioned
    with pytest.raises(TaskValidationError) as e:
        auction(ds, CONFIG, concurrency=1, batch_size=3)
    assert type(e.value) is TaskValidationError  # itself, not Ray's wrapper of it
    assert str(e.value).startswith("row with task id 'd001': kind: Input should be")


def test_tasks_refused_for_lack_of_money_are_rows_a_rerun_retries(ray_cluster):
    import ray.data

    from sale_ray.data import auction

    broke = CONFIG.model_copy(
        update={"auctioneer": CONFIG.auctioneer.model_copy(update={"budget_usd": 0.0})}
    )
    rows = auction(ray.data.from_items(task_rows(4)), broke, batch_size=2).take_all()
    assert sorted(r["task_id"] for r in rows) == [f"d{i:03d}" for i in range(4)]
    for r in rows:  # nothing ran, nothing spent, and resume will run it
        assert r["error"].startswith("budget exhausted") and r["failure"] == "retriable"
        assert r["winner"] is None and r["cost_usd"] == 0


def test_the_job_reads_auctions_and_writes_with_ray_data_and_resumes(ray_cluster, tmp_path):
    cfg, src, out = tmp_path / "pool.yaml", tmp_path / "tasks.jsonl", tmp_path / "run"
    cfg.write_text(yaml.safe_dump(POOL))
    write_task_file(str(src), task_rows())
    address = ray_cluster.get_runtime_context().gcs_address

    def job(*extra):
        cmd = [sys.executable, str(ROOT / "jobs/auction_dataset.py"), "--tasks", str(src)]
        cmd += ["--out", str(out), "--config", str(cfg), "--address", address, *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    first = job("--limit", "10")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "== sale-ray summary ==" in first.stdout
    before = pq.read_table(out / "auctions.parquet")
    assert before.num_rows == 10
    second = job()  # the rest: the first ten are not auctioned again
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{N} rows in the log (10 were there before)" in second.stdout
    after = pq.read_table(out / "auctions.parquet")
    assert sorted(after.column("task_id").to_pylist()) == [r["id"] for r in task_rows()]
    kept = set(before.column("auction_id").to_pylist())
    assert kept <= set(after.column("auction_id").to_pylist())  # the first ten, not rerun
