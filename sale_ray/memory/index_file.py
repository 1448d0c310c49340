"""The approximate index in a snapshot: written beside the shard's data, checked like it, and
loaded on restore instead of being rebuilt (``memory.index_persist``).

Why persist it (measured at 1M records, benchmarks/results/memory_retrieval.md): a restore that
rebuilds the IVF index spends most of its time in k-means and the assignment pass, while
loading the serialised index is a read and a copy. The index only proposes candidates, which
are scored exactly from the restored matrix, so an index file that fails its checks never
fails the restore: it is reported and the index rebuilt.

A shard's index file holds exactly the rows of its data files: the snapshot freezes the index
(:meth:`~.shard.MemoryShard.freeze_index`) for as long as it serialises it in a thread, and
rows written meanwhile are searched exactly until it is thawed.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from .index import IVFIndex
from .manifest import IndexFileInfo, Manifest, read_capped
from .store import SnapshotError, SnapshotStore

log = logging.getLogger(__name__)
# An int8 IVF index is ~400 B a record, a float32 one ~1.6 kB; a shard holds at most a few
# million records. A reader refuses anything larger before reading it.
MAX_INDEX_FILE_BYTES = 8 * 2**30


def write_index_file(
    store: SnapshotStore, snapshot_id: str, shard: int, index: IVFIndex, first_label: int
) -> IndexFileInfo:
    """Serialise ``index`` to ``data/<snapshot_id>/index-<shard>.faiss``; returns its entry."""
    rel = f"data/{snapshot_id}/index-{shard:05d}.faiss"
    blob = index.serialize()
    store.write_bytes(rel, memoryview(blob))
    size = store.fs.get_file_info(store.full(rel)).size
    if size != blob.nbytes:
        raise SnapshotError(f"{store.display(rel)}: stored {size} bytes, wrote {blob.nbytes}")
    return IndexFileInfo(
        path=rel,
        shard=shard,
        first_label=first_label,
        rows=index.ntotal,
        storage=index.storage,
        bytes=blob.nbytes,
        sha256=hashlib.sha256(blob).hexdigest(),
    )


def read_index_file(
    store: SnapshotStore,
    manifest: Manifest,
    shard: int,
    rows: int,
    dim: int,
    nprobe: int,
    storage: str | None = None,
) -> tuple[IVFIndex, int] | None:
    """Shard ``shard``'s persisted index and its first label, if the manifest has one that
    holds the shard's ``rows`` rows (with ``storage`` codes, when given); None otherwise, and
    then nothing is read. A file that fails a check raises :class:`~.store.SnapshotError`
    naming it (the caller rebuilds instead)."""
    info = next((i for i in manifest.indexes if i.shard == shard), None)
    if info is None or (storage is not None and info.storage != storage):
        return None
    where = store.display(info.path)
    if info.rows != rows:
        raise SnapshotError(f"{where}: holds {info.rows} rows, the shard's data has {rows}")
    data = read_capped(store, info.path, MAX_INDEX_FILE_BYTES, expected=info.bytes)
    if hashlib.sha256(data).hexdigest() != info.sha256:
        raise SnapshotError(f"{where}: checksum mismatch (file changed or truncated)")
    try:
        index = IVFIndex.deserialize(np.frombuffer(data, dtype=np.uint8), nprobe=nprobe)
    except Exception as e:  # noqa: BLE001 - faiss raises RuntimeError with its own text
        raise SnapshotError(f"{where}: not a readable faiss index ({str(e)[:200]})") from None
    if index.dim != dim or index.ntotal != rows or index.storage != info.storage:
        raise SnapshotError(f"{where}: index does not match the shard (dim, rows or storage)")
    return index, info.first_label
