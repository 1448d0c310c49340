"""A real S3-compatible server for tests: moto in server mode on 127.0.0.1 (one per session).

Register with ``pytest_plugins = ["tests.conftest_s3"]`` in the top-level ``tests/conftest.py``.
boto3, ``pyarrow.fs.S3FileSystem`` and Ray workers all reach it over HTTP (moto's in-process
``mock_aws`` reaches none of the latter two). Credentials are dummies, set in the environment
so that child processes (Ray workers) inherit them.

Fixtures:

* ``s3_server`` (session) — ``S3Server`` with ``endpoint_url`` and a boto3 ``client``.
* ``s3_bucket`` (function) — a fresh, empty bucket name on that server.
* ``s3_storage`` (function) — a ``StorageConfig`` for ``s3://<fresh bucket>/snapshots``.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest

_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # no 1-s IMDS probe from the AWS C++ SDK
}
# Set at import, before any fixture starts Ray: workers inherit the environment they start with.
# A worker without credentials sends unsigned aws-chunked uploads, which moto stores with the
# chunk framing inside the object (seen here: +52 bytes, checksum mismatch on restore).
for _k, _v in _ENV.items():
    os.environ.setdefault(_k, _v)


@dataclass
class S3Server:
    """A running moto server: where it listens and a client for it."""

    endpoint_url: str
    region: str = "us-east-1"
    _server: Any = None
    _client: Any = field(default=None, repr=False)

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region
            )
        return self._client

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        ):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out


_STATE: dict[str, Any] = {}


def start_s3_server() -> S3Server:
    """Start (once per process) and return the moto server; also usable from benchmarks."""
    if "server" in _STATE:
        return _STATE["server"]
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    _STATE["server"] = S3Server(endpoint_url=f"http://{host}:{port}", _server=server)
    return _STATE["server"]


def stop_s3_server() -> None:
    s = _STATE.pop("server", None)
    if s is not None:
        s._server.stop()


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on 127.0.0.1 for the whole session, stopped at the end."""
    server = start_s3_server()
    yield server
    stop_s3_server()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket (no cross-test leftovers)."""
    return s3_server.new_bucket()


@pytest.fixture
def s3_storage(s3_server: S3Server, s3_bucket: str):
    """``StorageConfig`` pointing snapshots at ``s3://<fresh bucket>/snapshots`` on the server."""
    from sale_ray.memory.config import StorageConfig

    return StorageConfig(
        snapshot_uri=f"s3://{s3_bucket}/snapshots",
        endpoint_url=s3_server.endpoint_url,
        region=s3_server.region,
    )
