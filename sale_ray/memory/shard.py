"""One memory shard: immutable Arrow segments of entries plus a float32 embedding matrix.

A plain class (no Ray): :mod:`.remote` wraps it in an actor and passes a ``seal`` hook that moves
each segment into the object store. Vectors are L2-normalised on write. Search is cosine top-k:
exact (one matrix-vector product plus ``argpartition``), or, once the shard has an approximate
index (:mod:`.index`, ``memory.index``), the index proposes candidates and they are scored
exactly from the matrix. Every write is added to the index before the write returns, and every
eviction removed from it, so a search sees each acknowledged write.

Maintenance that copies a lot (compaction merges, index builds, snapshot tables) works on
immutable inputs: segments are never mutated, and rows ``[0, n)`` of the matrix array are never
written again (appends go past ``n``; growth and eviction allocate a new array). So a
:meth:`MemoryShard.view` taken between two calls can be read from a thread while the shard goes
on serving, and with ``defer_maintenance`` the shard leaves merges and index builds to its
owner (the actor runs them in a thread and swaps the result in between two calls).

Why float32 and not float16: numpy has no float16 BLAS, so a float16 scan of 250k x 384 took
~215 ms against ~15 ms in float32 here (measured); the memory saved is not worth 15x latency.

Bound and compaction policy (documented, tested):

* **Eviction — oldest first.** Records are kept in insertion order. When a write takes the shard
  past ``max_records``, the oldest records are dropped until ``max_records - slack`` remain
  (``slack`` = 10 % of the bound, at least 1). The slack makes evictions, which shift the matrix,
  happen once per ~``max_records / 10`` new records instead of on every write.
* **Compaction — size-tiered.** Each write appends one segment; while the newest segment is at
  least half the size of the one before, the two are merged. Segments thus grow geometrically:
  at most ~log2(records) of them, and each record is copied O(log n) times over its life.
  ``max_segments`` is a hard cap on top (everything is merged into one past it).
* **Idempotency.** A write is keyed by ``auction_id``: a record already present (or repeated
  within the batch) is skipped, first write wins. An id evicted long ago can be written again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from .entry import ENTRY_SCHEMA, MemoryEntry, entries_table
from .index import IndexPolicy, IVFIndex
from .segments import (
    EMBEDDING,
    Seal,
    ShardView,
    _embedding_matrix,
    _Segment,
    merge_segments,
    normalise_rows,
    storage_schema,
)

__all__ = [
    "EMBEDDING",
    "Hit",
    "MemoryShard",
    "ShardView",
    "merge_segments",
    "normalise_rows",
    "storage_schema",
]


class Hit(NamedTuple):
    """One search result: cosine similarity and the entry."""

    score: float
    entry: MemoryEntry


class MemoryShard:
    """Bounded, idempotent store of memory entries with exact cosine top-k search."""

    def __init__(
        self,
        dim: int = 384,
        max_records: int = 250_000,
        max_segments: int = 32,
        seal: Seal | None = None,
        index: IndexPolicy | None = None,
        defer_maintenance: bool = False,
    ) -> None:
        if max_records < 1 or max_segments < 1:
            raise ValueError("max_records and max_segments must be >= 1")
        self.dim = dim
        self.max_records = max_records
        self.max_segments = max_segments
        self.policy = index or IndexPolicy()
        self.defer_maintenance = defer_maintenance
        self._seal = seal or (lambda t: (t, None))
        self._segments: list[_Segment] = []
        self._vecs = np.zeros((0, dim), dtype=np.float32)
        self._n = 0
        self._base = 0  # label of row 0 = records ever evicted (labels never shift)
        self._index: IVFIndex | None = None
        self._built_base = 0  # _base when the index was trained
        # The index holds labels [_index_floor, _index_upto): normally every row. While a
        # snapshot serialises it (_frozen) it is left alone, rows written meanwhile are
        # searched exactly (_ann_rows) and _sync_index catches up when it is thawed.
        self._index_upto = self._index_floor = 0
        self._frozen: IVFIndex | None = None
        self.index_source: str | None = None  # "built" | "snapshot": how the index came to be
        self._ids: set[str] = set()  # auction ids present: the idempotency key
        self._counts = {"writes": 0, "added": 0, "duplicates": 0, "evicted": 0, "compactions": 0}
        self._counts["index_builds"] = self._counts["index_loads"] = 0

    # --- writes ---------------------------------------------------------------------------------
    def write(self, entries: Sequence[MemoryEntry], vectors: np.ndarray) -> int:
        """Add entries with their task-text embeddings; returns how many were new."""
        return self.write_table(entries_table(entries), vectors)

    def write_table(self, table: pa.Table, vectors: np.ndarray | None = None) -> int:
        """Add rows of an entry table; vectors come from ``vectors`` or the table's embedding
        column. Returns how many rows were new (duplicates by ``auction_id`` are skipped)."""
        self._counts["writes"] += 1
        return self._write(table, vectors)

    def _write(self, table: pa.Table, vectors: np.ndarray | None) -> int:
        if vectors is None:
            if EMBEDDING not in table.column_names:
                raise ValueError(f"table has no {EMBEDDING!r} column and no vectors were given")
            vectors = _embedding_matrix(table, self.dim)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape != (table.num_rows, self.dim):
            raise ValueError(f"vectors must be ({table.num_rows}, {self.dim}), got {vectors.shape}")
        ids = table.column("auction_id").to_pylist()
        keep, seen = [], set()
        for i, aid in enumerate(ids):
            if aid is None:
                raise ValueError("auction_id must not be null")
            if aid in self._ids or aid in seen:
                continue
            seen.add(aid)
            keep.append(i)
        self._counts["duplicates"] += len(ids) - len(keep)
        if not keep:
            return 0
        if len(keep) < len(ids):
            table, vectors = table.take(keep), vectors[keep]
        vecs = normalise_rows(vectors)
        self._append(table.select(ENTRY_SCHEMA.names).cast(ENTRY_SCHEMA), vecs)
        self._ids.update(seen)
        self._counts["added"] += len(keep)
        if self._n > self.max_records:
            slack = max(1, self.max_records // 10)
            self._evict(self._n - max(1, self.max_records - slack))
        self._sync_index()
        if not self.defer_maintenance:
            self.maintain()
        return len(keep)

    def _append(self, table: pa.Table, vecs: np.ndarray) -> None:
        m = len(vecs)
        if self._n + m > len(self._vecs):
            # Grow geometrically (amortised O(1) per row), never past the bound plus this batch.
            cap = max(self._n + m, min(2 * len(self._vecs), self.max_records + m), 64)
            grown = np.empty((cap, self.dim), dtype=np.float32)
            grown[: self._n] = self._vecs[: self._n]
            self._vecs = grown
        self._vecs[self._n : self._n + m] = vecs
        self._n += m
        self._segments.append(_Segment(*self._seal(table.combine_chunks())))

    def _evict(self, count: int) -> None:
        """Drop the ``count`` oldest rows (segments are sliced zero-copy, the matrix shifted)."""
        count = min(count, self._n)
        dropped, left = [], count
        while left:
            seg = self._segments[0]
            rows = seg.table.num_rows
            if rows <= left:
                dropped.append(seg.table.column("auction_id"))
                self._segments.pop(0)
                left -= rows
            else:
                dropped.append(seg.table.column("auction_id").slice(0, left))
                self._segments[0] = _Segment(seg.table.slice(left), seg.ref)
                left = 0
        for col in dropped:
            self._ids.difference_update(col.to_pylist())
        # A new array, not an in-place shift: views taken earlier (snapshots) stay valid.
        kept = np.empty_like(self._vecs)
        kept[: self._n - count] = self._vecs[count : self._n]
        self._vecs = kept
        self._n -= count
        self._base += count
        self._counts["evicted"] += count

    # --- maintenance: compaction and index builds -------------------------------------------------
    def maintain(self) -> None:
        """Run due compactions and index builds here, now (what a plain shard does per write)."""
        while (plan := self.compaction_plan()) is not None:
            self.finish_compaction(plan, merge_segments(plan[1], self._seal))
        if (job := self.index_plan()) is not None:
            self.install_index(self.policy.build(*job), job[1])

    def compaction_plan(self) -> tuple[int, tuple[_Segment, ...]] | None:
        """The next merge due, as ``(start, segments)``: size-tiered (the newest segment at
        least half the one before), and everything past ``max_segments``."""
        segs = self._segments
        if len(segs) > self.max_segments:
            return 0, tuple(segs)
        if len(segs) >= 2 and 2 * segs[-1].table.num_rows >= segs[-2].table.num_rows:
            start = len(segs) - 2
            while (
                start > 0
                and 2 * sum(s.table.num_rows for s in segs[start:])
                >= segs[start - 1].table.num_rows
            ):
                start -= 1
            return start, tuple(segs[start:])
        return None

    def finish_compaction(self, plan: tuple[int, tuple[_Segment, ...]], merged: _Segment) -> bool:
        """Swap a merged segment in for its sources, if they are all still there unchanged
        (an eviction in the meantime slices the oldest one: then the merge is dropped)."""
        start, sources = plan
        now = self._segments[start : start + len(sources)]
        if len(now) != len(sources) or any(a is not b for a, b in zip(now, sources, strict=True)):
            return False
        self._segments[start : start + len(sources)] = [merged]
        self._counts["compactions"] += 1
        return True

    def index_plan(self) -> tuple[np.ndarray, int] | None:
        """``(vectors, first_label)`` to build an index from, if one is due (a read-only view:
        build it anywhere, then :meth:`install_index`)."""
        if not self.policy.wants_build(self._n, self._base, self._index, self._built_base):
            return None
        return self._vecs[: self._n], self._base

    def install_index(self, index: IVFIndex, first_label: int, source: str = "built") -> None:
        """Adopt an index holding labels ``[first_label, first_label + index.ntotal)`` (built
        from a view taken at ``first_label``, or loaded from a snapshot): rows written since
        are added to it and rows evicted since removed, then it replaces the current one."""
        self._index, self._built_base, self.index_source = index, self._base, source
        self._counts["index_builds" if source == "built" else "index_loads"] += 1
        self._index_floor, self._index_upto = first_label, first_label + index.ntotal
        self._sync_index()

    def _sync_index(self) -> None:
        """Bring the index level with the matrix (new rows in, evicted labels out), unless a
        snapshot is serialising it right now."""
        index = self._index
        if index is None or index is self._frozen:
            return
        end = self._base + self._n
        if self._index_upto < end:
            start = max(self._index_upto, self._base) - self._base
            index.add(self._vecs[start : self._n], self._base + start)
            self._index_upto = end
        if self._index_floor < self._base:
            index.remove_below(self._base)
            self._index_floor = self._base

    def freeze_index(self) -> tuple[IVFIndex, int] | None:
        """The index and its first label, unchanged until :meth:`thaw_index`, for a snapshot to
        serialise in a thread; it then holds exactly the rows of a :meth:`view` taken now.
        None when there is no index, it is behind the matrix, or it is frozen already."""
        index = self._index
        level = self._index_upto == self._base + self._n and self._index_floor == self._base
        if index is None or self._frozen is not None or not level:
            return None
        self._frozen = index
        return index, self._base

    def thaw_index(self) -> None:
        """End :meth:`freeze_index`: the index catches up with what was written meanwhile."""
        self._frozen = None
        self._sync_index()

    @property
    def index(self) -> IVFIndex | None:
        """The approximate index, if built (None = exact search)."""
        return self._index

    # --- reads ----------------------------------------------------------------------------------
    def search(self, query_vecs: np.ndarray, k: int) -> list[list[Hit]]:
        """Cosine top-``k`` per query row (best first); a 1-d query is one row."""
        return [
            [Hit(sc, MemoryEntry.model_validate(row)) for sc, row in hits]
            for hits in self.search_rows(query_vecs, k)
        ]

    def search_rows(
        self, query_vecs: np.ndarray, k: int, exact: bool = False
    ) -> list[list[tuple[float, dict]]]:
        """Like :meth:`search` with plain dict rows instead of entries. This is what crosses
        process boundaries: dicts pickle several times faster than pydantic models, and the
        caller validates only the k rows that survive the merge over shards. ``exact`` scans
        the whole matrix even if an index exists (recall baselines)."""
        q = normalise_rows(query_vecs)
        if q.shape[1] != self.dim:
            raise ValueError(f"query dim {q.shape[1]} != shard dim {self.dim}")
        rows, scores = self.exact_rows(q, k) if exact else self.top_rows(q, k)
        flat = self.rows_at(np.concatenate(rows)) if rows else []
        out, at = [], 0
        for sc in scores:
            out.append([(float(x), flat[at + j]) for j, x in enumerate(sc)])
            at += len(sc)
        return out

    def top_rows(self, q: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Row indices and scores of the top-``k`` per (already normalised) query, best first."""
        if self._index is not None and self._n and k > 0:
            return self._ann_rows(q, k)
        return self.exact_rows(q, k)

    def exact_rows(self, q: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:meth:`top_rows` by a full scan even when an index exists (recall baselines). Reads
        only: searches may run beside each other (the direct search line, :mod:`.direct`)."""
        n = self._n
        if n == 0 or k <= 0:
            return [np.empty(0, np.int64)] * len(q), [np.empty(0, np.float32)] * len(q)
        m = self._vecs[:n]
        sims = (m @ q[0])[None, :] if len(q) == 1 else q @ m.T
        kk = min(k, n)
        part = np.argpartition(sims, n - kk, axis=1)[:, n - kk :] if kk < n else None
        out_rows, out_scores = [], []
        for i in range(len(q)):
            cand = part[i] if part is not None else np.arange(n)
            sc = sims[i, cand]
            order = np.lexsort((cand, -sc))  # best score first, ties by older row
            out_rows.append(cand[order])
            out_scores.append(sc[order])
        return out_rows, out_scores

    def _ann_rows(self, q: np.ndarray, k: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Index candidates, scored exactly from the matrix, best first (ties: older row)."""
        labels = self._index.candidates(q, max(k, self.policy.candidates))  # type: ignore[union-attr]
        # rows the index does not hold yet (written while a snapshot serialises it): exact
        tail = np.arange(max(self._index_upto - self._base, 0), self._n)
        out_rows, out_scores = [], []
        for i in range(len(q)):
            rows = labels[i][labels[i] >= self._base] - self._base
            rows = rows[rows < self._n]
            if len(tail):
                rows = np.concatenate([rows, tail])
            sc = self._vecs[rows] @ q[i]
            order = np.lexsort((rows, -sc))[:k]
            out_rows.append(rows[order])
            out_scores.append(sc[order])
        return out_rows, out_scores

    def entries_at(self, rows: Iterable[int]) -> list[MemoryEntry]:
        """Entries at the given row positions (insertion order, oldest = 0)."""
        return [MemoryEntry.model_validate(r) for r in self.rows_at(np.fromiter(rows, np.int64))]

    def rows_at(self, rows: np.ndarray) -> list[dict]:
        """Entry dicts at the given row positions: one ``take`` per segment touched."""
        out: list[dict] = [{}] * len(rows)
        if not len(rows):
            return out
        starts = np.array(self._starts())
        seg = np.searchsorted(starts, rows, side="right") - 1
        for si in np.unique(seg):
            pos = np.flatnonzero(seg == si)
            got = self._segments[si].table.take(rows[pos] - starts[si]).to_pylist()
            for p, row in zip(pos, got, strict=True):
                out[p] = row
        return out

    def _starts(self) -> list[int]:
        starts, acc = [], 0
        for s in self._segments:
            starts.append(acc)
            acc += s.table.num_rows
        return starts

    def __len__(self) -> int:
        return self._n

    def __contains__(self, auction_id: object) -> bool:
        return auction_id in self._ids

    def missing(self, auction_ids: Iterable[str]) -> list[str]:
        """The given ids that this shard does not hold (for loss reports after a restart)."""
        return [a for a in auction_ids if a not in self._ids]

    def stats(self) -> dict[str, Any]:
        """Counts and sizes: records, segments, bytes, writes, duplicates, evictions..."""
        return {
            "records": self._n,
            "max_records": self.max_records,
            "segments": len(self._segments),
            "segment_rows": [s.table.num_rows for s in self._segments],
            "record_bytes": sum(s.table.nbytes for s in self._segments),
            "matrix_bytes": int(self._n * self.dim * 4),
            "index": "ivf" if self._index is not None else "exact",
            "index_bytes": self._index.nbytes() if self._index is not None else 0,
            "index_nlist": self._index.nlist if self._index is not None else 0,
            "index_source": self.index_source if self._index is not None else None,
            "dim": self.dim,
            **self._counts,
        }

    # --- table form (snapshots) -----------------------------------------------------------------
    def view(self) -> ShardView:
        """An immutable view of the current contents (cheap: no copy); readable from another
        thread while this shard goes on serving and writing."""
        return ShardView(tuple(s.table for s in self._segments), self._vecs[: self._n], self.dim)

    def to_table(self) -> pa.Table:
        """All records, oldest first, with an ``embedding`` column (a copy: safe to keep)."""
        return self.view().to_table()

    def load_table(self, table: pa.Table, index: tuple[IVFIndex, int] | None = None) -> int:
        """Replace the contents with a table from :meth:`to_table` (restore); returns rows.
        ``index``: the index persisted with it and its first label (:mod:`.index_file`),
        adopted as it is; without one, the index is built here (restore = rebuild)."""
        vectors = _embedding_matrix(table, self.dim)  # validate before dropping anything
        self.__init__(*self._settings())  # type: ignore[misc]
        if index is not None:
            self._base = index[1]  # the rows keep the labels the persisted index knows them by
        defer, self.defer_maintenance = self.defer_maintenance, True
        try:
            added = self._write(table, vectors)
            if index is not None:
                self.install_index(index[0], index[1], source="snapshot")
            self.maintain()
        finally:
            self.defer_maintenance = defer
        return added

    def loaded(self, table: pa.Table, index: tuple[IVFIndex, int] | None = None) -> MemoryShard:
        """A new shard like this one holding ``table`` (index loaded or built); this one is
        untouched, so a restore can be prepared beside a shard that keeps serving, then
        swapped in."""
        shard = MemoryShard(*self._settings())
        shard.load_table(table, index)
        return shard

    def _settings(self) -> tuple:
        """What ``__init__`` was given: an empty shard like this one is built from it."""
        return (
            self.dim,
            self.max_records,
            self.max_segments,
            self._seal,
            self.policy,
            self.defer_maintenance,
        )

    @classmethod
    def from_table(cls, table: pa.Table, **kwargs: Any) -> MemoryShard:
        """A new shard holding the rows of ``table`` (dim taken from its embedding column)."""
        dim = table.schema.field(EMBEDDING).type.list_size
        shard = cls(dim=dim, **kwargs)
        shard.load_table(table)
        return shard
