"""The pieces a shard is made of: immutable Arrow segments, unit vectors, and views of both.

Split from :mod:`.shard` (which re-exports these names) to keep modules small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from .entry import ENTRY_SCHEMA

EMBEDDING = "embedding"
Seal = Callable[[pa.Table], tuple[pa.Table, Any]]


class _Segment:
    __slots__ = ("table", "ref")

    def __init__(self, table: pa.Table, ref: Any = None) -> None:
        self.table = table
        self.ref = ref  # keeps an object-store copy alive while the segment is in use


def normalise_rows(m: np.ndarray) -> np.ndarray:
    """float32 ``m`` (1-d or 2-d) with unit rows; zero rows stay zero.

    Rows already of unit norm (within 1e-6) are left bit-for-bit as they are, so normalising is
    idempotent and a snapshot restores exactly the vectors it saved.
    """
    m = np.atleast_2d(np.asarray(m, dtype=np.float32))
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    unit = np.abs(norms - 1.0) <= 1e-6
    if unit.all():  # restores: no copy of a matrix that is already normalised
        return m
    scale = np.where(unit, 1.0, 1.0 / np.maximum(norms, 1e-12))
    return (m * scale.astype(np.float32)).astype(np.float32, copy=False)


def storage_schema(dim: int) -> pa.Schema:
    """Schema of a shard's table form (snapshots): the entry columns plus the embedding."""
    return ENTRY_SCHEMA.append(pa.field(EMBEDDING, pa.list_(pa.float32(), dim)))


class ShardView(NamedTuple):
    """Segments and matrix rows of a shard at one moment (see :meth:`MemoryShard.view`)."""

    tables: tuple[pa.Table, ...]
    vecs: np.ndarray
    dim: int

    def to_table(self) -> pa.Table:
        recs = pa.concat_tables(self.tables) if self.tables else ENTRY_SCHEMA.empty_table()
        flat = pa.array(np.ascontiguousarray(self.vecs).reshape(-1))
        emb = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        return recs.append_column(pa.field(EMBEDDING, emb.type), emb)


def merge_segments(segments: Sequence[_Segment], seal: Seal) -> _Segment:
    """One segment holding ``segments``' rows in order (pure: safe in a thread)."""
    merged = pa.concat_tables([s.table for s in segments]).combine_chunks()
    return _Segment(*seal(merged))


def _embedding_matrix(table: pa.Table, dim: int) -> np.ndarray:
    col = table.column(EMBEDDING).combine_chunks()
    if not pa.types.is_fixed_size_list(col.type) or col.type.list_size != dim:
        raise ValueError(f"{EMBEDDING!r} must be fixed_size_list<float>[{dim}], got {col.type}")
    if col.null_count:
        raise ValueError(f"{EMBEDDING!r} has null rows")
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(flat, dtype=np.float32).reshape(len(col), dim)
