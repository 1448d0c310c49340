"""ShardedMemory: one memory over N shards — routes writes, fans out queries, merges top-k.

The shards sit behind a small :class:`~.pool.ShardPool` seam: :class:`LocalShardPool` holds plain
:class:`~.shard.MemoryShard` objects (unit tests, single process), :mod:`.remote` holds Ray actor
handles. Everything here is plain Python; Ray never appears.

* A write goes to one shard, chosen by a stable hash (blake2b) of the task id: the same task (and
  so every retry of the same auction) always lands on the same shard, in every process.
* A query embeds its text once, sends the vectors to every shard in parallel (one call per shard
  for a whole batch of queries) and merges the shards' top-k.
* Losses are reported, never silent: the ids written to each shard since its last snapshot are
  tracked; when a shard dies it is restarted from the latest snapshot and the ids it no longer
  holds are returned (and logged) as a :class:`LossReport`.
* Recovery is serialised per shard: callers that find the same shard dead at the same time
  trigger one restart (a generation count tells a caller its shard was already replaced). If the
  restore fails (a corrupt snapshot), the shard is marked unhealthy and every call to it raises
  :class:`~.pool.ShardUnhealthy` with the loss report: it never answers empty as if whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InfraError
from . import snapshot as snap
from .config import ContrastOn, MemoryConfig, StorageConfig
from .embed import Embedder, make_embedder, vector_space
from .entry import ContrastPair, MemoryEntry, contrastive_pairs, entries_table
from .index import IndexPolicy
from .pool import LocalShardPool, ShardPool, ShardUnavailable, ShardUnhealthy
from .recovery import LossReport, Recovery
from .shard import EMBEDDING, Hit, MemoryShard

__all__ = [
    "LocalShardPool",
    "LossReport",
    "ShardPool",
    "ShardUnavailable",
    "ShardUnhealthy",
    "ShardedMemory",
]

log = logging.getLogger(__name__)
TRACK_CAP = 100_000  # ids remembered per shard between snapshots (beyond: counted only)


def shard_for(task_id: str, n: int) -> int:
    """Stable shard index of a task id (not Python's salted ``hash``)."""
    digest = hashlib.blake2b(task_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def merge_topk(per_shard: Sequence[Sequence[tuple[float, Any]]], k: int) -> list[Any]:
    """Global top-``k`` of per-shard, best-first ``(score, item)`` lists (hits or rows).
    Ties go to the lower shard, then to the shard's own order."""
    flat = [(-h[0], s, r, h) for s, hits in enumerate(per_shard) for r, h in enumerate(hits)]
    return [t[3] for t in heapq.nsmallest(k, flat, key=lambda t: t[:3])]


def _hits(merged: list[tuple[float, dict]]) -> list[Hit]:
    return [Hit(score, MemoryEntry.model_validate(row)) for score, row in merged]


class ShardedMemory(Recovery):
    """The auction memory: writes, retrieval, contrastive pairs, snapshots and recovery."""

    def __init__(
        self,
        pool: ShardPool,
        embedder: Embedder,
        cfg: MemoryConfig | None = None,
        storage: StorageConfig | None = None,
    ) -> None:
        self.pool = pool
        self.embedder = embedder
        self.cfg = cfg or MemoryConfig(shards=pool.size)
        self.storage = storage
        self.store = (
            snap.SnapshotStore(storage.snapshot_uri, storage)
            if storage and storage.snapshot_uri
            else None
        )
        self.losses: list[LossReport] = []
        self.last_snapshot: str | None = None
        self._since = [set[str]() for _ in range(pool.size)]
        self._untracked = [0] * pool.size
        self._new_since_snapshot = 0
        self._init_recovery(pool.size)

    @classmethod
    def local(
        cls,
        cfg: MemoryConfig | None = None,
        storage: StorageConfig | None = None,
        embedder: Embedder | None = None,
    ) -> ShardedMemory:
        """In-process shards (no Ray); restores the latest snapshot if configured."""
        cfg = cfg or MemoryConfig()
        emb = embedder or make_embedder(cfg.embedder)
        policy = IndexPolicy.from_config(cfg)
        shards = [
            MemoryShard(emb.dim, cfg.max_records_per_shard, cfg.max_segments, index=policy)
            for _ in range(cfg.shards)
        ]
        mem = cls(LocalShardPool(shards), emb, cfg, storage)
        if cfg.restore_on_start:
            mem.restore()
        return mem

    # --- calls with recovery ----------------------------------------------------------------------
    def _call_each(self, method: str, args: dict[int, tuple], retry: bool = True) -> list[Any]:
        """Call ``method`` on each shard in ``args`` (with its own args) in parallel; a dead
        shard is recovered and its call retried once (every mutating call is idempotent)."""
        self._check_healthy(args)
        gens = {i: self._generation[i] for i in args}
        pend = {i: self.pool.submit(i, method, *a) for i, a in args.items()}
        res: dict[int, Any] = {}
        for i, p in pend.items():
            try:
                res[i] = self.pool.result(i, p)
            except ShardUnavailable:
                if not retry:
                    raise
                self.recover_once(i, gens[i])
                res[i] = self.pool.result(i, self.pool.submit(i, method, *args[i]))
        return [res[i] for i in args]

    # --- writes -----------------------------------------------------------------------------------
    def write(self, entries: Sequence[MemoryEntry]) -> int:
        """Store entries (idempotent by auction id); returns how many were new."""
        if not entries:
            return 0
        vecs = self.embedder.encode([e.task_text for e in entries])
        return self.write_vectors(entries, vecs)

    def write_vectors(self, entries: Sequence[MemoryEntry], vectors: np.ndarray) -> int:
        """Store entries with precomputed task-text embeddings."""
        table = entries_table(entries)
        table = table.append_column(EMBEDDING, _fixed_list(np.asarray(vectors, np.float32)))
        return self.write_table(table)

    def write_table(self, table: pa.Table) -> int:
        """Store an entry table with an ``embedding`` column (bulk loads, restores)."""
        parts = self._route(table)
        added = sum(self._call_each("write_table", {i: (p,) for i, p in parts.items()}))
        for i, part in parts.items():
            self._track(i, part.column("auction_id").to_pylist())
        self._after_write(added)
        return added

    async def awrite(self, entries: Sequence[MemoryEntry]) -> int:
        """Async :meth:`write` (embedding runs in a thread; shards are awaited, not blocked on)."""
        if not entries:
            return 0
        vecs = await asyncio.to_thread(self.embedder.encode, [e.task_text for e in entries])
        table = entries_table(entries).append_column(EMBEDDING, _fixed_list(vecs))
        parts = self._route(table)
        self._check_healthy(parts)
        gens = {i: self._generation[i] for i in parts}
        pend = {i: self.pool.submit(i, "write_table", p) for i, p in parts.items()}
        added = 0
        for i, p in pend.items():
            try:
                added += await self.pool.aresult(i, p)
            except ShardUnavailable:
                await asyncio.to_thread(self.recover_once, i, gens[i])
                added += await self.pool.aresult(i, self.pool.submit(i, "write_table", parts[i]))
            self._track(i, parts[i].column("auction_id").to_pylist())
        if self._snapshot_due(added):
            self._new_since_snapshot = 0  # one periodic snapshot even if writes race it
            await asyncio.to_thread(self.snapshot)  # the event loop keeps serving meanwhile
        return added

    def _route(self, table: pa.Table) -> dict[int, pa.Table]:
        idx = np.array([shard_for(t, self.pool.size) for t in table.column("task_id").to_pylist()])
        return {int(i): table.take(np.flatnonzero(idx == i)) for i in np.unique(idx)}

    def _track(self, i: int, ids: list[str]) -> None:
        room = TRACK_CAP - len(self._since[i])
        self._since[i].update(ids[:room] if room > 0 else [])
        self._untracked[i] += max(0, len(ids) - max(room, 0))

    def _after_write(self, added: int) -> None:
        if self._snapshot_due(added):
            self.snapshot()

    def _snapshot_due(self, added: int) -> bool:
        self._new_since_snapshot += added
        every = self.cfg.snapshot_every_n_writes
        return self.store is not None and every > 0 and self._new_since_snapshot >= every

    # --- reads ------------------------------------------------------------------------------------
    def search(self, texts: Sequence[str], k: int | None = None) -> list[list[Hit]]:
        """Top-``k`` past entries for each text (one embedding batch, one call per shard)."""
        return self.search_vectors(self.embedder.encode(list(texts)), k)

    def search_vectors(
        self, query_vecs: np.ndarray, k: int | None = None, exact: bool = False
    ) -> list[list[Hit]]:
        """Top-``k`` for each query vector (rows of ``query_vecs``), merged over all shards;
        ``exact`` bypasses the shards' approximate indexes (a full scan, for recall checks)."""
        k = k or self.cfg.k
        q = np.atleast_2d(np.asarray(query_vecs, dtype=np.float32))
        per_shard = self._search_all(q, k, exact)
        return [_hits(merge_topk([r[j] for r in per_shard], k)) for j in range(len(q))]

    def _search_all(self, q: np.ndarray, k: int, exact: bool = False) -> list[Any]:
        """Each shard's ``search_rows``: over the pool's direct search line where it has one
        that works (``memory.search_transport: direct``), else one call per shard."""
        search_all = getattr(self.pool, "search_all", None)
        if search_all is not None and not self.unhealthy:
            got = search_all(q, k, exact)
            if got is not None:
                return got
        return self._call_all("search_rows", q, k, exact)

    async def asearch(self, texts: Sequence[str], k: int | None = None) -> list[list[Hit]]:
        """Async :meth:`search`."""
        k = k or self.cfg.k
        q = await asyncio.to_thread(self.embedder.encode, list(texts))
        self._check_healthy(range(self.pool.size))
        if getattr(self.pool, "direct", None) is not None:
            per = await asyncio.to_thread(self._search_all, q, k)
            return [_hits(merge_topk([r[j] for r in per], k)) for j in range(len(q))]
        gens = list(self._generation)
        pend = {i: self.pool.submit(i, "search_rows", q, k) for i in range(self.pool.size)}
        per_shard = []
        for i, p in pend.items():
            try:
                per_shard.append(await self.pool.aresult(i, p))
            except ShardUnavailable:
                await asyncio.to_thread(self.recover_once, i, gens[i])
                per_shard.append(
                    await self.pool.aresult(i, self.pool.submit(i, "search_rows", q, k))
                )
        return [_hits(merge_topk([r[j] for r in per_shard], k)) for j in range(len(q))]

    def contrast(
        self,
        task_text: str,
        agents: Sequence[str],
        k: int | None = None,
        contrast_on: ContrastOn | None = None,
    ) -> dict[str, list[ContrastPair]]:
        """Contrastive pairs for each refining agent from one retrieval of ``task_text``."""
        hits = self.search([task_text], k)[0]
        return _pairs(hits, agents, contrast_on or self.cfg.contrast_on)

    async def acontrast(
        self,
        task_text: str,
        agents: Sequence[str],
        k: int | None = None,
        contrast_on: ContrastOn | None = None,
    ) -> dict[str, list[ContrastPair]]:
        """Async :meth:`contrast`."""
        hits = (await self.asearch([task_text], k))[0]
        return _pairs(hits, agents, contrast_on or self.cfg.contrast_on)

    def stats(self) -> dict[str, Any]:
        """Per-shard stats and totals."""
        per = self._call_all("stats")
        return {
            "shards": per,
            "records": sum(s["records"] for s in per),
            "last_snapshot": self.last_snapshot,
            "losses": len(self.losses),
        }

    def shard_tables(self) -> list[pa.Table]:
        """Every shard's table form (entries + embedding), in shard order."""
        return self._call_all("to_table")

    # --- durability -------------------------------------------------------------------------------
    def snapshot(self) -> snap.Manifest:
        """Commit a snapshot: shards write their files in parallel, then manifest + pointer."""
        if self.store is None:
            raise InfraError("no storage.snapshot_uri configured: nothing to snapshot to")
        covered, self._since = self._since, [set[str]() for _ in range(self.pool.size)]
        untracked, self._untracked = self._untracked, [0] * self.pool.size
        try:
            _, expected = self.store.read_pointer()
            sid = snap.new_snapshot_id()
            per_shard = self._call_each(
                "snapshot_files", {i: (self.store, sid, i) for i in range(self.pool.size)}
            )
            files = [f for fs in per_shard for f in fs]
            manifest = snap.commit(
                self.store,
                sid,
                files,
                dim=self.embedder.dim,
                embedder=vector_space(self.embedder),
                expected_pointer=expected,
            )
        except BaseException:
            for i in range(self.pool.size):  # not committed: those ids are still at risk
                self._since[i] |= covered[i]
                self._untracked[i] += untracked[i]
            raise
        self._new_since_snapshot = 0
        self.last_snapshot = manifest.snapshot_id
        if self.storage is not None and self.storage.keep_snapshots:
            try:
                snap.prune_snapshots(self.store, self.storage.keep_snapshots)
            except Exception as e:  # noqa: BLE001 - the commit stands; leftovers are harmless
                log.warning("pruning old snapshots failed (will retry next time): %s", e)
        return manifest

    def restore(self) -> snap.Manifest | None:
        """Load the latest snapshot into the shards (None if there is none).

        Everything is verified before a shard is touched. Same shard count and embedder: each
        shard reads its own file in parallel. Otherwise the rows are re-routed (and re-embedded
        if the embedder changed) through this process.
        """
        if self.store is None:
            return None
        manifest = snap.read_manifest(self.store)
        if manifest is None:
            return None
        if self._direct(manifest):
            # Two phases: every shard reads and verifies its own file (in parallel, in its own
            # process); only if all succeed do they swap it in. A bad file replaces nothing.
            args = {i: (self.store, manifest, i) for i in range(manifest.shards)}
            try:
                self._call_each("stage", args, retry=False)
            except BaseException:
                self._call_all("drop_staged")
                raise
            self._call_each("load_staged", {i: () for i in range(self.pool.size)}, False)
        else:
            parts = self._rows_by_shard(manifest)
            empty = _empty_like(self.embedder.dim)
            self._call_each(
                "load_table", {i: (parts.get(i, empty),) for i in range(self.pool.size)}, False
            )
        self.last_snapshot = manifest.snapshot_id
        return manifest

    def _direct(self, manifest: snap.Manifest) -> bool:
        """Can each shard load its own file as it is (same shard count, same embedder)?"""
        return (
            manifest.shards == self.pool.size
            and manifest.embedder == vector_space(self.embedder)
            and manifest.dim == self.embedder.dim
        )

    def _rows_by_shard(self, manifest: snap.Manifest) -> dict[int, pa.Table]:
        """All rows of a snapshot, re-embedded if the embedder changed, routed to our shards."""
        table = pa.concat_tables(snap.read_snapshot_tables(self.store, manifest))
        if manifest.embedder != vector_space(self.embedder) or manifest.dim != self.embedder.dim:
            vecs = self.embedder.encode(table.column("task_text").to_pylist())
            table = table.drop_columns([EMBEDDING]).append_column(EMBEDDING, _fixed_list(vecs))
        return self._route(table)


def _pairs(hits: list[Hit], agents: Sequence[str], on: ContrastOn) -> dict[str, list[ContrastPair]]:
    entries = [h.entry for h in hits]
    return {a: contrastive_pairs(entries, a, on) for a in agents}


def _fixed_list(vecs: np.ndarray) -> pa.FixedSizeListArray:
    vecs = np.ascontiguousarray(vecs, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), vecs.shape[1])


def _empty_like(dim: int) -> pa.Table:
    return MemoryShard(dim).to_table()
