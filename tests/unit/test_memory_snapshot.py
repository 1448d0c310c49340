"""Snapshots to a local folder: round trip, crash points (RELIABILITY rows 4, 15), bad files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sale_ray.memory import snapshot as snap
from sale_ray.memory.entry import MemoryBid, MemoryEntry
from sale_ray.memory.shard import MemoryShard

DIM = 8


class Crash(Exception):
    pass


def shard_tables(n_shards: int, rows: int, seed: int) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_shards):
        shard = MemoryShard(dim=DIM)
        es = [
            MemoryEntry(
                auction_id=f"s{seed}-{s}-{i}",
                task_id=f"t{i}",
                task_text=f"task {i} ünï",
                created_at=float(i),
                winner="big" if i % 3 else None,
                passed=[True, False, None][i % 3],
                bids=[
                    MemoryBid(agent="small", plan="plan\n" * i),
                    MemoryBid(agent="big", plan="B", won=bool(i % 3)),
                ],
            )
            for i in range(rows)
        ]
        shard.write(es, rng.standard_normal((rows, DIM)).astype(np.float32))
        out.append(shard.to_table())
    return out


def crash_at(stage: str, nth: int = 1):
    seen = {"n": 0}

    def hook(s: str, path: str) -> None:
        if s == stage:
            seen["n"] += 1
            if seen["n"] == nth:
                raise Crash(f"{stage} {path}")

    return hook


def test_round_trip_local(tmp_path):
    tables = shard_tables(3, 40, seed=1)
    m = snap.write_snapshot(tables, str(tmp_path), embedder="hashing")
    assert m.shards == 3 and m.total_rows == 120 and m.schema_version == snap.SCHEMA_VERSION
    assert [f.rows for f in m.files] == [40, 40, 40] and all(len(f.sha256) == 64 for f in m.files)
    back = snap.restore_snapshot(str(tmp_path))
    assert all(a.equals(b) for a, b in zip(tables, back, strict=True))
    assert snap.read_manifest(f"file://{tmp_path}") == m


def test_no_snapshot_yet(tmp_path):
    assert snap.restore_snapshot(str(tmp_path / "nothing")) == []
    assert snap.read_manifest(str(tmp_path / "nothing")) is None


@pytest.mark.parametrize(
    "stage,nth",
    [("data", 1), ("data", 2), ("data", 3), ("manifest", 1), ("before_pointer", 1)],
)
def test_crash_before_commit_keeps_previous_snapshot(tmp_path, stage, nth):
    old = shard_tables(3, 20, seed=1)
    snap.write_snapshot(old, str(tmp_path))
    new = shard_tables(3, 25, seed=2)
    with pytest.raises(Crash):
        snap.write_snapshot(new, str(tmp_path), hook=crash_at(stage, nth))
    back = snap.restore_snapshot(str(tmp_path))
    assert all(a.equals(b) for a, b in zip(old, back, strict=True))


def test_crash_on_first_snapshot_leaves_none(tmp_path):
    with pytest.raises(Crash):
        snap.write_snapshot(shard_tables(2, 5, 1), str(tmp_path), hook=crash_at("before_pointer"))
    assert snap.restore_snapshot(str(tmp_path)) == []


def test_crash_after_pointer_exposes_the_new_snapshot(tmp_path):
    snap.write_snapshot(shard_tables(3, 20, seed=1), str(tmp_path))
    new = shard_tables(3, 25, seed=2)
    with pytest.raises(Crash):
        snap.write_snapshot(new, str(tmp_path), hook=crash_at("pointer"))
    back = snap.restore_snapshot(str(tmp_path))
    assert all(a.equals(b) for a, b in zip(new, back, strict=True))


def test_snapshots_never_overwrite_files(tmp_path):
    snap.write_snapshot(shard_tables(2, 5, 1), str(tmp_path))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.parquet")}
    snap.write_snapshot(shard_tables(2, 5, 2), str(tmp_path))
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert len(list(tmp_path.glob("manifests/*.json"))) == 2


def _latest(tmp_path: Path) -> tuple[dict, Path]:
    pointer = json.loads((tmp_path / snap.POINTER).read_text())
    return pointer, tmp_path / pointer["manifest"]


def _rewrite(tmp_path: Path, manifest: dict | bytes | str, **pointer_fields) -> Path:
    """Replace the latest manifest and re-point LATEST at it with a matching sha256: what a
    writer (or an attacker) with write access to the location can do."""
    pointer, mpath = _latest(tmp_path)
    if isinstance(manifest, dict):
        manifest = json.dumps(manifest)
    body = manifest.encode() if isinstance(manifest, str) else manifest
    mpath.write_bytes(body)
    pointer.update(sha256=hashlib.sha256(body).hexdigest(), **pointer_fields)
    (tmp_path / snap.POINTER).write_text(json.dumps(pointer))
    return mpath


def test_corrupt_data_file_is_named_and_nothing_changes(tmp_path):
    snap.write_snapshot(shard_tables(2, 10, 1), str(tmp_path))
    _, mpath = _latest(tmp_path)
    victim = tmp_path / json.loads(mpath.read_text())["files"][1]["path"]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(snap.SnapshotError, match="shard-00001-0000.parquet: checksum mismatch"):
        snap.restore_snapshot(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == listing


def test_truncated_parquet_with_matching_manifest_is_named(tmp_path):
    # A writer bug (not bit rot): the manifest's checksum matches, the file is not Parquet.
    snap.write_snapshot(shard_tables(1, 10, 1), str(tmp_path))
    pointer, mpath = _latest(tmp_path)
    manifest = json.loads(mpath.read_text())
    f = manifest["files"][0]
    junk = b"PAR1 but not really"
    (tmp_path / f["path"]).write_bytes(junk)
    f.update(bytes=len(junk), sha256=hashlib.sha256(junk).hexdigest())
    _rewrite(tmp_path, manifest)
    with pytest.raises(
        snap.SnapshotError, match="shard-00000-0000.parquet: not a readable Parquet"
    ):
        snap.restore_snapshot(str(tmp_path))


def test_malformed_manifest_and_pointer_are_named(tmp_path):
    snap.write_snapshot(shard_tables(1, 3, 1), str(tmp_path))
    pointer, mpath = _latest(tmp_path)
    mpath.write_text("{not json")
    with pytest.raises(snap.SnapshotError, match=rf"{mpath.name}: sha256 does not match"):
        snap.restore_snapshot(str(tmp_path))
    _rewrite(tmp_path, "{not json")
    with pytest.raises(snap.SnapshotError, match=rf"{mpath.name}: not valid JSON"):
        snap.restore_snapshot(str(tmp_path))
    _rewrite(tmp_path, {"schema_version": 1, "snapshot_id": "x"})
    with pytest.raises(snap.SnapshotError, match=rf"{mpath.name}: malformed manifest"):
        snap.restore_snapshot(str(tmp_path))
    (tmp_path / snap.POINTER).write_text("[]")
    with pytest.raises(snap.SnapshotError, match=r"LATEST: not a JSON object"):
        snap.restore_snapshot(str(tmp_path))


def test_future_schema_version_is_refused_naming_the_file(tmp_path):
    snap.write_snapshot(shard_tables(1, 3, 1), str(tmp_path))
    pointer, mpath = _latest(tmp_path)
    manifest = json.loads(mpath.read_text())
    manifest["schema_version"] = snap.SCHEMA_VERSION + 1
    manifest["new_field"] = "from the future"
    _rewrite(tmp_path, manifest)
    pointer, _ = _latest(tmp_path)
    with pytest.raises(
        snap.SnapshotVersionError, match=rf"{mpath.name}: schema_version 2 is newer"
    ):
        snap.restore_snapshot(str(tmp_path))
    pointer["schema_version"] = 99
    (tmp_path / snap.POINTER).write_text(json.dumps(pointer))
    with pytest.raises(snap.SnapshotVersionError, match="LATEST: schema_version 99"):
        snap.restore_snapshot(str(tmp_path))


def test_wrong_columns_are_named(tmp_path):
    snap.write_snapshot(shard_tables(1, 3, 1), str(tmp_path))
    store = snap.SnapshotStore(str(tmp_path))
    bad = pa.table({"auction_id": ["x"]})
    info = snap.write_shard_file(store, "zzz", 0, bad)
    with pytest.raises(snap.SnapshotError, match=r"shard-00000-0000.parquet: missing columns"):
        snap.read_shard_file(store, info, DIM)


def test_local_pointer_compare_and_swap(tmp_path):
    store = snap.SnapshotStore(str(tmp_path))
    store.write_pointer(b"{}", None)
    with pytest.raises(snap.SnapshotConflict):
        store.write_pointer(b"{}", None)  # someone committed since we looked
    _, tag = store.read_pointer()
    store.write_pointer(b'{"a": 1}', tag)
    assert store.read_pointer()[0] == b'{"a": 1}'


def test_prune_keeps_newest_and_clears_crash_debris(tmp_path):
    uri = str(tmp_path)
    ids = [snap.write_snapshot(shard_tables(1, 3, s), uri).snapshot_id for s in range(4)]
    with pytest.raises(Crash):  # debris: data without a committed manifest
        snap.write_snapshot(shard_tables(1, 3, 9), uri, hook=crash_at("before_pointer"))
    debris = {p.name for p in (tmp_path / "data").iterdir()} - set(ids)
    assert len(debris) == 1
    store = snap.SnapshotStore(uri)
    # a newer snapshot in progress by another writer (data only, pointer not moved yet)
    newer = "9999999999999-inflight"
    snap.write_shard_file(store, newer, 0, shard_tables(1, 2, 5)[0])
    deleted = snap.prune_snapshots(uri, keep=2)
    assert sorted(deleted) == sorted(ids[:2] + [d for d in debris if d < ids[-1]])
    left = {p.name for p in (tmp_path / "data").iterdir()}
    assert left == {ids[2], ids[3], newer} | {d for d in debris if d > ids[-1]}
    # the crashed one wrote its manifest before dying; newer than the pointer, so it stays
    newer_debris = {d for d in debris if d > ids[-1]}
    assert {p.stem for p in (tmp_path / "manifests").iterdir()} == {ids[2], ids[3]} | newer_debris
    assert snap.read_manifest(uri).snapshot_id == ids[3]
    assert snap.prune_snapshots(str(tmp_path / "empty"), keep=1) == []


def test_big_shards_span_several_files(tmp_path, monkeypatch):
    tables = shard_tables(2, 50, seed=3)
    store = snap.SnapshotStore(str(tmp_path))
    files = snap.write_shard_files(store, "x", 0, tables[0], max_file_bytes=tables[0].nbytes // 4)
    assert len(files) >= 4 and [f.part for f in files] == list(range(len(files)))
    m = snap.write_snapshot(tables, str(tmp_path))
    assert m.shards == 2 and len(m.files) == 2  # write_snapshot uses the module default
    # a crash after the 3rd of many files keeps the previous snapshot
    monkeypatch.setattr(snap, "write_shard_files", _small_files(snap.write_shard_files))
    new = shard_tables(2, 60, seed=4)
    with pytest.raises(Crash):
        snap.write_snapshot(new, str(tmp_path), hook=crash_at("data", 3))
    assert all(
        a.equals(b) for a, b in zip(tables, snap.restore_snapshot(str(tmp_path)), strict=True)
    )
    m2 = snap.write_snapshot(new, str(tmp_path))
    assert len(m2.files) > 2
    assert all(a.equals(b) for a, b in zip(new, snap.restore_snapshot(str(tmp_path)), strict=True))


def _small_files(real):
    def write(store, sid, shard, table, hook=None, max_file_bytes=0):
        return real(store, sid, shard, table, hook, max_file_bytes=max(1, table.nbytes // 5))

    return write


# --- durable files are not trusted further than they are checked (issue 13, item 6) ---------
def test_a_pointer_without_the_manifest_sha256_is_refused(tmp_path):
    snap.write_snapshot(shard_tables(1, 3, 1), str(tmp_path))
    for bad in (None, "", "ab" * 31, "Z" * 64):
        pointer, _ = _latest(tmp_path)
        pointer.pop("sha256", None)
        if bad is not None:
            pointer["sha256"] = bad
        (tmp_path / snap.POINTER).write_text(json.dumps(pointer))
        with pytest.raises(snap.SnapshotError, match=r"LATEST: missing or invalid sha256"):
            snap.restore_snapshot(str(tmp_path))
        with pytest.raises(snap.SnapshotError, match=r"LATEST: missing or invalid sha256"):
            snap.prune_snapshots(str(tmp_path), keep=1)


def _outside_file(tmp_path: Path, manifest: dict) -> tuple[Path, dict]:
    """A valid data file copied outside the snapshot root, and its FileInfo fields."""
    src = tmp_path / "snap" / manifest["files"][0]["path"]
    out = tmp_path / "outside.parquet"
    out.write_bytes(src.read_bytes())
    return out, manifest["files"][0]


@pytest.mark.parametrize(
    "path",
    [
        "data/{sid}/../../../outside.parquet",
        "data/{sid}/../../outside.parquet",  # still inside the root, but not this snapshot's
        "{abs}",
        "data/{sid}/./shard-00000-0000.parquet",
        "data/{sid}//shard-00000-0000.parquet",
        "data/{sid}\\..\\..\\outside.parquet",
        "file://{abs}",
        "data/{sid}",
    ],
)
def test_manifest_paths_must_stay_inside_the_snapshot(tmp_path, path):
    root = tmp_path / "snap"
    snap.write_snapshot(shard_tables(1, 3, 1), str(root))
    _, mpath = _latest(root)
    manifest = json.loads(mpath.read_text())
    out, f = _outside_file(tmp_path, manifest)
    f["path"] = path.format(sid=manifest["snapshot_id"], abs=out)
    _rewrite(root, manifest)
    with pytest.raises(snap.SnapshotError, match=rf"{mpath.name}: malformed manifest: .*confined"):
        snap.restore_snapshot(str(root))


def test_a_symlink_out_of_a_local_snapshot_is_refused(tmp_path):
    root = tmp_path / "snap"
    snap.write_snapshot(shard_tables(1, 3, 1), str(root))
    _, mpath = _latest(root)
    manifest = json.loads(mpath.read_text())
    out, f = _outside_file(tmp_path, manifest)
    victim = root / f["path"]
    victim.unlink()
    victim.symlink_to(out)  # same bytes, same sha256: only where it lives is wrong
    with pytest.raises(snap.SnapshotError, match=r"shard-00000-0000.parquet: resolves outside"):
        snap.restore_snapshot(str(root))


def test_the_pointer_names_only_its_own_manifest(tmp_path):
    root = tmp_path / "snap"
    first = snap.write_snapshot(shard_tables(1, 3, 1), str(root)).snapshot_id
    snap.write_snapshot(shard_tables(1, 3, 2), str(root))
    for rel in ("manifests/../../outside.json", f"manifests/{first}.json", "LATEST"):
        pointer, _ = _latest(root)
        pointer["manifest"] = rel
        (root / snap.POINTER).write_text(json.dumps(pointer))
        with pytest.raises(snap.SnapshotError, match=r"LATEST: no valid 'manifest' entry"):
            snap.restore_snapshot(str(root))
    pointer["manifest"] = f"manifests/{first}.json"
    pointer["snapshot_id"] = "../x"
    (root / snap.POINTER).write_text(json.dumps(pointer))
    with pytest.raises(snap.SnapshotError, match=r"LATEST: missing or invalid snapshot_id"):
        snap.restore_snapshot(str(root))


class _CountingFS:
    """Wraps a pyarrow filesystem and records which files were opened for reading."""

    def __init__(self, fs):
        self._fs, self.opened = fs, []

    def open_input_file(self, path):
        self.opened.append(path)
        return self._fs.open_input_file(path)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def _counting_store(root: Path) -> tuple[snap.SnapshotStore, _CountingFS]:
    store = snap.SnapshotStore(str(root))
    fs = _CountingFS(store.fs)
    store._fs = fs
    return store, fs


def test_a_data_file_whose_size_differs_from_the_manifest_is_not_read(tmp_path):
    snap.write_snapshot(shard_tables(2, 10, 1), str(tmp_path))
    _, mpath = _latest(tmp_path)
    f = json.loads(mpath.read_text())["files"][1]
    victim = tmp_path / f["path"]
    with open(victim, "ab") as out:
        out.write(b"\0" * 4096)  # grown (or replaced by something huge)
    store, fs = _counting_store(tmp_path)
    with pytest.raises(
        snap.SnapshotError, match=rf"shard-00001-0000.parquet: {f['bytes'] + 4096} bytes, "
    ):
        snap.restore_snapshot(store)
    assert str(victim) not in fs.opened


def test_files_over_the_read_caps_are_refused_before_reading(tmp_path, monkeypatch):
    from sale_ray.memory import manifest as mf

    snap.write_snapshot(shard_tables(1, 10, 1), str(tmp_path))
    _, mpath = _latest(tmp_path)
    size = json.loads(mpath.read_text())["files"][0]["bytes"]
    monkeypatch.setattr(snap, "MAX_DATA_FILE_BYTES", size - 1)
    store, fs = _counting_store(tmp_path)
    with pytest.raises(snap.SnapshotError, match=r"shard-00000-0000.parquet: \d+ bytes, more than"):
        snap.restore_snapshot(store)
    assert not [p for p in fs.opened if p.endswith(".parquet")]
    # and a writer refuses to commit a file no reader would accept
    with pytest.raises(snap.SnapshotError, match=r"more than the \d+ a reader accepts"):
        snap.write_snapshot(shard_tables(1, 10, 1), str(tmp_path))
    monkeypatch.undo()

    monkeypatch.setattr(mf, "MAX_MANIFEST_BYTES", mpath.stat().st_size - 1)
    store, fs = _counting_store(tmp_path)
    with pytest.raises(snap.SnapshotError, match=rf"{mpath.name}: \d+ bytes, more than"):
        snap.restore_snapshot(store)
    assert fs.opened == []
    monkeypatch.undo()

    pointer, _ = _latest(tmp_path)
    pointer["padding"] = "x" * (mf.MAX_POINTER_BYTES + 10)
    (tmp_path / snap.POINTER).write_text(json.dumps(pointer))
    with pytest.raises(snap.SnapshotError, match=r"LATEST: \d+ bytes, more than"):
        snap.restore_snapshot(str(tmp_path))


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0])
def test_schema_version_below_one_is_refused(tmp_path, version):
    snap.write_snapshot(shard_tables(1, 3, 1), str(tmp_path))
    pointer, mpath = _latest(tmp_path)
    manifest = json.loads(mpath.read_text())
    manifest["schema_version"] = version
    _rewrite(tmp_path, manifest)
    with pytest.raises(snap.SnapshotError, match=rf"{mpath.name}: (missing or invalid )?schema"):
        snap.restore_snapshot(str(tmp_path))
    manifest["schema_version"] = 1
    _rewrite(tmp_path, manifest, schema_version=version)
    with pytest.raises(snap.SnapshotError, match=r"LATEST: (missing or invalid )?schema_version"):
        snap.restore_snapshot(str(tmp_path))
