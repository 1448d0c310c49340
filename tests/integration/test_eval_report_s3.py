"""`sale-ray report s3://…`: an evaluation folder uploaded to a real S3 server (moto on
127.0.0.1) is read with pyarrow and reported exactly like the local folder."""

import pytest

from sale_ray.analytics import write_report
from sale_ray.cli import main
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
