"""SALE with memory through the auctioneer actor: auctions are remembered in shard actors and
cheaper agents refine from them (scripted agents, hashing embedder: fast and deterministic)."""

import asyncio

import pytest

from sale_ray.batch import run_tasks
from sale_ray.config import AgentSpec, PoolSpec, SaleConfig, ScriptedSpec
from sale_ray.memory.config import MemoryConfig
from sale_ray.types import Task

pytestmark = pytest.mark.integration


def test_later_auctions_refine_from_earlier_ones(ray_cluster):
    agents = [
        AgentSpec(
            name=f"s{i}",
            backend="scripted",
            model="s",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            max_concurrency=64,
            scripted=ScriptedSpec(seed=i),
        )
        for i, p in enumerate([0.05, 0.16, 0.36])
    ]
    cfg = SaleConfig(
        pool=PoolSpec(agents=agents), memory=MemoryConfig(shards=2, embedder="hashing", k=4)
    )
    tasks = [
        Task(
            id=f"t{i}",
            prompt=f"sum the numbers in list number {i % 5}",
            kind="answer",
            expected="x",
        )
        for i in range(30)
    ]
    records = asyncio.run(run_tasks(tasks, cfg, concurrency=1, progress=False))
    assert len(records) == 30 and all(r.winner for r in records)
    refined = [r for r in records if any(s.bid.refined for s in r.bids)]
    # the first auction has nothing to learn from; later ones, won by pricier agents, do
    assert not any(s.bid.refined for s in records[0].bids)
    assert refined, "no auction refined although memory held similar past tasks"
    for r in refined:
        cheaper = {s.bid.agent for s in r.bids if s.bid.refined}
        assert all(a != r.provisional_winner for a in cheaper)
        assert "refine" in r.phase_usage and r.phase_usage["refine"].calls > 0


def test_a_batch_run_leaves_a_memory_snapshot_the_next_run_restores(ray_cluster, tmp_path):
    from sale_ray.batch import run_batch
    from sale_ray.memory.config import StorageConfig
    from sale_ray.memory.snapshot import read_manifest, restore_snapshot

    agents = [
        AgentSpec(
            name=f"s{i}",
            backend="scripted",
            model="s",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            max_concurrency=64,
            scripted=ScriptedSpec(seed=i),
        )
        for i, p in enumerate([0.05, 0.36])
    ]
    storage = StorageConfig(snapshot_uri=str(tmp_path / "memory"))
    cfg = SaleConfig(
        pool=PoolSpec(agents=agents),
        storage=storage,
        memory=MemoryConfig(shards=2, embedder="hashing"),
    )
    tasks = [Task(id=f"b{i}", prompt=f"task {i}", kind="answer", expected="x") for i in range(12)]
    asyncio.run(run_batch(tasks, str(tmp_path / "out"), cfg, progress=False))
    manifest = read_manifest(storage.snapshot_uri, storage)
    assert manifest is not None
    restored = restore_snapshot(storage.snapshot_uri, storage)
    assert sum(t.num_rows for t in restored) == 12  # every decided auction, once
