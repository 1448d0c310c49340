"""The approximate index inside a shard: faiss IVF over the shard's rows, re-ranked exactly.

A shard keeps every vector in its float32 matrix (snapshots, exact re-ranking, the exact path).
The index only *proposes* candidates: an inverted file (``IndexIVFScalarQuantizer``, int8 codes,
384 bytes a record; or ``IndexIVFFlat``, float32) over k-means cells of the shard's vectors.
A query probes the ``nprobe`` nearest cells, takes the best ``candidates`` codes there, and the
shard scores those rows exactly from its matrix - so scores are exact cosines and only recall
is approximate.

Labels are insertion sequence numbers, not row positions: a shard's row ``r`` has label
``base + r``, where ``base`` counts every record ever evicted. Eviction drops the oldest rows,
so it is one range removal here (``remove_below``) and never renumbers the rest.

Why IVF and not HNSW (measured in ``benchmarks/results/memory_retrieval.md``): an IVF index is
built in seconds (k-means on a sample plus one assignment pass) where HNSW takes minutes per
million on two cores - and restore rebuilds the index - and IVF removes a range of ids in one
pass, which faiss' HNSW cannot do at all.

faiss is imported lazily: an exact-only memory never needs it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

IndexStorage = Literal["sq8", "flat"]


def _faiss() -> Any:
    import faiss

    faiss.omp_set_num_threads(1)  # shards share the cores: one thread each, no oversubscription
    return faiss


def nlist_for(n: int) -> int:
    """Cells for ``n`` vectors: ~4 sqrt(n) (at most n / 39, k-means' floor), a power of two
    between 16 and 4096."""
    want = min(4 * math.sqrt(max(n, 1)), max(n, 1) / 39)
    return int(min(4096, max(16, 2 ** math.floor(math.log2(max(want, 1))))))


class IVFIndex:
    """Inverted-file candidate generator over labelled unit vectors (inner product)."""

    def __init__(
        self,
        dim: int,
        nlist: int,
        nprobe: int = 16,
        storage: IndexStorage = "sq8",
    ) -> None:
        faiss = _faiss()
        self.dim, self.nlist, self.storage = dim, nlist, storage
        self._quantizer = faiss.IndexFlatIP(dim)
        ip = faiss.METRIC_INNER_PRODUCT
        if storage == "sq8":
            qt = faiss.ScalarQuantizer.QT_8bit
            self._index = faiss.IndexIVFScalarQuantizer(self._quantizer, dim, nlist, qt, ip)
        elif storage == "flat":
            self._index = faiss.IndexIVFFlat(self._quantizer, dim, nlist, ip)
        else:
            raise ValueError(f"unknown index storage {storage!r}")
        self.nprobe = nprobe
        self.built_for = 0  # records the cells were trained on

    @property
    def nprobe(self) -> int:
        return int(self._index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._index.nprobe = max(1, min(int(value), self.nlist))

    @classmethod
    def build(
        cls,
        vecs: np.ndarray,
        first_label: int,
        *,
        nprobe: int = 16,
        storage: IndexStorage = "sq8",
        seed: int = 0,
        nlist: int | None = None,
    ) -> IVFIndex:
        """Train cells on (a sample of) ``vecs`` and add them all, labelled from ``first_label``.
        Pure: reads ``vecs``, never writes it, so it can run in a thread beside searches."""
        n = len(vecs)
        idx = cls(vecs.shape[1], nlist or nlist_for(n), nprobe, storage)
        # k-means on 32 points a cell, 10 iterations: builds are dominated by training
        # otherwise (faiss' defaults, 256 points and 25 iterations, took 83 s for 250k here)
        # and recall was the same (benchmarks/results/memory_retrieval.md).
        idx._index.cp.niter = 10
        idx._index.cp.min_points_per_centroid = 4
        sample = min(n, idx.nlist * 32)
        rows = np.random.default_rng(seed).choice(n, sample, replace=False) if sample < n else None
        train = np.ascontiguousarray(vecs if rows is None else vecs[np.sort(rows)], np.float32)
        idx._index.train(train)
        idx.add(vecs, first_label)
        idx.built_for = n
        return idx

    def add(self, vecs: np.ndarray, first_label: int) -> None:
        """Add ``vecs`` with labels ``first_label, first_label + 1, ...``."""
        if not len(vecs):
            return
        for s in range(0, len(vecs), 65_536):  # bounded temporaries on bulk loads
            part = np.ascontiguousarray(vecs[s : s + 65_536], np.float32)
            labels = np.arange(first_label + s, first_label + s + len(part), dtype=np.int64)
            self._index.add_with_ids(part, labels)

    def remove_below(self, label: int) -> int:
        """Drop every label < ``label`` (evicted records); returns how many were dropped."""
        if label <= 0 or not self._index.ntotal:
            return 0
        return int(self._index.remove_ids(_faiss().IDSelectorRange(0, int(label))))

    def candidates(self, q: np.ndarray, count: int) -> np.ndarray:
        """Labels of up to ``count`` candidates per query row (-1 pads; approximate order)."""
        _, labels = self._index.search(np.ascontiguousarray(q, np.float32), count)
        return labels

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def nbytes(self) -> int:
        """Approximate heap bytes: codes + ids + centroids."""
        code = self.dim if self.storage == "sq8" else 4 * self.dim
        return self.ntotal * (code + 8) + self.nlist * self.dim * 4

    def serialize(self) -> np.ndarray:
        """The index as bytes (snapshots persist it: :mod:`.index_file`)."""
        return _faiss().serialize_index(self._index)

    @classmethod
    def deserialize(cls, data: np.ndarray, nprobe: int = 16) -> IVFIndex:
        faiss = _faiss()
        index = faiss.deserialize_index(data)  # already the concrete type (downcasting
        # again would let the first wrapper free the C++ object)
        obj = cls.__new__(cls)
        obj._index = index
        obj._quantizer = index.quantizer
        obj.dim, obj.nlist = index.d, index.nlist
        obj.storage = "flat" if isinstance(index, faiss.IndexIVFFlat) else "sq8"
        obj.nprobe, obj.built_for = nprobe, index.ntotal
        return obj


IVF_MIN_RECORDS = 1024  # index: ivf builds from here (k-means needs points); auto waits longer


class IndexPolicy:
    """When a shard builds (and rebuilds) its index, and how it searches it."""

    def __init__(
        self,
        kind: str = "exact",
        min_records: int = 5_000,
        nprobe: int = 16,
        candidates: int = 64,
        storage: IndexStorage = "sq8",
        persist: bool = True,
    ) -> None:
        if kind not in ("exact", "ivf", "auto"):
            raise ValueError(f"unknown index kind {kind!r}")
        self.kind, self.nprobe, self.candidates, self.storage = kind, nprobe, candidates, storage
        self.persist = persist  # snapshots carry the index; restores load it (index_file.py)
        self.min_records = min(min_records, IVF_MIN_RECORDS) if kind == "ivf" else min_records

    @classmethod
    def from_config(cls, cfg: Any) -> IndexPolicy:
        """From a :class:`~.config.MemoryConfig`."""
        return cls(
            cfg.index,
            cfg.index_min_records,
            cfg.index_nprobe,
            cfg.index_candidates,
            cfg.index_storage,
            cfg.index_persist,
        )

    def wants_build(self, n: int, base: int, index: IVFIndex | None, built_base: int) -> bool:
        """Build when the shard first reaches ``min_records``; rebuild when it has grown 4x
        since (more cells) or has evicted as many records as the cells were trained on
        (the data drifted away from them)."""
        if self.kind == "exact" or n < self.min_records:
            return False
        if index is None:
            return True
        return n >= 4 * index.built_for or base - built_base >= index.built_for

    def build(self, vecs: np.ndarray, first_label: int) -> IVFIndex:
        return IVFIndex.build(vecs, first_label, nprobe=self.nprobe, storage=self.storage)
