"""`sale-ray report s3://…`: an evaluation folder uploaded to a real S3 server (moto on
127.0.0.1) is read with pyarrow and reported exactly like the local folder."""

import pytest

from sale_ray.cli import main
from sale_ray.evaluation.analytics import write_report
from tests.conftest_s3 import s3_bucket, s3_server  # noqa: F401 - until registered
from tests.unit.test_analytics import _write_eval_folder

pytestmark = pytest.mark.integration


def test_report_reads_the_logs_from_s3(tmp_path, s3_server, s3_bucket):  # noqa: F811
    local = tmp_path / "eval"
    local.mkdir()
    _write_eval_folder(local)
    for f in local.iterdir():
        s3_server.client.upload_file(str(f), s3_bucket, f"runs/eval/{f.name}")
    src = f"s3://{s3_bucket}/runs/eval"
    md = write_report(src, tmp_path / "from-s3", endpoint_url=s3_server.endpoint_url, plots=False)
    expected = write_report(str(local), tmp_path / "from-disk", plots=False)
    assert md.read_text().replace(src, "X") == expected.read_text().replace(str(local), "X")
    assert (
        main(
            [
                "report",
                src,
                "--out",
                str(tmp_path / "cli"),
                "--no-plots",
                "--endpoint-url",
                s3_server.endpoint_url,
            ]
        )
        == 0
    )
    assert main(["report", src]) == 2  # an s3 source needs --out


def test_named_queries_read_a_run_log_on_s3_in_place(tmp_path, s3_server, s3_bucket):  # noqa: F811
    """DuckDB's httpfs (loaded from its wheel, no download) reads the final file and the parts of
    a run still going straight from S3, with the same answers as from a local folder."""
    from sale_ray.queries import QUERIES, run_query
    from tests.unit.test_queries import write_run_log

    src = f"s3://{s3_bucket}/runs/live"
    write_run_log(src, {"endpoint_url": s3_server.endpoint_url})
    write_run_log(tmp_path / "live")
    assert any("/parts/part-" in k for k in s3_server.keys(s3_bucket))  # not merged yet
    for name, q in QUERIES.items():
        if q.view != "auctions":
            continue
        remote = run_query(name, src, endpoint_url=s3_server.endpoint_url).to_pylist()
        local = run_query(name, str(tmp_path / "live")).to_pylist()
        assert len(remote) == len(local) > 0, name
        for got, want in zip(remote, local, strict=True):  # sums may differ in the last bit
            assert got.keys() == want.keys(), name
            for k, v in want.items():
                assert got[k] == (pytest.approx(v) if isinstance(v, float) else v), (name, k)


def test_a_memory_export_on_s3_is_queried_in_place(tmp_path, s3_server, s3_bucket):  # noqa: F811
    import pyarrow.parquet as pq

    from sale_ray.memory.entry import entries_table
    from sale_ray.queries import run_query
    from tests.memory_entries import make_entries

    pq.write_table(entries_table(make_entries(range(4))), tmp_path / "memory.parquet")
    s3_server.client.upload_file(str(tmp_path / "memory.parquet"), s3_bucket, "exports/m.parquet")
    rows = run_query(
        "memory_agents", f"s3://{s3_bucket}/exports/m.parquet", endpoint_url=s3_server.endpoint_url
    )
    assert (
        rows.to_pylist() == run_query("memory_agents", str(tmp_path / "memory.parquet")).to_pylist()
    )
    assert rows.column("won").to_pylist() == [4, 0]
