"""`sale-ray snapshot ls | show | export | prune` on a local folder, through the real CLI entry.

Snapshots are written with the library (`write_snapshot`), then inspected the way an operator
would: exit 0 on success, 1 when storage or a snapshot is bad, 2 when the command line is.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sale_ray.cli import main
from sale_ray.memory import snapshot as snap
from sale_ray.memory.entry import MemoryBid, MemoryEntry
from sale_ray.memory.shard import EMBEDDING, MemoryShard

DIM = 8


def shard_tables(n_shards: int, rows: int, seed: int = 0) -> list[pa.Table]:
    """`n_shards` shard tables of `rows` entries each, with random embeddings."""
    rng = np.random.default_rng(seed)
    tables = []
    for s in range(n_shards):
        shard = MemoryShard(dim=DIM)
        entries = [
            MemoryEntry(
                auction_id=f"a{seed}-{s}-{i}",
                task_id=f"t{s}-{i}",
                task_text=f"task {i} of shard {s}",
                created_at=float(i),
                winner="big",
                passed=bool(i % 2),
                bids=[
                    MemoryBid(agent="small", plan="p"),
                    MemoryBid(agent="big", plan="P", won=True),
                ],
            )
            for i in range(rows)
        ]
        shard.write(entries, rng.standard_normal((rows, DIM)).astype(np.float32))
        tables.append(shard.to_table())
    return tables


def take(folder: Path, n_shards: int, rows: int, seed: int = 0) -> snap.Manifest:
    """One committed snapshot. Ids are ms timestamps: keep consecutive ones in distinct ms."""
    time.sleep(0.003)
    return snap.write_snapshot(
        shard_tables(n_shards, rows, seed), str(folder), embedder="hashing-v1/8"
    )


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["snapshot", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# --- ls ---------------------------------------------------------------------------------------
def test_ls_lists_newest_first_marks_latest_and_shows_debris(tmp_path, capsys):
    old = take(tmp_path, 2, 3, seed=1)
    new = take(tmp_path, 3, 5, seed=2)
    (tmp_path / "data" / "0000000000001-deadbeef").mkdir()  # a crashed writer's leftovers

    code, out, _ = run(capsys, "ls", str(tmp_path))

    assert code == 0
    header, first, second, third = out.splitlines()
    assert header.split() == ["snapshot_id", "created", "(UTC)", "shards", "rows", "bytes"]
    assert first.startswith(f"* {new.snapshot_id}")  # newest first, and LATEST points to it
    assert first.split()[3:5] == ["3", "15"]  # shards, rows
    assert first.split()[5] == str(sum(f.bytes for f in new.files))
    assert first.split()[2].endswith("Z")  # created, ISO 8601 UTC
    assert second.startswith(f"  {old.snapshot_id}") and second.split()[2:4] == ["2", "6"]
    assert third.split() == ["0000000000001-deadbeef", "debris", "(uncommitted)"]


def test_ls_of_an_empty_or_missing_location_is_an_empty_listing(tmp_path, capsys):
    for where in (tmp_path, tmp_path / "never-written"):
        code, out, err = run(capsys, "ls", str(where))
        assert (code, out) == (0, "")
        assert f"no snapshots at {where}" in err


def test_ls_marks_a_manifest_the_pointer_has_not_reached_as_uncommitted(tmp_path, capsys):
    committed = take(tmp_path, 1, 2)

    def crash(stage: str, path: str) -> None:
        if stage == "before_pointer":
            raise RuntimeError("crash")

    time.sleep(0.003)
    with pytest.raises(RuntimeError):
        snap.write_snapshot(shard_tables(1, 4), str(tmp_path), hook=crash)

    _, out, _ = run(capsys, "ls", str(tmp_path))

    pending, latest = out.splitlines()[1:]
    assert pending.endswith("uncommitted (in progress or crashed)")
    assert latest.startswith(f"* {committed.snapshot_id}")


# --- show -------------------------------------------------------------------------------------
def test_show_prints_the_latest_manifest(tmp_path, capsys):
    take(tmp_path, 1, 1)
    m = take(tmp_path, 2, 4)

    code, out, _ = run(capsys, "show", str(tmp_path))

    assert code == 0
    assert f"snapshot        {m.snapshot_id} (LATEST)" in out
    for line in ("schema_version  1", "embedder        hashing-v1/8", "dim             8"):
        assert line in out
    assert "rows            8" in out
    for f in m.files:
        row = next(r for r in out.splitlines() if f.path in r).split()
        assert row == [f.path, str(f.shard), str(f.rows), str(f.bytes), f.sha256[:12]]
    assert "verify" not in out  # reading the data is opt-in


def test_show_verify_reads_every_file(tmp_path, capsys):
    take(tmp_path, 3, 4)
    code, out, _ = run(capsys, "show", str(tmp_path), "--verify")
    assert code == 0
    assert "verify: OK (3 files, 12 rows)" in out


def test_show_verify_names_a_corrupted_file_and_exits_1(tmp_path, capsys):
    m = take(tmp_path, 2, 4)
    victim = tmp_path / m.files[1].path
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))

    code, out, err = run(capsys, "show", str(tmp_path), "--verify")

    assert code == 1
    assert f"verify: FAILED {tmp_path}/{m.files[1].path}: checksum mismatch" in out
    assert m.files[0].path not in out.split("verify:", 1)[1]  # the good file is not blamed
    assert err.startswith("sale-ray: failed: verify failed: ") and m.files[1].path in err
    assert len(err.splitlines()) == 1  # one line, no traceback


def test_show_without_a_snapshot_exits_1(tmp_path, capsys):
    code, out, err = run(capsys, "show", str(tmp_path))
    assert (code, out) == (1, "")
    assert f"no snapshot at {tmp_path}" in err


# --- export -----------------------------------------------------------------------------------
def test_export_writes_every_shards_rows_without_the_embedding(tmp_path, capsys):
    tables = shard_tables(3, 5, seed=7)
    m = snap.write_snapshot(tables, str(tmp_path / "snaps"), embedder="hashing-v1/8")
    out_file = tmp_path / "analytics" / "memory.parquet"  # parent created on demand

    code, out, _ = run(capsys, "export", str(tmp_path / "snaps"), "--out", str(out_file))

    assert code == 0 and out.strip() == f"wrote {out_file}: 15 rows from snapshot {m.snapshot_id}"
    exported = pq.read_table(out_file)
    assert EMBEDDING not in exported.column_names
    assert exported.to_pylist() == pa.concat_tables(tables).drop_columns([EMBEDDING]).to_pylist()
    assert not [p for p in out_file.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_export_with_embedding_keeps_the_vectors(tmp_path, capsys):
    tables = shard_tables(2, 3)
    snap.write_snapshot(tables, str(tmp_path / "snaps"))
    out_file = tmp_path / "m.parquet"

    code, _, _ = run(
        capsys, "export", str(tmp_path / "snaps"), "--out", str(out_file), "--with-embedding"
    )

    assert code == 0
    exported = pq.read_table(out_file)
    assert (
        exported.column(EMBEDDING).to_pylist()
        == pa.concat_tables(tables).column(EMBEDDING).to_pylist()
    )


def test_export_refuses_to_overwrite_unless_forced(tmp_path, capsys):
    take(tmp_path / "snaps", 1, 2)
    out_file = tmp_path / "m.parquet"
    out_file.write_text("precious")

    code, _, err = run(capsys, "export", str(tmp_path / "snaps"), "--out", str(out_file))
    assert code == 2 and "exists; pass --force" in err
    assert out_file.read_text() == "precious"

    code, _, _ = run(capsys, "export", str(tmp_path / "snaps"), "--out", str(out_file), "--force")
    assert code == 0 and pq.read_table(out_file).num_rows == 2


def test_export_without_a_snapshot_exits_1_and_writes_nothing(tmp_path, capsys):
    out_file = tmp_path / "m.parquet"
    code, _, err = run(capsys, "export", str(tmp_path / "empty"), "--out", str(out_file))
    assert code == 1 and "no snapshot at" in err
    assert not out_file.exists()


# --- prune ------------------------------------------------------------------------------------
def test_prune_keeps_the_newest_and_says_what_it_deleted(tmp_path, capsys):
    ms = [take(tmp_path, 1, 2, seed=i) for i in range(4)]
    (tmp_path / "data" / "0000000000001-deadbeef").mkdir()

    code, out, _ = run(capsys, "prune", str(tmp_path), "--keep", "2")

    assert code == 0
    deleted = [line for line in out.splitlines() if line.startswith("deleted")]
    assert deleted == [
        "deleted 0000000000001-deadbeef (debris)",
        f"deleted {ms[0].snapshot_id}",
        f"deleted {ms[1].snapshot_id}",
    ]
    assert sorted(p.stem for p in (tmp_path / "manifests").iterdir()) == [
        ms[2].snapshot_id,
        ms[3].snapshot_id,
    ]
    assert snap.read_manifest(str(tmp_path)) == ms[3]  # the latest still restores


def test_prune_with_nothing_to_delete(tmp_path, capsys):
    take(tmp_path, 1, 1)
    code, out, _ = run(capsys, "prune", str(tmp_path), "--keep", "3")
    assert code == 0 and "deleted" not in out and out.startswith("pruned 0")


def test_prune_keep_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: usage error
        main(["snapshot", "prune", str(tmp_path), "--keep", "0"])
    assert e.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


# --- command-line mistakes are exit 2, before anything is read or connected ---------------------
def test_unsupported_uri_is_a_user_error(capsys):
    code, _, err = run(capsys, "ls", "http://example.com/snaps")
    assert code == 2 and "snapshot_uri: " in err and "s3://" in err


def test_bad_endpoint_is_a_user_error(tmp_path, capsys):
    code, _, err = run(capsys, "ls", "s3://bucket/x", "--endpoint-url", "127.0.0.1:9000")
    assert code == 2 and "endpoint_url" in err and "http://" in err


def test_take_needs_named_shard_actors(tmp_path, capsys):
    cfg = tmp_path / "sale.yaml"
    cfg.write_text(f"storage:\n  snapshot_uri: {tmp_path / 'snaps'}\n")
    code, _, err = run(capsys, "take", "--config", str(cfg))
    assert code == 2
    assert err.strip() == (
        f"sale-ray: error: {cfg}: memory.actor_name_prefix is not set; `snapshot take` finds "
        "the running shard actors by that name (set it in the config the memory is started with)"
    )


def test_take_needs_somewhere_to_write(tmp_path, capsys):
    cfg = tmp_path / "sale.yaml"
    cfg.write_text("memory:\n  actor_name_prefix: sale-memory\n")
    code, _, err = run(capsys, "take", "--config", str(cfg))
    assert code == 2 and "pass --to URI or set storage.snapshot_uri" in err
