"""The Ray edge of the memory: shards as actors. The only place shards meet ``ray.remote``.

Each :class:`ShardActor` is an async actor wrapping one plain :class:`~.shard.MemoryShard`. The
shard's Arrow segments are sealed into the object store (``ray.put``) and read back zero-copy, so
the records live in shared memory rather than on the actor's heap, and can be handed to other
processes (:meth:`ShardActor.segment_refs`) without a copy. The embedding matrix (and the
approximate index, if any) stays on the actor's heap.

Searches never wait behind maintenance. Writes and searches run on the actor's event loop, one at
a time; the one exception is the direct search line (:mod:`.direct`, ``memory.search_transport:
direct``), whose server answers on threads of its own, so every change the loop makes to the
shard holds ``_lock``, and so does that server's search (searches only read: loop searches need
no lock). Everything slow runs on a maintenance thread (nice +10: it takes the CPU the searches
leave) on immutable inputs:
a snapshot writes a :meth:`~.shard.MemoryShard.view` taken between two calls; compaction merges
and index builds work on segments and matrix rows that are never written again and are swapped
in between two calls (``defer_maintenance``); a restore builds a whole new shard (index
included) beside the one serving, replays the writes that arrived meanwhile, and swaps.

How stale a search may be: never by an acknowledged write (writes go to the serving shard and
its index before they return; a background index build catches up before it is swapped in).
During a restore, searches answer from the contents before it until the swap - at most the
restore's duration.

Ray actors are at-most-once (RELIABILITY.md): shards are created with ``max_restarts=0`` and a
dead one is replaced by :meth:`ShardedMemory.recover`, which restores the last snapshot and
reports what was lost.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.exceptions import RayActorError

from . import pool as shard_ops
from .config import MemoryConfig, StorageConfig
from .direct import DirectSearch, SearchServer
from .embed import Embedder, make_embedder
from .index import IndexPolicy
from .pool import ShardUnavailable
from .shard import Hit, MemoryShard, merge_segments
from .sharded import ShardedMemory


def _seal(table: pa.Table) -> tuple[pa.Table, Any]:
    ref = ray.put(table)
    # Reading our own object back maps the plasma buffers: the table the shard keeps is a
    # zero-copy view into the object store, and the heap copy is garbage once we return.
    return ray.get(ref), ref


class ShardActor:
    """One memory shard in its own process (wrap with :func:`ray.remote`, see :func:`start_memory`)."""

    def __init__(
        self, dim: int, max_records: int, max_segments: int, index: IndexPolicy | None = None
    ) -> None:
        # _seal's ray.get reads this actor's own, already-local object: it never waits, so Ray's
        # "blocking ray.get inside async actor" advice does not apply. (Read per call; this is
        # the actor's own process. A runtime_env would cost a slower worker start instead.)
        os.environ["RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"] = "0"
        self.shard = MemoryShard(
            dim, max_records, max_segments, seal=_seal, index=index, defer_maintenance=True
        )
        self._lock = threading.Lock()  # the loop's changes vs the direct line's searches
        # maintenance threads run at a lower CPU priority than the searches (see _lower)
        self._maintenance = ThreadPoolExecutor(2, "memory-maintenance", initializer=_lower)
        self._server: SearchServer | None = None
        self._maint: asyncio.Task | None = None
        self._during_restore: list[tuple[pa.Table, np.ndarray | None]] | None = None
        self._staged: MemoryShard | None = None

    async def write_table(self, table: pa.Table, vectors: np.ndarray | None = None) -> int:
        with self._lock:
            added = self.shard.write_table(table, vectors)
        if self._during_restore is not None:  # replayed onto the restored shard before the swap
            self._during_restore.append((table, vectors))
        self._kick()
        return added

    # --- maintenance, off the loop ------------------------------------------------------------
    def _background(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future:
        """Run ``fn(*args)`` on a maintenance thread (low priority), awaitable from the loop."""
        return asyncio.get_running_loop().run_in_executor(self._maintenance, fn, *args)

    def _kick(self) -> None:
        if self._maint is None or self._maint.done():
            self._maint = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        """Due merges and index builds, each computed in a thread, swapped in on the loop."""
        while True:
            shard = self.shard
            if (plan := shard.compaction_plan()) is not None:
                merged = await self._background(merge_segments, plan[1], _seal)
                with self._lock:
                    if shard is self.shard:
                        shard.finish_compaction(plan, merged)
            elif (job := shard.index_plan()) is not None:
                index = await self._background(shard.policy.build, *job)
                with self._lock:
                    if shard is self.shard:
                        shard.install_index(index, job[1])
            else:
                return

    async def settle(self) -> dict[str, Any]:
        """Wait until no maintenance is due (benchmarks, tests); returns :meth:`stats`."""
        while True:
            if self._maint is not None and not self._maint.done():
                await self._maint
            elif self.shard.compaction_plan() is None and self.shard.index_plan() is None:
                return await self.stats()
            else:
                self._kick()

    async def _swap_in(self, build: Callable[[], MemoryShard]) -> MemoryShard:
        """Build a replacement shard in a thread while this one serves; writes that arrive
        meanwhile are replayed onto it (idempotent by auction id) before it takes over."""
        self._during_restore = []
        try:
            new = await self._background(build)
            for table, vectors in self._during_restore:
                new.write_table(table, vectors)
        finally:
            self._during_restore = None
        return new

    async def snapshot_files(self, store: Any, sid: str, i: int) -> list[Any]:
        shard = self.shard
        with self._lock:  # taken between two changes: the view and the index agree
            view = shard.view()
            frozen = shard.freeze_index() if shard.policy.persist else None
        try:
            return await self._background(shard_ops.write_file, view, store, sid, i, frozen)
        finally:
            if frozen is not None:
                with self._lock:
                    shard.thaw_index()

    async def restore(self, store: Any, manifest: Any, i: int) -> int:
        shard = self.shard
        self.shard = await self._swap_in(
            lambda: shard.loaded(*shard_ops.read_for_restore(shard, store, manifest, i))
        )
        self._kick()
        return len(self.shard)

    async def stage(self, store: Any, manifest: Any, i: int) -> int:
        """Phase one of a restore: read, verify and build the new shard aside (writes that
        arrive from now on are replayed onto it by :meth:`load_staged`)."""
        shard = self.shard
        self._during_restore = []
        try:
            self._staged = await self._background(
                lambda: shard.loaded(*shard_ops.read_for_restore(shard, store, manifest, i))
            )
        except BaseException:
            self._during_restore = None
            raise
        return len(self._staged)

    async def load_staged(self) -> int:
        staged, self._staged = self._staged, None
        if staged is None:
            raise RuntimeError("load_staged without a staged restore")
        for table, vectors in self._during_restore or []:
            staged.write_table(table, vectors)
        self._during_restore = None
        self.shard = staged
        self._kick()
        return len(staged)

    async def drop_staged(self) -> None:
        self._staged, self._during_restore = None, None

    async def search(self, query_vecs: np.ndarray, k: int) -> list[list[Hit]]:
        return self.shard.search(query_vecs, k)

    async def search_rows(
        self, query_vecs: np.ndarray, k: int, exact: bool = False
    ) -> list[list[tuple[float, dict]]]:
        return self.shard.search_rows(query_vecs, k, exact)

    def _search_locked(
        self, query_vecs: np.ndarray, k: int, exact: bool
    ) -> list[list[tuple[float, dict]]]:
        with self._lock:  # the direct line's threads: never beside a change on the loop
            return self.shard.search_rows(query_vecs, k, exact)

    async def search_endpoint(self) -> tuple[str, tuple[str, int], bytes]:
        """``(node_id, address, key)`` of this shard's direct search line (started on first
        ask; :mod:`.direct`). The key is a secret: callers must never log it."""
        if self._server is None:
            self._server = SearchServer(self._search_locked)
        address, key = self._server.endpoint()
        return ray.get_runtime_context().get_node_id(), address, key

    async def rebuild_index(self) -> float:
        """Build the index from scratch now (in a thread) and swap it in; returns seconds."""
        t0 = time.perf_counter()
        shard = self.shard
        if shard.policy.kind != "exact" and len(shard):
            job = (shard.view().vecs, shard._base)
            index = await self._background(shard.policy.build, *job)
            with self._lock:
                if shard is self.shard:
                    shard.install_index(index, job[1])
        return time.perf_counter() - t0

    async def index_blob(self) -> np.ndarray | None:
        """The index serialised (measuring persist-vs-rebuild; not used by snapshots)."""
        return self.shard.index.serialize() if self.shard.index is not None else None

    async def missing(self, auction_ids: list[str]) -> list[str]:
        return self.shard.missing(auction_ids)

    async def stats(self) -> dict[str, Any]:
        return {**self.shard.stats(), "pid": os.getpid(), "peak_rss_bytes": _peak_rss()}

    async def to_table(self) -> pa.Table:
        return self.shard.to_table()

    async def load_table(self, table: pa.Table) -> int:
        shard = self.shard
        self.shard = await self._swap_in(lambda: shard.loaded(table))
        self._kick()
        return len(self.shard)

    async def apply(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(shard, *args)`` here, on the event loop (quick functions only: searches
        wait for it; maintenance has its own methods above, which do not block them)."""
        with self._lock:
            return fn(self.shard, *args)

    async def segment_refs(self) -> list[Any]:
        """Object refs of the shard's segments (zero-copy reads for analytics)."""
        return [s.ref for s in self.shard._segments]


def _lower() -> None:
    """Lower this maintenance thread's CPU priority (nice +10; Linux sets it per thread), so a
    snapshot, compaction or restore takes what the searches leave: on a 2-core box, searches
    during a snapshot of 1M records had a p99 of 916 ms at normal priority and 84 ms at nice +10
    (benchmarks/results/memory_retrieval.md)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: normal priority
        pass


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM), bytes; 0 where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ActorShardPool:
    """Shard actors behind the :class:`~.pool.ShardPool` seam."""

    def __init__(self, factory: Callable[[int], Any], size: int, direct: bool = False) -> None:
        self._factory = factory
        self.size = size
        self.handles = [factory(i) for i in range(size)]
        self.direct = _direct_line(self) if direct else None

    def search_all(self, q: np.ndarray, k: int, exact: bool) -> list[Any] | None:
        """Every shard's search over the direct line; None = make actor calls."""
        return self.direct.search(q, k, exact) if self.direct is not None else None

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
        if self.direct is not None:
            self.direct.replace(i)


class AttachedShardPool(ActorShardPool):
    """Shard actors this process found by name but does not own: it never restarts them. A
    shard restarted here would belong to this (often short-lived) driver and die with it, and
    the owner would not know; recovery is the owner's job."""

    def __init__(self, handles: list[Any], prefix: str, direct: bool = False) -> None:
        self.handles, self.size, self.prefix = handles, len(handles), prefix
        self.direct = _direct_line(self) if direct else None

    def restart(self, i: int) -> None:
        from ..errors import InfraError

        raise InfraError(f"memory shard '{self.prefix}-{i}' is not running (attached, not owned)")


def _direct_line(pool: ActorShardPool) -> DirectSearch:
    def endpoint(i: int) -> tuple[str, tuple[str, int], bytes]:
        return ray.get(pool.handles[i].search_endpoint.remote(), timeout=30)

    return DirectSearch(pool.size, endpoint, ray.get_runtime_context().get_node_id())


def _factory(
    cfg: MemoryConfig, dim: int, actor_options: dict[str, Any] | None
) -> Callable[[int], Any]:
    remote_cls = ray.remote(ShardActor)
    policy = IndexPolicy.from_config(cfg)
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
                dim, cfg.max_records_per_shard, cfg.max_segments, policy
            )
        opts["name"] = f"{cfg.actor_name_prefix}-{i}"
        deadline = time.monotonic() + 10
        while True:  # a killed actor's name is freed asynchronously by the GCS
            try:
                return remote_cls.options(**opts).remote(
                    dim, cfg.max_records_per_shard, cfg.max_segments, policy
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
    direct = cfg.search_transport == "direct"
    pool = ActorShardPool(_factory(cfg, emb.dim, actor_options), cfg.shards, direct)
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
    pool = AttachedShardPool(handles, cfg.actor_name_prefix, cfg.search_transport == "direct")
    return ShardedMemory(pool, emb, cfg, storage)
