"""Where shards live: the :class:`ShardPool` seam, its in-process form, and the functions that
shards run on themselves (snapshot file writes, staged restores).

Maintenance calls have names of their own (:data:`MAINTENANCE`), so that an actor can run them
off the event loop that serves searches (:mod:`.remote`); here they are plain function calls.

:mod:`.remote` implements the same seam over Ray actors; nothing here imports Ray.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import pyarrow as pa

from ..errors import InfraError
from . import snapshot as snap
from .index import IVFIndex
from .index_file import read_index_file, write_index_file
from .manifest import IndexFileInfo
from .shard import MemoryShard, ShardView

log = logging.getLogger(__name__)


class ShardUnavailable(InfraError):
    """A shard did not answer (its actor died); :meth:`ShardedMemory.recover` replaces it."""

    def __init__(self, shard: int, cause: str = "") -> None:
        super().__init__(f"memory shard {shard} unavailable{': ' + cause if cause else ''}")
        self.shard = shard


class ShardUnhealthy(InfraError):
    """A shard could not be restored (e.g. its snapshot is corrupt): it is not answering
    queries as if it were whole. ``report`` says what was lost; an operator either fixes the
    snapshot and calls :meth:`ShardedMemory.recover` again, or accepts the loss
    (:meth:`ShardedMemory.accept_loss`)."""

    def __init__(self, shard: int, report: Any) -> None:
        super().__init__(f"memory shard {shard} is unhealthy (restore failed: {report.error})")
        self.shard, self.report = shard, report


class ShardPool(Protocol):
    """Where shards live. ``submit`` starts a call and returns a pending handle; ``result``
    waits for it and raises :class:`ShardUnavailable` if the shard is gone."""

    size: int

    def submit(self, i: int, method: str, *args: Any) -> Any: ...
    def result(self, i: int, pending: Any) -> Any: ...
    async def aresult(self, i: int, pending: Any) -> Any: ...
    def restart(self, i: int) -> None: ...


class LocalShardPool:
    """Plain in-process shards; calls run on a thread pool (numpy and pyarrow release the GIL)."""

    def __init__(self, shards: Sequence[MemoryShard], threads: int | None = None) -> None:
        self.shards = list(shards)
        self.size = len(self.shards)
        self._exec = ThreadPoolExecutor(threads or min(self.size, 8), "memory-shard")

    def submit(self, i: int, method: str, *args: Any) -> Future:
        shard = self.shards[i]
        if method == "apply":  # run a function on the shard (rare operations)
            return self._exec.submit(args[0], shard, *args[1:])
        if method in MAINTENANCE:
            return self._exec.submit(MAINTENANCE[method], shard, *args)
        return self._exec.submit(getattr(shard, method), *args)

    def result(self, i: int, pending: Future) -> Any:
        return pending.result()

    async def aresult(self, i: int, pending: Future) -> Any:
        return await asyncio.wrap_future(pending)

    def restart(self, i: int) -> None:
        old = self.shards[i]
        self.shards[i] = MemoryShard(old.dim, old.max_records, old.max_segments, index=old.policy)


# --- run by a shard on itself, through ``apply`` (in the shard's process) ---------------------
def write_file(
    shard: MemoryShard | ShardView,
    store: snap.SnapshotStore,
    sid: str,
    i: int,
    frozen: tuple[IVFIndex, int] | None = None,
) -> list[snap.FileInfo | IndexFileInfo]:
    """Snapshot files of a shard, or of a :class:`~.shard.ShardView` of one with the index
    frozen beside it (``frozen``, from :meth:`~.shard.MemoryShard.freeze_index`): the data
    files, then the index file when there is an index to persist."""
    if isinstance(shard, MemoryShard):  # in-process: take the view and freeze here
        frozen = shard.freeze_index() if shard.policy.persist else None
        try:
            return write_file(shard.view(), store, sid, i, frozen)
        finally:
            if frozen is not None:
                shard.thaw_index()
    files: list[snap.FileInfo | IndexFileInfo] = list(
        snap.write_shard_files(store, sid, i, shard.to_table())
    )
    if frozen is not None:
        files.append(write_index_file(store, sid, i, *frozen))
    return files


def read_for_restore(
    shard: MemoryShard, store: snap.SnapshotStore, manifest: snap.Manifest, i: int
) -> tuple[pa.Table, tuple[IVFIndex, int] | None]:
    """Shard ``i``'s verified table, and its persisted index when ``shard``'s policy can use
    it (None: the restore builds one). A bad index file is reported, never fatal: the index
    only proposes candidates and can be rebuilt from the data."""
    table = snap.read_shard(store, manifest, i)
    policy = shard.policy
    if not policy.persist or policy.kind == "exact":
        return table, None
    try:  # an index with other codes than configured now is not read: the build makes those
        index = read_index_file(
            store, manifest, i, table.num_rows, shard.dim, policy.nprobe, policy.storage
        )
    except snap.SnapshotError as e:
        log.warning("%s; rebuilding the index instead", e)
        return table, None
    return table, index


def restore_file(
    shard: MemoryShard, store: snap.SnapshotStore, manifest: snap.Manifest, i: int
) -> int:
    return shard.load_table(*read_for_restore(shard, store, manifest, i))


# Verified tables (and indexes) waiting to be swapped in, per shard object, in its process.
_STAGED: dict[int, tuple[pa.Table, tuple[IVFIndex, int] | None]] = {}


def stage_file(
    shard: MemoryShard, store: snap.SnapshotStore, manifest: snap.Manifest, i: int
) -> int:
    _STAGED[id(shard)] = staged = read_for_restore(shard, store, manifest, i)
    return staged[0].num_rows


def load_staged(shard: MemoryShard) -> int:
    return shard.load_table(*_STAGED.pop(id(shard)))


def drop_staged(shard: MemoryShard) -> None:
    _STAGED.pop(id(shard), None)


# Maintenance calls by name -> what an in-process shard runs for them.
MAINTENANCE = {
    "snapshot_files": write_file,
    "restore": restore_file,
    "stage": stage_file,
    "load_staged": load_staged,
    "drop_staged": drop_staged,
}
