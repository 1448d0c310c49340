"""`sale-ray snapshot` against live systems: `take` from running shard actors on the test Ray
cluster, and the read-side commands against a real S3 server (moto on 127.0.0.1)."""

from __future__ import annotations

import uuid

import pyarrow.parquet as pq
import pytest
import yaml

from sale_ray.cli import main
from sale_ray.memory import snapshot as snap
from sale_ray.memory.config import MemoryConfig, StorageConfig
from sale_ray.memory.sharded import ShardedMemory
from tests.conftest_s3 import s3_bucket, s3_server, s3_storage  # noqa: F401 - until registered
from tests.memory_entries import make_entries

pytestmark = pytest.mark.integration


def entries(ids):
    return make_entries(ids, lambda i: f"task {i}: parse {['dates', 'json', 'csv'][i % 3]}")


def test_take_snapshots_the_running_memory_by_actor_name(ray_cluster, tmp_path, capsys):
    ray = ray_cluster
    from sale_ray.memory.remote import start_memory

    cfg = MemoryConfig(
        shards=2,
        embedder="hashing",
        actor_name_prefix=f"snapcli-{uuid.uuid4().hex[:8]}",
        restore_on_start=False,
    )
    mem = start_memory(cfg)  # the memory's owner, as a batch job or the Serve app would be
    try:
        assert mem.write(entries(range(12))) == 12
        config = tmp_path / "sale.yaml"
        config.write_text(yaml.safe_dump({"memory": cfg.model_dump()}))
        snaps = tmp_path / "snaps"

        # Ray is already initialised in this process (the fixture): `take` reuses it
        code = main(["snapshot", "take", "--config", str(config), "--to", str(snaps)])

        out = capsys.readouterr().out
        assert code == 0
        m = snap.read_manifest(str(snaps))
        assert m is not None and m.shards == 2 and m.embedder == "hashing-v1/384"
        assert out.strip() == (
            f"snapshot {m.snapshot_id} committed to {snaps}: "
            f"rows 12, files 2, bytes {sum(f.bytes for f in m.files)}"
        )
        assert ray.is_initialized()  # not ours to shut down

        # a fresh memory restored from it holds exactly what the live shards hold
        restored = ShardedMemory.local(
            MemoryConfig(shards=2, embedder="hashing"), StorageConfig(snapshot_uri=str(snaps))
        )
        live = mem.shard_tables()
        assert [t.to_pylist() for t in restored.shard_tables()] == [t.to_pylist() for t in live]
        assert mem.stats()["records"] == 12  # taking a snapshot changed nothing

        # a config that names more shards than are running is refused, nothing is written
        config.write_text(yaml.safe_dump({"memory": {**cfg.model_dump(), "shards": 3}}))
        code = main(["snapshot", "take", "--config", str(config), "--to", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 1 and f"memory '{cfg.actor_name_prefix}' (3 shards) not found" in err
        assert not (tmp_path / "x").exists()
    finally:
        for h in mem.pool.handles:
            ray.kill(h, no_restart=True)


def test_read_side_commands_on_s3(s3_server, s3_storage, tmp_path, capsys):  # noqa: F811
    mem = ShardedMemory.local(MemoryConfig(shards=2, embedder="hashing"), s3_storage)
    mem.write(entries(range(10)))
    first = mem.snapshot()
    mem.write(entries(range(10, 16)))
    latest = mem.snapshot()
    uri, s3 = s3_storage.snapshot_uri, ["--endpoint-url", s3_server.endpoint_url]

    def run(*argv):
        code = main(["snapshot", *argv])
        return code, capsys.readouterr().out

    code, out = run("ls", uri, *s3)
    assert code == 0
    newest, older = out.splitlines()[1:]
    assert newest.startswith(f"* {latest.snapshot_id}") and newest.split()[3:5] == ["2", "16"]
    assert older.startswith(f"  {first.snapshot_id}") and older.split()[2:4] == ["2", "10"]

    code, out = run("show", uri, "--verify", *s3)
    assert code == 0 and "rows            16" in out and "verify: OK (2 files, 16 rows)" in out

    code, _ = run("export", uri, "--out", str(tmp_path / "m.parquet"), *s3)
    assert code == 0 and pq.read_table(tmp_path / "m.parquet").num_rows == 16

    code, out = run("prune", uri, "--keep", "1", *s3)
    assert code == 0 and f"deleted {first.snapshot_id}" in out
    bucket = uri.split("/")[2]
    assert not [k for k in s3_server.keys(bucket) if first.snapshot_id in k]

    # storage errors are one line and exit 1, not a traceback
    code = main(["snapshot", "ls", "s3://no-such-bucket-here/x", *s3])
    assert code == 1 and "sale-ray: failed: S3: " in capsys.readouterr().err
