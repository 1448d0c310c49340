"""Parquet snapshots of the memory to S3 (or a local folder), committed atomically.

Layout under the snapshot URI::

    data/<snapshot_id>/shard-00000-0000.parquet  per shard, one or more files (entries + embedding)
    manifests/<snapshot_id>.json                  files, row counts, sha256, schema_version
    LATEST                                        the pointer: which manifest is current

S3 writes are atomic per key, never across keys (RELIABILITY.md), so a snapshot is committed in
that order: data files, then the manifest, then the pointer. Readers follow only the pointer, so
a crash at any point leaves the previous snapshot readable, and files are never overwritten (every
snapshot has a fresh id). On S3 the pointer is compare-and-swapped with conditional writes
(``If-Match`` on the ETag read when the snapshot began, ``If-None-Match: *`` for the first one):
two writers racing cannot silently replace each other's commit. A local folder replaces the
pointer with an atomic rename after a best-effort check (not atomic: one writer per folder).

Restore trusts none of it: the pointer's sha256 of the manifest is required, manifest paths
must stay under ``data/<snapshot_id>/``, every size is checked (and capped) before the bytes
are read, then schema_version (>= 1), sha256, row counts and columns (:mod:`.manifest`). Any
failure raises :class:`SnapshotError` naming the offending file before anything is loaded.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import StorageConfig
from .manifest import (
    MAX_DATA_FILE_BYTES,
    MAX_FILE_BYTES,
    SCHEMA_VERSION,
    FileInfo,
    IndexFileInfo,
    Manifest,
    parse_pointer,
    read_capped,
    read_manifest_file,
)
from .shard import EMBEDDING, storage_schema
from .store import (
    POINTER,
    SnapshotConflict,
    SnapshotError,
    SnapshotStore,
    SnapshotVersionError,
    as_store,
)

__all__ = [
    "MAX_DATA_FILE_BYTES",
    "MAX_FILE_BYTES",
    "POINTER",
    "SCHEMA_VERSION",
    "FileInfo",
    "Manifest",
    "SnapshotConflict",
    "SnapshotError",
    "SnapshotStore",
    "SnapshotVersionError",
    "commit",
    "read_manifest",
    "read_shard",
    "read_shard_file",
    "prune_snapshots",
    "read_snapshot_tables",
    "restore_snapshot",
    "write_shard_file",
    "write_shard_files",
    "write_snapshot",
]

Hook = Callable[
    [str, str], None
]  # (stage, path): "data" | "manifest" | "before_pointer" | "pointer"


def new_snapshot_id() -> str:
    """Sortable by time, unique across writers: ``<ms since epoch>-<random>``."""
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}"


# --- writing ------------------------------------------------------------------------------------
class _HashingSink:
    """File-like that hashes what the Parquet writer streams through it (no second pass)."""

    def __init__(self, out: pa.NativeFile) -> None:
        self.out, self.h, self.n, self.closed = out, hashlib.sha256(), 0, False

    def write(self, b: Any) -> int:
        self.h.update(b)
        self.out.write(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True


ROW_GROUP_SIZE = 65_536


def writer_options(schema: pa.Schema) -> dict:
    """The ``ParquetWriter`` options of every snapshot data file (benchmarks reuse them, so a
    baseline pays for the same encoding work).

    Embeddings are random-looking floats: dictionary encoding and statistics would only cost.
    (Nested columns are named by leaf path, e.g. ``bids.list.element.agent``.)
    """
    cols = [p for p in _leaf_paths(schema) if not p.startswith(EMBEDDING)]
    return {"compression": "snappy", "use_dictionary": cols, "write_statistics": cols}


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet leaf column paths of an Arrow schema (what per-column writer options name)."""

    def walk(name: str, t: pa.DataType) -> list[str]:
        if pa.types.is_struct(t):
            return [
                p
                for i in range(t.num_fields)
                for p in walk(f"{name}.{t.field(i).name}", t.field(i).type)
            ]
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            return walk(f"{name}.list.element", t.value_type)
        return [name]

    return [p for f in schema for p in walk(f.name, f.type)]


def write_shard_files(
    store: SnapshotStore,
    snapshot_id: str,
    shard: int,
    table: pa.Table,
    hook: Hook | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> list[FileInfo]:
    """Write one shard's table as one or more Parquet files of at most ~``max_file_bytes`` of
    Arrow data each. Bounded objects keep uploads, restores and memory spikes bounded (moto
    timed out completing a single 370 MB multipart upload)."""
    n = table.num_rows
    per = max(1, int(n * max_file_bytes / table.nbytes)) if table.nbytes > max_file_bytes else n
    starts = range(0, n, per) if n else [0]
    return [
        write_shard_file(store, snapshot_id, shard, table.slice(s, per), hook, part=p)
        for p, s in enumerate(starts)
    ]


def write_shard_file(
    store: SnapshotStore,
    snapshot_id: str,
    shard: int,
    table: pa.Table,
    hook: Hook | None = None,
    part: int = 0,
) -> FileInfo:
    """Write one Parquet file of a shard under ``data/<snapshot_id>/``; returns its FileInfo."""
    rel = f"data/{snapshot_id}/shard-{shard:05d}-{part:04d}.parquet"
    with store.open_output(rel) as out:
        sink = _HashingSink(out)
        with pq.ParquetWriter(sink, table.schema, **writer_options(table.schema)) as w:
            w.write_table(table, row_group_size=ROW_GROUP_SIZE)
    # One HEAD per file: an S3 endpoint that stored something else (e.g. moto keeping the
    # aws-chunked framing of an unsigned upload) fails the snapshot now, not the restore later.
    size = store.fs.get_file_info(store.full(rel)).size
    if size != sink.n:
        raise SnapshotError(f"{store.display(rel)}: stored {size} bytes, wrote {sink.n}")
    if sink.n > MAX_DATA_FILE_BYTES:  # a reader would refuse it: fail the snapshot, not restore
        raise SnapshotError(
            f"{store.display(rel)}: {sink.n} bytes, more than the {MAX_DATA_FILE_BYTES} a "
            "reader accepts"
        )
    info = FileInfo(
        path=rel,
        shard=shard,
        part=part,
        rows=table.num_rows,
        bytes=sink.n,
        sha256=sink.h.hexdigest(),
    )
    if hook:
        hook("data", store.display(rel))
    return info


def commit(
    store: SnapshotStore,
    snapshot_id: str,
    files: Sequence[FileInfo | IndexFileInfo],
    *,
    dim: int,
    embedder: str | None,
    expected_pointer: str | None,
    hook: Hook | None = None,
) -> Manifest:
    """Write the manifest (data files and any persisted indexes), then move the pointer to it
    (compare-and-swap on S3)."""
    indexes = sorted((f for f in files if isinstance(f, IndexFileInfo)), key=lambda f: f.shard)
    files = sorted((f for f in files if isinstance(f, FileInfo)), key=lambda f: (f.shard, f.part))
    manifest = Manifest(
        snapshot_id=snapshot_id,
        created_at=time.time(),
        shards=len({f.shard for f in files}),
        dim=dim,
        embedder=embedder,
        files=list(files),
        total_rows=sum(f.rows for f in files),
        indexes=indexes,
    )
    rel = f"manifests/{snapshot_id}.json"
    body = manifest.model_dump_json(indent=1).encode()
    store.write_bytes(rel, body)
    if hook:
        hook("manifest", store.display(rel))
        hook("before_pointer", store.display(POINTER))
    pointer = {
        "schema_version": SCHEMA_VERSION,
        "snapshot_id": snapshot_id,
        "manifest": rel,
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    store.write_pointer(json.dumps(pointer).encode(), expected_pointer)
    if hook:
        hook("pointer", store.display(POINTER))
    return manifest


def write_snapshot(
    memory_or_tables: Any,
    uri: str | SnapshotStore,
    *,
    storage: StorageConfig | None = None,
    embedder: str | None = None,
    hook: Hook | None = None,
) -> Manifest:
    """Snapshot a memory (anything with ``shard_tables()``) or a list of per-shard tables.

    ``hook(stage, path)`` is a fault-injection seam: it runs after each data file, after the
    manifest, just before and just after the pointer. Raising from it simulates a crash there.
    """
    store = as_store(uri, storage)
    tables = (
        memory_or_tables.shard_tables()
        if hasattr(memory_or_tables, "shard_tables")
        else list(memory_or_tables)
    )
    if not tables:
        raise ValueError("nothing to snapshot: no shard tables")
    _, expected = store.read_pointer()
    sid = new_snapshot_id()
    files = [f for i, t in enumerate(tables) for f in write_shard_files(store, sid, i, t, hook)]
    dim = tables[0].schema.field(EMBEDDING).type.list_size
    return commit(
        store, sid, files, dim=dim, embedder=embedder, expected_pointer=expected, hook=hook
    )


# --- reading ------------------------------------------------------------------------------------
def read_manifest(
    uri: str | SnapshotStore, storage: StorageConfig | None = None
) -> Manifest | None:
    """The manifest the pointer names, verified against the pointer's (required) sha256, its
    size checked before it is read, its file paths confined; None if there is no pointer.
    The checks are listed in :mod:`.manifest`."""
    store = as_store(uri, storage)
    raw, _ = store.read_pointer()
    if raw is None:
        return None
    sid, rel, sha = parse_pointer(raw, store)
    manifest = read_manifest_file(store, rel, sha)
    if manifest.snapshot_id != sid:
        raise SnapshotError(
            f"{store.display(rel)}: snapshot_id {manifest.snapshot_id!r}, the pointer says {sid!r}"
        )
    return manifest


def read_shard_file(store: SnapshotStore, info: FileInfo, dim: int) -> pa.Table:
    """One verified data file: checksum, Parquet, columns and row count are all checked."""
    where = store.display(info.path)
    # size (from a HEAD) against the manifest and the cap first: nothing unbounded is read
    data = read_capped(store, info.path, MAX_DATA_FILE_BYTES, expected=info.bytes)
    if hashlib.sha256(data).hexdigest() != info.sha256:
        raise SnapshotError(f"{where}: checksum mismatch (file changed or truncated)")
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        raise SnapshotError(f"{where}: not a readable Parquet file ({e})") from None
    want = storage_schema(dim)
    missing = [f.name for f in want if f.name not in table.column_names]
    if missing:
        raise SnapshotError(f"{where}: missing columns {missing}")
    try:
        table = table.select(want.names).cast(want)
    except (pa.ArrowException, ValueError) as e:
        raise SnapshotError(f"{where}: column types do not match schema_version 1 ({e})") from None
    if table.num_rows != info.rows:
        raise SnapshotError(f"{where}: {table.num_rows} rows, manifest says {info.rows}")
    return table


def read_shard(store: SnapshotStore, manifest: Manifest, shard: int) -> pa.Table:
    """Shard ``shard`` of a snapshot: its files, verified, in part order, as one table."""
    files = sorted((f for f in manifest.files if f.shard == shard), key=lambda f: f.part)
    return pa.concat_tables([read_shard_file(store, f, manifest.dim) for f in files])


def read_snapshot_tables(store: SnapshotStore, manifest: Manifest) -> list[pa.Table]:
    """The verified tables of one manifest, one per shard in shard order (files read in
    parallel: I/O, hashing and decoding release the GIL)."""
    with ThreadPoolExecutor(min(8, len(manifest.files))) as pool:
        tables = list(pool.map(lambda f: read_shard_file(store, f, manifest.dim), manifest.files))
    by_shard: dict[int, list[tuple[int, pa.Table]]] = {}
    for f, t in zip(manifest.files, tables, strict=True):
        by_shard.setdefault(f.shard, []).append((f.part, t))
    return [
        pa.concat_tables([t for _, t in sorted(by_shard[s], key=lambda x: x[0])])
        for s in range(manifest.shards)
    ]


def restore_snapshot(
    uri: str | SnapshotStore, storage: StorageConfig | None = None
) -> list[pa.Table]:
    """Tables per shard of the latest committed snapshot ([] if there is none), all verified
    before any is returned."""
    store = as_store(uri, storage)
    manifest = read_manifest(store)
    if manifest is None:
        return []
    return read_snapshot_tables(store, manifest)


def prune_snapshots(
    uri: str | SnapshotStore, keep: int, storage: StorageConfig | None = None
) -> list[str]:
    """Delete all but the newest ``keep`` committed snapshots; returns the deleted ids.

    Never touches the snapshot the pointer names, nor anything newer than it (another writer's
    snapshot in progress). Debris of crashed snapshots (data without a committed manifest) older
    than the pointer goes too. Each manifest is deleted before its data, so no manifest ever
    names missing files.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    store = as_store(uri, storage)
    raw, _ = store.read_pointer()
    if raw is None:
        return []
    current, _, _ = parse_pointer(raw, store)
    manifests = {n[: -len(".json")] for n in store.list_names("manifests") if n.endswith(".json")}
    data = set(store.list_names("data"))
    committed = sorted(m for m in manifests if m <= current)
    kept = set(committed[-keep:]) | {current}
    doomed = sorted(i for i in manifests | data if i < current and i not in kept)
    for sid in doomed:
        store.delete_file(f"manifests/{sid}.json")
        store.delete_dir(f"data/{sid}")
    return doomed
