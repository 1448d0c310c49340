"""Snapshots through a real S3 server (moto, 127.0.0.1): pyarrow writes data, boto3 the pointer."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from sale_ray.memory import snapshot as snap
from sale_ray.memory.config import MemoryConfig
from sale_ray.memory.embed import HashingEmbedder
from sale_ray.memory.sharded import ShardedMemory
from tests.conftest_s3 import s3_bucket, s3_server, s3_storage  # noqa: F401 - until registered
from tests.memory_entries import make_entries

pytestmark = pytest.mark.integration


def entries(ids):
    return make_entries(ids, lambda i: f"task {i}: sort {i % 7} lists")


def memory(storage, shards=3) -> ShardedMemory:
    cfg = MemoryConfig(shards=shards, embedder="hashing")
    return ShardedMemory.local(cfg, storage, embedder=HashingEmbedder())


def test_snapshot_and_restore_through_s3(s3_server, s3_storage):  # noqa: F811
    m = memory(s3_storage)
    m.write(entries(range(120)))
    manifest = m.snapshot()
    bucket = s3_storage.snapshot_uri.split("/")[2]
    keys = s3_server.keys(bucket)
    assert "snapshots/LATEST" in keys and not [k for k in keys if k.endswith("/")]  # no dir keys
    # boto3 sees exactly what the manifest promises (pyarrow wrote it)
    for f in manifest.files:
        body = s3_server.client.get_object(Bucket=bucket, Key=f"snapshots/{f.path}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == f.sha256 and len(body) == f.bytes
    pointer = json.loads(
        s3_server.client.get_object(Bucket=bucket, Key="snapshots/LATEST")["Body"].read()
    )
    assert pointer["snapshot_id"] == manifest.snapshot_id

    again = memory(s3_storage)  # a fresh memory restores on start
    assert again.last_snapshot == manifest.snapshot_id
    assert all(a.equals(b) for a, b in zip(m.shard_tables(), again.shard_tables(), strict=True))
    q = ["task 5: sort 5 lists"]
    assert [h.entry.auction_id for h in again.search(q)[0]] == [
        h.entry.auction_id for h in m.search(q)[0]
    ]


@pytest.mark.parametrize("stage", ["data", "manifest", "before_pointer"])
def test_crash_mid_snapshot_on_s3_keeps_previous(s3_storage, stage):  # noqa: F811
    m = memory(s3_storage)
    m.write(entries(range(50)))
    m.snapshot()
    old = m.shard_tables()
    m.write(entries(range(50, 80)))

    def hook(s, path):
        if s == stage:
            raise RuntimeError("crash")

    store = snap.SnapshotStore(s3_storage.snapshot_uri, s3_storage)
    with pytest.raises(RuntimeError):
        snap.write_snapshot(m, store, hook=hook)
    back = snap.restore_snapshot(s3_storage.snapshot_uri, s3_storage)
    assert all(a.equals(b) for a, b in zip(old, back, strict=True))


def test_pointer_compare_and_swap_refuses_a_stale_writer(s3_storage):  # noqa: F811
    tables = memory(s3_storage).shard_tables()
    store = snap.SnapshotStore(s3_storage.snapshot_uri, s3_storage)
    first = snap.write_snapshot(tables, store)
    _, etag = store.read_pointer()

    def racer(stage, path):  # another writer commits while we are between manifest and pointer
        if stage == "before_pointer":
            snap.write_snapshot(tables, snap.SnapshotStore(s3_storage.snapshot_uri, s3_storage))

    with pytest.raises(snap.SnapshotConflict, match="LATEST: moved by another writer"):
        snap.write_snapshot(tables, store, hook=racer)
    latest = snap.read_manifest(store)
    assert latest is not None and latest.snapshot_id not in (first.snapshot_id,)
    assert etag != store.read_pointer()[1]


def test_corrupt_object_on_s3_is_named(s3_server, s3_storage):  # noqa: F811
    m = memory(s3_storage, shards=2)
    m.write(entries(range(20)))
    manifest = m.snapshot()
    bucket = s3_storage.snapshot_uri.split("/")[2]
    key = f"snapshots/{manifest.files[1].path}"
    size = manifest.files[1].bytes
    # the size (from a HEAD) is checked against the manifest before anything is read ...
    s3_server.client.put_object(Bucket=bucket, Key=key, Body=b"garbage")
    with pytest.raises(snap.SnapshotError, match=rf"s3://{bucket}/{key}: 7 bytes, manifest says"):
        memory(s3_storage, shards=2)
    # ... and a same-size replacement fails its sha256
    s3_server.client.put_object(Bucket=bucket, Key=key, Body=b"g" * size)
    with pytest.raises(snap.SnapshotError, match=rf"s3://{bucket}/{key}: checksum mismatch"):
        memory(s3_storage, shards=2)
    with pytest.raises(snap.SnapshotError):
        m.restore()  # a live memory is left as it was
    assert m.stats()["records"] == 20
    assert np.isfinite(m.search(["task 1"])[0][0].score)


def test_a_pointer_without_sha256_is_refused_on_s3(s3_server, s3_storage):  # noqa: F811
    m = memory(s3_storage, shards=1)
    m.write(entries(range(5)))
    m.snapshot()
    bucket = s3_storage.snapshot_uri.split("/")[2]
    pointer = json.loads(
        s3_server.client.get_object(Bucket=bucket, Key="snapshots/LATEST")["Body"].read()
    )
    pointer.pop("sha256")
    s3_server.client.put_object(Bucket=bucket, Key="snapshots/LATEST", Body=json.dumps(pointer))
    with pytest.raises(snap.SnapshotError, match=r"/LATEST: missing or invalid sha256"):
        snap.restore_snapshot(s3_storage.snapshot_uri, s3_storage)
