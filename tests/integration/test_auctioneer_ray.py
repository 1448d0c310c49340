"""The auctioneer actor on a local Ray with scripted agent actors: RELIABILITY rows 1 and 6,
idempotency through Ray, and the batching that carries it (few Ray calls per auction)."""

import asyncio
import time

import pytest

from sale_ray.batch import drive
from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    AuctioneerConfig,
    PoolSpec,
    SaleConfig,
    ScriptedSpec,
)
from sale_ray.memory.config import MemoryConfig
from sale_ray.runtime import start_agents, start_auctioneer
from sale_ray.sink import ResultSink
from sale_ray.types import Task

pytestmark = pytest.mark.integration


def config(latency=(0, 0), *, slow=None, bid_timeout=10.0, in_flight=300):
    agents = [
        AgentSpec(
            name=f"s{i}",
            backend="scripted",
            model="s",
            max_concurrency=1024,
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            scripted=ScriptedSpec(latency_ms=(3000, 3000) if f"s{i}" == slow else latency, seed=i),
        )
        for i, p in enumerate([0.05, 0.09, 0.16, 0.36])
    ]
    return SaleConfig(
        pool=PoolSpec(agents=agents),
        auction=AuctionConfig(bid_timeout_s=bid_timeout, jury_timeout_s=bid_timeout),
        auctioneer=AuctioneerConfig(max_in_flight=in_flight),
        memory=MemoryConfig(enabled=False),
    )  # orchestration only


def tasks(n, tag):
    return [
        Task(id=f"{tag}-{i}", prompt=f"task {i}", kind="answer", expected="x") for i in range(n)
    ]


async def run(cfg, batch, on_record=None, sink=None):
    pool = await start_agents(cfg)
    auc = start_auctioneer(cfg, pool)
    got, dupes = {}, []

    def on_group(g):
        if sink is not None:
            sink.add(g["records"])
        for r in g["records"]:
            if r.task_id in got:
                dupes.append(r.task_id)
            got[r.task_id] = r
            if on_record:
                on_record(len(got), pool)
        return True

    try:
        t0 = time.perf_counter()
        await drive(auc, [batch[i : i + 250] for i in range(0, len(batch), 250)], on_group)
        took = time.perf_counter() - t0
        stats = await auc.stats.remote()
        alive = {n: a for n, a in pool.actors.items() if n != "s1"} if on_record else pool.actors
        execs = await asyncio.gather(*(a.executions.remote() for a in alive.values()))
    finally:
        await pool.stop()
    return got, dupes, took, stats, execs


def test_killing_an_agent_mid_bid_during_1000_auctions_loses_nothing(ray_cluster, tmp_path):
    """RELIABILITY row 1: kill an agent actor while 1,000 auctions run; every task is in the
    Parquet log the sink wrote, once, with a winner or the reason it has none."""
    sink = ResultSink(str(tmp_path / "out"), flush_rows=100)
    killed_at = {}

    def kill_once(n, pool):
        if n >= 150 and not killed_at:
            killed_at["n"], killed_at["t"] = n, time.time()
            ray_cluster.kill(pool.actors["s1"])

    batch = tasks(1000, "kill")
    got, dupes, _, stats, execs = asyncio.run(run(config((5, 40)), batch, kill_once, sink))
    assert killed_at
    assert sorted(got) == sorted(t.id for t in batch) and not dupes  # conservation
    _, written, dropped = sink.finalize()
    rows = written.select(["task_id", "winner", "error"]).to_pylist()
    assert sorted(r["task_id"] for r in rows) == sorted(t.id for t in batch) and dropped == 0
    assert all(r["winner"] or r["error"] for r in rows)
    per_task = {}
    for e in execs:
        for tid, n in e.items():
            per_task[tid] = per_task.get(tid, 0) + n
    assert max(per_task.values()) == 1  # no double award among the survivors
    without = [
        r for r in got.values() if any(s.bid.agent == "s1" and s.bid.rejected for s in r.bids)
    ]
    # How many auctions had s1's bid in hand when it died depends on timing (482-600 of 850
    # seen); what does not: some closed without it, and none started well after its death
    # got a bid from it.
    assert without
    late = [r for r in got.values() if r.started_at and r.started_at > killed_at["t"] + 2.0]
    assert all(not any(s.bid.agent == "s1" and not s.bid.rejected for s in r.bids) for r in late)
    assert all(r.winner != "s1" for r in without)
    dead = next(s.bid.rejected for r in without for s in r.bids if s.bid.agent == "s1")
    assert "Actor" in dead or "actor" in dead


def test_an_agent_slower_than_the_deadline_is_dropped_and_auctions_finish_on_time(ray_cluster):
    """RELIABILITY row 6 through Ray: the slow agent's batches are abandoned, not awaited."""
    batch = tasks(200, "slow")
    got, _, took, _, _ = asyncio.run(run(config(slow="s3", bid_timeout=0.5), batch))
    assert len(got) == 200
    assert took < 6  # 3 s per slow call x 2 phases would be > 6 s if anyone waited for it
    for r in got.values():
        s3 = next(s for s in r.bids if s.bid.agent == "s3")
        assert s3.bid.rejected.startswith("timeout") and r.winner != "s3"


def test_batching_carries_many_calls_per_ray_call_and_ids_are_idempotent(ray_cluster):
    async def go():
        cfg = config()
        pool = await start_agents(cfg)
        auc = start_auctioneer(cfg, pool)
        try:
            t = tasks(1, "idem")[0]
            a, b = await asyncio.gather(auc.submit.remote(t), auc.submit.remote(t))
            again = await auc.submit.remote(t)
            got = {}
            await drive(
                auc,
                [tasks(1000, "b")],
                lambda g: got.update((r.task_id, r) for r in g["records"]) or True,
            )
            stats = await auc.stats.remote()
            execs = await asyncio.gather(*(x.executions.remote() for x in pool.actors.values()))
        finally:
            await pool.stop()
        return a, b, again, got, stats, execs

    a, b, again, got, stats, execs = asyncio.run(go())
    assert a.auction_id == b.auction_id == again.auction_id
    assert sum(e.get("idem-0", 0) for e in execs) == 1
    assert len(got) == 1000
    calls = sum(x["calls"] for x in stats["batching"].values())
    ray_calls = sum(x["ray_calls"] for x in stats["batching"].values())
    assert calls >= 1000 * 9 and ray_calls * 10 < calls  # >10 agent calls per Ray call
