"""The Ray edge of the memory: shards as actors. The only place shards meet ``ray.remote``.

Each :class:`ShardActor` is an async actor wrapping one plain :class:`~.shard.MemoryShard`. The
shard's Arrow segments are sealed into the object store (``ray.put``) and read back zero-copy, so
the records live in shared memory rather than on the actor's heap, and can be handed to other
processes (:meth:`ShardActor.segment_refs`) without a copy. The embedding matrix stays on the
actor's heap: it is mutated in place and scanned on every query. Methods do no awaiting, so calls
on one shard run one at a time and the plain shard needs no locks.

Ray actors are at-most-once (RELIABILITY.md): shards are created with ``max_restarts=0`` and a
dead one is replaced by :meth:`ShardedMemory.recover`, which restores the last snapshot and
reports what was lost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import RayActorError

from .config import MemoryConfig, StorageConfig
from .embed import Embedder, make_embedder
from .pool import ShardUnavailable
from .shard import Hit, MemoryShard
from .sharded import ShardedMemory


def _seal(table: pa.Table) -> tuple[pa.Table, Any]:
    ref = ray.put(table)
    # Reading our own object back maps the plasma buffers: the table the shard keeps is a
    # zero-copy view into the object store, and the heap copy is garbage once we return.
    return ray.get(ref), ref


class ShardActor:
    """One memory shard in its own process (wrap with :func:`ray.remote`, see :func:`start_memory`)."""

    def __init__(self, dim: int, max_records: int, max_segments: int) -> None:
        # _seal's ray.get reads this actor's own, already-local object: it never waits, so Ray's
        # "blocking ray.get inside async actor" advice does not apply. (Read per call; this is
        # the actor's own process. A runtime_env would cost a slower worker start instead.)
        os.environ["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] = "0"
        self.shard = MemoryShard(dim, max_records, max_segments, seal=_seal)

    async def write_table(self, table: pa.Table, vectors: np.ndarray | None = None) -> int:
        return self.shard.write_table(table, vectors)

    async def search(self, query_vecs: np.ndarray, k: int) -> list[list[Hit]]:
        return self.shard.search(query_vecs, k)

    async def search_rows(self, query_vecs: np.ndarray, k: int) -> list[list[tuple[float, dict]]]:
        return self.shard.search_rows(query_vecs, k)

    async def missing(self, auction_ids: list[str]) -> list[str]:
        return self.shard.missing(auction_ids)

    async def stats(self) -> dict[str, Any]:
        return {**self.shard.stats(), "pid": os.getpid()}

    async def to_table(self) -> pa.Table:
        return self.shard.to_table()

    async def load_table(self, table: pa.Table) -> int:
        return self.shard.load_table(table)

    async def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(shard, *args)`` here: snapshot file writes and restores read and write
        storage from the shard's own process, in parallel across shards."""
        return fn(self.shard, *args)

    async def segment_refs(self) -> list[Any]:
        """Object refs of the shard's segments (zero-copy reads for analytics)."""
        return [s.ref for s in self.shard._segments]


class ActorShardPool:
    """Shard actors behind the :class:`~.pool.ShardPool` seam."""

    def __init__(self, factory: Callable[[int], Any], size: int) -> None:
        self._factory = factory
        self.size = size
        self.handles = [factory(i) for i in range(size)]

    def submit(self, i: int, method: str, *args: Any) -> Any:
        return getattr(self.handles[i], method).remote(*args)

    def result(self, i: int, pending: Any) -> Any:
        try:
            return ray.get(pending)
        except RayActorError as e:
            raise ShardUnavailable(i, type(e).__name__) from None

    async def aresult(self, i: int, pending: Any) -> Any:
        try:
            return await pending
        except RayActorError as e:
            raise ShardUnavailable(i, type(e).__name__) from None

    def restart(self, i: int) -> None:
        try:
            ray.kill(self.handles[i], no_restart=True)
        except Exception:  # noqa: BLE001 - already dead is the usual case
            pass
        self.handles[i] = self._factory(i)


class AttachedShardPool(ActorShardPool):
    """Shard actors this process found by name but does not own: it never restarts them. A
    shard restarted here would belong to this (often short-lived) driver and die with it, and
    the owner would not know; recovery is the owner's job."""

    def __init__(self, handles: list[Any], prefix: str) -> None:
        self.handles, self.size, self.prefix = handles, len(handles), prefix

    def restart(self, i: int) -> None:
        from ..errors import InfraError

        raise InfraError(f"memory shard '{self.prefix}-{i}' is not running (attached, not owned)")


def _factory(
    cfg: MemoryConfig, dim: int, actor_options: dict[str, Any] | None
) -> Callable[[int], Any]:
    remote_cls = ray.remote(ShardActor)
    base: dict[str, Any] = {
        "num_cpus": 0,
        "max_restarts": 0,
        "max_task_retries": 0,
        **(actor_options or {}),
    }

    def factory(i: int) -> Any:
        opts = dict(base)
        if not cfg.actor_name_prefix:
            return remote_cls.options(**opts).remote(
                dim, cfg.max_records_per_shard, cfg.max_segments
            )
        opts["name"] = f"{cfg.actor_name_prefix}-{i}"
        deadline = time.monotonic() + 10
        while True:  # a killed actor's name is freed asynchronously by the GCS
            try:
                return remote_cls.options(**opts).remote(
                    dim, cfg.max_records_per_shard, cfg.max_segments
                )
            except ValueError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    return factory


def start_memory(
    cfg: MemoryConfig | None = None,
    storage: StorageConfig | None = None,
    *,
    embedder: Embedder | None = None,
    actor_options: dict[str, Any] | None = None,
) -> ShardedMemory:
    """Start ``cfg.shards`` shard actors on the connected Ray cluster and return the memory,
    restored from the latest snapshot when one is configured (errors name the bad file).

    ``actor_options`` go to ``.options()`` (resources, scheduling, ``lifetime="detached"``,
    ``namespace``). Shards reserve no CPU by default: they are idle between queries, and agents
    need the cores. Only one process should own a memory (it tracks what is not yet
    snapshotted); others may :func:`connect_memory` to query or snapshot it.
    """
    if not ray.is_initialized():
        raise RuntimeError("start_memory needs a connected Ray cluster (ray.init first)")
    cfg = cfg or MemoryConfig()
    emb = embedder or make_embedder(cfg.embedder)
    pool = ActorShardPool(_factory(cfg, emb.dim, actor_options), cfg.shards)
    mem = ShardedMemory(pool, emb, cfg, storage)
    if cfg.restore_on_start:
        mem.restore()
    return mem


def connect_memory(
    cfg: MemoryConfig,
    storage: StorageConfig | None = None,
    *,
    embedder: Embedder | None = None,
    namespace: str | None = None,
) -> ShardedMemory:
    """Attach to running named shard actors (``cfg.actor_name_prefix``), e.g. from
    ``sale-ray snapshot`` in another job. Nothing is restored on attach, and a dead shard is
    an error here, never restarted (:class:`AttachedShardPool`)."""
    if not cfg.actor_name_prefix:
        raise ValueError("connect_memory needs memory.actor_name_prefix (named shard actors)")
    emb = embedder or make_embedder(cfg.embedder)
    handles = [
        ray.get_actor(f"{cfg.actor_name_prefix}-{i}", namespace=namespace)
        for i in range(cfg.shards)
    ]
    return ShardedMemory(AttachedShardPool(handles, cfg.actor_name_prefix), emb, cfg, storage)
