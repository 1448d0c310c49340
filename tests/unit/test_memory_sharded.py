"""ShardedMemory over plain shards: routing, merged top-k, contrast, periodic snapshots, recovery."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from sale_ray.memory.config import MemoryConfig, StorageConfig
from sale_ray.memory.embed import HashingEmbedder
from sale_ray.memory.entry import MemoryBid, MemoryEntry
from sale_ray.memory.shard import MemoryShard
from sale_ray.memory.sharded import (
    LocalShardPool,
    ShardedMemory,
    ShardUnavailable,
    ShardUnhealthy,
    merge_topk,
    shard_for,
)

DIM = 32


class FixedEmbedder:
    """Vectors chosen by the test: task text 'v<i>' -> row i of a fixed random matrix."""

    name, dim = "fixed", DIM

    def __init__(self, n: int = 2000) -> None:
        self.m = np.random.default_rng(1).standard_normal((n, DIM)).astype(np.float32)

    def encode(self, texts):
        return self.m[[int(t[1:]) for t in texts]]


def entries(ids, winner="big", passed=True):
    return [
        MemoryEntry(
            auction_id=f"a{i}",
            task_id=f"t{i}",
            task_text=f"v{i}",
            created_at=float(i),
            winner=winner,
            passed=passed,
            bids=[
                MemoryBid(agent="small", plan=f"s{i}"),
                MemoryBid(agent="big", plan=f"b{i}", won=True),
            ],
        )
        for i in ids
    ]


def memory(shards=4, storage=None, **kw) -> ShardedMemory:
    cfg = MemoryConfig(shards=shards, embedder="hashing", **kw)
    return ShardedMemory.local(cfg, storage, embedder=FixedEmbedder())


def test_routing_is_stable_across_processes():
    ids = [f"task-{i}" for i in range(200)]
    here = [shard_for(t, 4) for t in ids]
    code = "from sale_ray.memory.sharded import shard_for; print([shard_for(f'task-{i}', 4) for i in range(200)])"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    ).stdout
    assert str(here) == other.strip()
    assert set(here) == {0, 1, 2, 3}  # and it spreads


def test_sharded_topk_equals_single_shard_topk():
    sharded = memory(shards=4)
    single = memory(shards=1)
    ids = range(1500)
    sharded.write(entries(ids))
    single.write(entries(ids))
    assert {s["records"] for s in sharded.stats()["shards"]} != {1500}  # really spread
    q = np.random.default_rng(5).standard_normal((6, DIM)).astype(np.float32)
    a = sharded.search_vectors(q, k=8)
    b = single.search_vectors(q, k=8)
    assert [[h.entry.auction_id for h in hs] for hs in a] == [
        [h.entry.auction_id for h in hs] for hs in b
    ]
    assert [h.score for hs in a for h in hs] == pytest.approx(
        [h.score for hs in b for h in hs], abs=1e-6
    )


def test_retried_write_never_duplicates():
    m = memory()
    assert m.write(entries(range(100))) == 100
    assert m.write(entries(range(50, 150))) == 50
    assert m.stats()["records"] == 150


def test_merge_topk_orders_and_cuts():
    from sale_ray.memory.shard import Hit

    e = entries([0])[0]
    merged = merge_topk([[Hit(0.9, e), Hit(0.1, e)], [Hit(0.5, e)], []], 2)
    assert [h.score for h in merged] == [0.9, 0.5]


def test_contrast_uses_one_retrieval_for_all_agents():
    m = memory()
    m.write(entries(range(20)))
    m.write(entries(range(20, 25), passed=False))
    pairs = m.contrast("v22", ["small", "big"], k=8, contrast_on="auction")
    assert len(pairs["small"]) == 8 and pairs["big"] == []
    assert pairs["small"][0].auction_id == "a22"  # itself is nearest
    failed = {f"a{i}" for i in range(20, 25)}
    for mode in ("outcome", None):  # None: the default, "verified"
        out = m.contrast("v22", ["small"], k=8, contrast_on=mode)["small"]
        assert out and all(p.auction_id not in failed for p in out)


def test_async_api_matches_sync():
    m = memory()

    async def go():
        await m.awrite(entries(range(60)))
        return await m.asearch(["v3", "v40"], k=4), await m.acontrast("v3", ["small"], k=3)

    hits, pairs = asyncio.run(go())
    assert [[h.entry.auction_id for h in hs] for hs in hits] == [
        [h.entry.auction_id for h in hs] for hs in m.search(["v3", "v40"], k=4)
    ]
    assert len(pairs["small"]) == 3


def test_periodic_snapshot_every_n_writes(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    m = memory(storage=st, snapshot_every_n_writes=25)
    m.write(entries(range(20)))
    assert m.last_snapshot is None
    m.write(entries(range(20, 30)))
    first = m.last_snapshot
    assert first is not None
    m.write(entries(range(30)))  # all duplicates: nothing new, no snapshot
    assert m.last_snapshot == first
    again = memory(storage=st)
    assert again.stats()["records"] == 30 and again.last_snapshot == first


class DyingPool(LocalShardPool):
    """A local pool whose shard ``victim`` 'dies' (loses its state, answers ShardUnavailable)."""

    victim: int | None = None

    def submit(self, i, method, *args):
        if i == self.victim:
            return ("dead", i)
        return super().submit(i, method, *args)

    def result(self, i, pending):
        if pending == ("dead", i):
            raise ShardUnavailable(i, "test kill")
        return super().result(i, pending)

    def restart(self, i):
        self.victim = None
        super().restart(i)


def test_dead_shard_restores_snapshot_and_reports_lost_ids(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    cfg = MemoryConfig(shards=3, embedder="hashing")
    pool = DyingPool([MemoryShard(DIM) for _ in range(3)])
    m = ShardedMemory(pool, FixedEmbedder(), cfg, st)
    m.write(entries(range(60)))
    m.snapshot()
    before = m.shard_tables()
    m.write(entries(range(60, 90)))  # not in any snapshot yet
    pool.victim = victim = shard_for("t60", 3)
    hits = m.search(["v1"], k=5)[0]  # the search triggers recovery and is retried
    assert len(hits) == 5
    (report,) = m.losses
    want_lost = sorted(f"a{i}" for i in range(60, 90) if shard_for(f"t{i}", 3) == victim)
    assert report.shard == victim and sorted(report.lost_auction_ids) == want_lost
    assert report.restored_records == before[victim].num_rows
    assert m.shard_tables()[victim].equals(before[victim])
    # the other shards kept their post-snapshot writes
    assert m.stats()["records"] == 90 - len(want_lost)


def test_dead_shard_without_snapshot_reports_everything_it_held():
    cfg = MemoryConfig(shards=2, embedder="hashing")
    pool = DyingPool([MemoryShard(DIM) for _ in range(2)])
    m = ShardedMemory(pool, FixedEmbedder(), cfg)
    m.write(entries(range(10)))
    pool.victim = 0
    m.write(entries(range(10, 12)))  # write to shard 0 (if routed there) is retried after restart
    (report,) = m.losses
    lost = {f"a{i}" for i in range(10) if shard_for(f"t{i}", 2) == 0}
    assert set(report.lost_auction_ids) == lost and report.restored_from is None


def test_restore_reroutes_when_shard_count_changes(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    m = memory(shards=4, storage=st)
    m.write(entries(range(200)))
    m.snapshot()
    m3 = memory(shards=3, storage=st)
    assert m3.stats()["records"] == 200
    q = np.random.default_rng(2).standard_normal((2, DIM)).astype(np.float32)
    assert [[h.entry.auction_id for h in hs] for hs in m3.search_vectors(q)] == [
        [h.entry.auction_id for h in hs] for hs in m.search_vectors(q)
    ]


def test_restore_reembeds_when_the_embedder_changed(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    m = memory(shards=2, storage=st)
    m.write(entries(range(30)))
    m.snapshot()
    cfg = MemoryConfig(shards=2, embedder="hashing")
    h = ShardedMemory.local(cfg, st, embedder=HashingEmbedder(DIM))
    assert h.stats()["records"] == 30
    assert h.search(["v7"], k=1)[0][0].entry.auction_id == "a7"


def test_periodic_snapshots_are_pruned(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"), keep_snapshots=2)
    m = memory(storage=st, snapshot_every_n_writes=10)
    for b in range(5):
        m.write(entries(range(b * 10, b * 10 + 10)))
    assert len(list((tmp_path / "snap" / "manifests").iterdir())) == 2
    assert len(list((tmp_path / "snap" / "data").iterdir())) == 2
    assert memory(storage=st).stats()["records"] == 50


def test_recover_after_shard_count_change_reroutes(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    memory(shards=2, storage=st).write(entries(range(40)))  # no snapshot: nothing to restore
    m2 = memory(shards=2, storage=st)
    m2.write(entries(range(40)))
    m2.snapshot()
    cfg = MemoryConfig(shards=3, embedder="hashing")
    pool = DyingPool([MemoryShard(DIM) for _ in range(3)])
    m3 = ShardedMemory(pool, FixedEmbedder(), cfg, st)
    m3.restore()
    before = m3.shard_tables()
    pool.victim = 1
    m3.search(["v1"], k=3)
    assert m3.shard_tables()[1].equals(before[1]) and m3.losses[0].lost_auction_ids == []


class DeadUntilRestartedPool(LocalShardPool):
    """Shard ``dead`` answers ShardUnavailable until restarted. Callers that find it dead wait
    for each other at ``barrier`` first, so every one of them has failed before anyone starts
    recovering (the race the serialisation is about). Restarts are counted."""

    def __init__(self, shards, dead, callers):
        super().__init__(shards, threads=8)
        self.dead, self.restarts = dead, 0
        self.barrier = threading.Barrier(callers)

    def submit(self, i, method, *args):
        if i == self.dead:
            return ("dead", i)
        return super().submit(i, method, *args)

    def result(self, i, pending):
        if pending == ("dead", i):
            self.barrier.wait(timeout=30)
            raise ShardUnavailable(i, "test kill")
        return super().result(i, pending)

    def restart(self, i):
        self.restarts += 1
        self.dead = None
        super().restart(i)


def test_concurrent_callers_that_find_a_shard_dead_trigger_one_recovery(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    cfg = MemoryConfig(shards=2, embedder="hashing")
    pool = DeadUntilRestartedPool([MemoryShard(DIM) for _ in range(2)], dead=None, callers=3)
    m = ShardedMemory(pool, FixedEmbedder(), cfg, st)
    m.write(entries(range(40)))
    m.snapshot()
    pool.dead = 1
    with ThreadPoolExecutor(3) as ex:
        results = list(ex.map(lambda _: m.search(["v3"], k=4)[0], range(3)))
    assert pool.restarts == 1 and len(m.losses) == 1
    assert all(
        [h.entry.auction_id for h in r] == [h.entry.auction_id for h in results[0]] for r in results
    )
    assert m.stats()["records"] == 40  # restored once, not wiped by a second racing restart


def test_async_callers_share_one_recovery_too(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    cfg = MemoryConfig(shards=2, embedder="hashing")
    pool = DeadUntilRestartedPool([MemoryShard(DIM) for _ in range(2)], dead=None, callers=2)
    pool.aresult = lambda i, p: asyncio.to_thread(pool.result, i, p)  # type: ignore[method-assign]
    m = ShardedMemory(pool, FixedEmbedder(), cfg, st)
    m.write(entries(range(40)))
    m.snapshot()
    pool.dead = 0

    async def both():
        return await asyncio.gather(m.asearch(["v1"], k=3), m.asearch(["v2"], k=3))

    asyncio.run(both())
    assert pool.restarts == 1 and len(m.losses) == 1


def _corrupt_snapshot_of(tmp_path, shard):
    data = sorted((tmp_path / "snap" / "data").rglob(f"shard-{shard:05d}-*.parquet"))
    assert data, "no data file for the shard"
    raw = bytearray(data[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data[0].write_bytes(bytes(raw))


def test_a_corrupt_snapshot_during_recovery_leaves_the_shard_unhealthy_never_empty(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    cfg = MemoryConfig(shards=2, embedder="hashing")
    pool = DyingPool([MemoryShard(DIM) for _ in range(2)])
    m = ShardedMemory(pool, FixedEmbedder(), cfg, st)
    m.write(entries(range(40)))
    m.snapshot()
    m.write(entries(range(40, 50)))  # since the snapshot: tracked
    in_snapshot = m.shard_tables()[1].num_rows - sum(
        1 for i in range(40, 50) if shard_for(f"t{i}", 2) == 1
    )
    _corrupt_snapshot_of(tmp_path, 1)
    pool.victim = 1
    with pytest.raises(ShardUnhealthy) as err:
        m.search(["v1"], k=5)
    report = err.value.report
    assert report.restored_from is None and "checksum" in report.error
    assert report.lost_snapshot_records == in_snapshot
    assert sorted(report.lost_auction_ids) == sorted(
        f"a{i}" for i in range(40, 50) if shard_for(f"t{i}", 2) == 1
    )
    assert m.losses == [report] and m.unhealthy == {1: report}
    with pytest.raises(ShardUnhealthy):  # later calls too: no silent empty answers
        m.search(["v2"], k=5)
    with pytest.raises(ShardUnhealthy):
        asyncio.run(m.asearch(["v2"], k=5))


def test_an_unhealthy_shard_serves_again_only_by_an_explicit_decision(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    cfg = MemoryConfig(shards=2, embedder="hashing")
    pool = DyingPool([MemoryShard(DIM) for _ in range(2)])
    m = ShardedMemory(pool, FixedEmbedder(), cfg, st)
    m.write(entries(range(20)))
    m.snapshot()
    _corrupt_snapshot_of(tmp_path, 0)
    pool.victim = 0
    with pytest.raises(ShardUnhealthy):
        m.search(["v1"], k=3)
    m.accept_loss(0)
    assert len(m.search(["v1"], k=3)[0]) == 3  # the healthy shard's records, knowingly
    assert len(m.losses) == 1 and not m.unhealthy
