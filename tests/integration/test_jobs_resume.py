"""The batch job: killed mid-run and resumed (RELIABILITY row 2), and S3 in and out (moto).

The job runs as its own driver process (``python jobs/run_auctions.py``) attached to the
session's local cluster; killing that process kills its auctioneer and agents with it."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from sale_ray.batch import run_batch
from tests.conftest_s3 import s3_bucket, s3_server  # noqa: F401 - until registered

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

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
                "scripted": {"latency_ms": [10, 60], "seed": i},
            }
            for i, p in enumerate([0.05, 0.16, 0.36])
        ]
    },
    "auctioneer": {"max_in_flight": 50},
    "memory": {"enabled": False},  # resume / conservation only
}


def write_tasks(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {"id": f"t{i:05d}", "prompt": f"task {i}", "kind": "answer", "expected": "x"}
                )
                + "\n"
            )


def job(ray_address, tasks, out, cfg, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "jobs/run_auctions.py"),
            "--tasks",
            str(tasks),
            "--out",
            str(out),
            "--config",
            str(cfg),
            "--address",
            ray_address,
            "--no-progress",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def test_a_job_killed_mid_run_resumes_without_duplicates_or_gaps(ray_cluster, tmp_path):
    """RELIABILITY row 2."""
    address = ray_cluster.get_runtime_context().gcs_address
    cfg = tmp_path / "pool.yaml"
    cfg.write_text(yaml.safe_dump(POOL))
    tasks, out = tmp_path / "tasks.jsonl", tmp_path / "out"
    write_tasks(tasks, 800)

    first = job(address, tasks, out, cfg, "--flush-every", "50")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and first.poll() is None:
        parts = list((out / "parts").glob("part-*.parquet")) if out.exists() else []
        if len(parts) >= 3:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()[-2000:]  # still running: kill it now
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    partial = sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet"))
    assert 0 < partial < 800 and not (out / "auctions.parquet").exists()

    second = job(address, tasks, out, cfg, "--flush-every", "500")
    text, _ = second.communicate(timeout=180)
    assert second.returncode == 0, text[-3000:]
    assert f"skipped (already done) {partial}" in text
    lines = text.strip().splitlines()
    assert lines[-10] == "== sale-ray summary ==" or "== sale-ray summary ==" in lines[-12:]
    table = pq.read_table(out / "auctions.parquet")
    ids = table.column("task_id").to_pylist()
    assert len(ids) == len(set(ids)) == 800  # no duplicates, no gaps
    assert not list((out / "parts").glob("*.parquet"))
    assert {"task_id", "winner", "passed", "cost_usd", "bids"} <= set(table.column_names)


@pytest.fixture()
def s3():
    pytest.importorskip("moto")
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket="runs")
    yield url, client
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


def test_tasks_from_s3_results_to_s3_and_resume(ray_cluster, s3):
    url, client = s3
    body = "".join(
        json.dumps({"id": f"s{i}", "prompt": f"p {i}", "kind": "answer", "expected": "x"}) + "\n"
        for i in range(120)
    )
    client.put_object(Bucket="runs", Key="in/tasks.jsonl", Body=body.encode())
    from sale_ray.config import SaleConfig

    cfg = SaleConfig.model_validate(POOL)
    kw = dict(progress=False, endpoint_url=url, flush_rows=40)
    r1 = asyncio.run(run_batch("s3://runs/in/tasks.jsonl", "s3://runs/out", cfg, **kw))
    assert r1.written == 120 and r1.path == "s3://runs/out/auctions.parquet"
    r2 = asyncio.run(run_batch("s3://runs/in/tasks.jsonl", "s3://runs/out", cfg, **kw))
    assert r2.written == 0 and r2.skipped_done == 120
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="runs", Prefix="out/")["Contents"]}
    assert {"out/auctions.parquet", "out/summary.json"} <= keys
    assert not any(k.startswith("out/parts/part-") for k in keys)


# --- results on S3 appear only whole; a corrupt part never blocks a resume (issue 13, item 6) --
def _objects(server, bucket):
    return [k for k in server.keys(bucket) if not k.endswith("/")]  # not directory markers


def _half_then_fail(real):
    def write_table(self, table, *a, **k):
        real(self, table.slice(0, 1), *a, **k)
        raise RuntimeError("killed mid-write")

    return write_table


def test_an_exception_mid_write_on_s3_leaves_no_object_under_the_final_name(
    s3_server,  # noqa: F811
    s3_bucket,  # noqa: F811
    monkeypatch,
):
    """Closing a pyarrow S3 stream after an exception completes the upload: writing under the
    final name published a 1-row "part" here. Now nothing but whole files get a final name."""
    from sale_ray.sink import ResultSink
    from tests.unit.test_sink import rec

    uri = f"s3://{s3_bucket}/out"
    s = ResultSink(uri, endpoint_url=s3_server.endpoint_url, flush_rows=100)
    s.add([rec(f"t{i}") for i in range(5)])
    monkeypatch.setattr(
        pq.ParquetWriter, "write_table", _half_then_fail(pq.ParquetWriter.write_table)
    )
    with pytest.raises(RuntimeError):
        s.flush()
    with pytest.raises(RuntimeError):
        s.finalize()
    monkeypatch.undo()
    assert _objects(s3_server, s3_bucket) == []  # no part, no final file, no temp debris
    s.finalize()
    assert _objects(s3_server, s3_bucket) == ["out/auctions.parquet"]
    assert ResultSink(uri, endpoint_url=s3_server.endpoint_url).done_ids() == {
        f"t{i}" for i in range(5)
    }


def test_a_corrupt_part_on_s3_is_quarantined_and_resume_goes_on(
    s3_server,  # noqa: F811
    s3_bucket,  # noqa: F811
    caplog,
):
    from sale_ray.sink import ResultSink
    from tests.unit.test_sink import rec

    uri, ep = f"s3://{s3_bucket}/out", s3_server.endpoint_url
    s = ResultSink(uri, endpoint_url=ep, flush_rows=1)
    for i in range(3):
        s.add([rec(f"t{i}")])
    bad = sorted(k for k in s3_server.keys(s3_bucket) if k.startswith("out/parts/part-"))[1]
    body = s3_server.client.get_object(Bucket=s3_bucket, Key=bad)["Body"].read()
    s3_server.client.put_object(Bucket=s3_bucket, Key=bad, Body=body[: len(body) // 2])
    s2 = ResultSink(uri, endpoint_url=ep, flush_rows=1)
    with caplog.at_level("WARNING", logger="sale_ray.sink"):
        assert s2.done_ids() == {"t0", "t2"}
    assert len(s2.quarantined) == 1 and any("moved to" in r.getMessage() for r in caplog.records)
    s2.add([rec("t1")])
    _, table, _ = s2.finalize()
    assert sorted(table.column("task_id").to_pylist()) == ["t0", "t1", "t2"]
    keys = s3_server.keys(s3_bucket)
    assert [k for k in keys if k.startswith("out/parts/_quarantine/")] != []
    assert not [k for k in keys if k.startswith("out/parts/part-")]
