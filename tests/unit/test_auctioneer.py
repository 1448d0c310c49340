"""The auctioneer without Ray: many auctions at once, idempotent ids, admission, budgets,
misbehaving agents, and the micro-batcher that coalesces agent calls."""

import asyncio
import time

import pytest

from sale_ray.agents.quota import BudgetExhausted
from sale_ray.agents.scripted import ScriptedAgent, scripted_evaluate
from sale_ray.auctioneer import AgentCallError, Auctioneer, MicroBatcher, Overloaded, serve_batch
from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    AuctioneerConfig,
    PoolSpec,
    QuotaSpec,
    SaleConfig,
    ScriptedSpec,
)
from sale_ray.types import Task

PRICES = {"a": 0.05, "b": 0.16, "c": 0.36}


def _config(*, latency=(0, 0), agents=None, auction=None, **auctioneer):
    specs = agents or [
        AgentSpec(
            name=n,
            backend="scripted",
            model="s",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            max_concurrency=64,
            scripted=ScriptedSpec(latency_ms=latency, seed=i),
        )
        for i, (n, p) in enumerate(PRICES.items())
    ]
    return SaleConfig(
        pool=PoolSpec(agents=specs),
        auction=auction or AuctionConfig(),
        auctioneer=AuctioneerConfig(**auctioneer),
    )


def _auctioneer(cfg):
    agents = {s.name: ScriptedAgent(s, cfg) for s in cfg.pool.agents}
    prices = {
        s.name: (s.price_in_per_mtok or 0.0, s.price_out_per_mtok or 0.0) for s in cfg.pool.agents
    }
    return Auctioneer(agents, prices, cfg, evaluate=scripted_evaluate), agents


def _tasks(n, prefix="t"):
    return [
        Task(id=f"{prefix}{i}", prompt=f"task {i}", kind="answer", expected="x") for i in range(n)
    ]


def _executions(agents):
    out = {}
    for a in agents.values():
        for tid, n in a.executed.items():
            out[tid] = out.get(tid, 0) + n
    return out


def test_a_thousand_concurrent_tasks_each_get_exactly_one_record_and_one_award():
    cfg = _config(latency=(0, 2), max_in_flight=200)

    async def main():
        auc, agents = _auctioneer(cfg)
        recs = await asyncio.gather(*(auc.submit(t) for t in _tasks(1000)))
        return recs, agents, auc

    recs, agents, auc = asyncio.run(main())
    assert sorted(r.task_id for r in recs) == sorted(t.id for t in _tasks(1000))
    assert all(r.winner in PRICES for r in recs)
    assert set(_executions(agents).values()) == {1}  # no double award
    assert auc.counts["admitted"] == auc.counts["finished"] == 1000


def test_a_resubmitted_id_returns_the_first_record_never_a_second_award():
    cfg = _config(latency=(5, 10))

    async def main():
        auc, agents = _auctioneer(cfg)
        t = _tasks(1)[0]
        first = await asyncio.gather(*(auc.submit(t) for _ in range(10)))  # while in flight
        later = await auc.submit(t)  # after it finished
        return first, later, agents, auc

    first, later, agents, auc = asyncio.run(main())
    # the callers in flight share the auction's record; a later one gets it back (a copy:
    # finished records are kept pickled, auctioneer.KeptRecords)
    assert len({id(r) for r in first}) == 1 and later == first[0]
    assert _executions(agents) == {"t0": 1}
    assert auc.counts["duplicates"] == 10


def test_an_evicted_id_is_still_never_auctioned_twice():
    cfg = _config(remember=2)

    async def main():
        auc, agents = _auctioneer(cfg)
        for t in _tasks(5):
            await auc.submit(t)
        again = await auc.submit(_tasks(1)[0])
        return again, agents

    again, agents = asyncio.run(main())
    assert again.winner is None and "duplicate" in again.error
    assert _executions(agents)["t0"] == 1


def test_in_flight_is_bounded_and_a_full_queue_refuses_without_waiting_for_a_slot():
    # every call takes 5 s: a submit that waited for a slot could not return before that
    cfg = _config(latency=(5000, 5000), max_in_flight=4, max_queued=6)

    async def main():
        auc, _ = _auctioneer(cfg)
        peak = 0
        futs = [asyncio.ensure_future(auc.submit(t)) for t in _tasks(10)]
        await asyncio.sleep(0)
        for _ in range(10):
            await asyncio.sleep(0.005)
            peak = max(peak, auc.stats()["in_flight"])
        with pytest.raises(Overloaded, match="queue full"):
            await auc.submit(Task(id="extra", prompt="p"))
        waited = any(f.done() for f in futs)  # a slot had freed: the refusal was not at once
        for f in futs:
            f.cancel()
        await asyncio.gather(*futs, return_exceptions=True)
        return peak, waited

    peak, waited = asyncio.run(main())
    assert peak == 4 and not waited


def test_a_hanging_agent_is_dropped_at_the_deadline_and_never_stalls_the_rest():
    """RELIABILITY row 6, in-process."""
    agents = [
        AgentSpec(name="ok", backend="scripted", model="s", max_concurrency=64),
        AgentSpec(name="ok2", backend="scripted", model="s", max_concurrency=64),
        AgentSpec(
            name="hung",
            backend="scripted",
            model="s",
            max_concurrency=64,
            scripted=ScriptedSpec(hang=True),
        ),
    ]
    cfg = _config(
        agents=agents,
        auction=AuctionConfig(bid_timeout_s=0.3, jury_timeout_s=0.3),
        max_in_flight=100,
    )

    async def main():
        auc, _ = _auctioneer(cfg)
        t0 = time.perf_counter()
        recs = await asyncio.gather(*(auc.submit(t) for t in _tasks(100)))
        return recs, time.perf_counter() - t0

    recs, took = asyncio.run(main())
    # concurrent deadlines take ~0.6 s in all; 100 of them one after another would take 30 s
    assert took < 100 * 0.3 / 3
    for r in recs:
        hung = next(s for s in r.bids if s.bid.agent == "hung")
        assert hung.bid.rejected.startswith("timeout")
        assert r.winner in {"ok", "ok2"}


def test_budget_race_across_many_auctions_spends_at_most_budget_plus_one_reservation():
    """RELIABILITY row 7: 300 concurrent auctions against a budget for a dozen."""
    cfg = _config(latency=(0, 3), max_in_flight=300, budget_usd=0.005)

    async def main():
        auc, agents = _auctioneer(cfg)
        results = await asyncio.gather(
            *(auc.submit(t) for t in _tasks(300)), return_exceptions=True
        )
        return results, auc, agents

    results, auc, agents = asyncio.run(main())
    recs = [r for r in results if not isinstance(r, Exception)]
    spent = sum(r.cost_usd for r in recs)
    assert spent <= 0.005 + auc.run_budget.largest_reservation
    assert auc.run_budget.spent == pytest.approx(spent)
    done = [r for r in recs if r.winner]
    assert 10 <= len(done) < 300  # the money bought whole auctions, not 300 half ones
    # conservation: every task has a record or an explicit refusal
    assert all(isinstance(r, BudgetExhausted) or r.winner or r.error for r in results)
    assert set(_executions(agents).values()) == {1}


def test_an_agent_out_of_budget_sits_out_with_a_recorded_reason():
    specs = [
        AgentSpec(
            name=n,
            backend="scripted",
            model="s",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            max_concurrency=8,
            quota=QuotaSpec(budget_usd=0.0 if n == "c" else None),
        )
        for n, p in PRICES.items()
    ]
    cfg = _config(agents=specs)

    async def main():
        auc, _ = _auctioneer(cfg)
        return await auc.submit(_tasks(1)[0])

    rec = asyncio.run(main())
    c = next(s for s in rec.bids if s.bid.agent == "c")
    assert "BudgetExhausted" in c.bid.rejected and "agent 'c' budget" in c.bid.rejected
    assert rec.winner in {"a", "b"}


# --- the micro-batcher ---------------------------------------------------------------------------
class FakeRemote:
    """Stands in for an actor's call_many: counts batches, answers items after a delay."""

    def __init__(self, delay=0.0, fail=None):
        self.batches = []
        self.delay, self.fail = delay, fail
        self.cancelled = 0

    async def handler(self, x):
        await asyncio.sleep(self.delay if x != "slow" else 10)
        if x == "bad":
            raise ValueError("bad item")
        return x * 2 if isinstance(x, int) else x

    async def send(self, items):
        self.batches.append(len(items))
        if self.fail:
            raise ConnectionError(self.fail)
        try:
            async for g in serve_batch(self.handler, [(x,) for x in items]):
                yield g
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def test_concurrent_calls_are_coalesced_into_few_batches():
    async def main():
        r = FakeRemote(delay=0.01)
        mb = MicroBatcher(r.send, max_batch=100, max_in_flight=2)
        out = await asyncio.gather(*(mb.call(i) for i in range(1000)))
        return out, r.batches

    out, batches = asyncio.run(main())
    assert out == [2 * i for i in range(1000)]
    assert len(batches) <= 12 and max(batches) == 100


def test_item_errors_stay_with_their_item_and_a_dead_remote_fails_everyone_waiting():
    async def main():
        mb = MicroBatcher(FakeRemote().send)
        res = await asyncio.gather(mb.call(1), mb.call("bad"), mb.call(3), return_exceptions=True)
        dead = MicroBatcher(FakeRemote(fail="actor died").send)
        res2 = await asyncio.gather(dead.call(1), dead.call(2), return_exceptions=True)
        return res, res2

    res, res2 = asyncio.run(main())
    assert res[0] == 2 and res[2] == 6
    assert isinstance(res[1], AgentCallError) and "ValueError: bad item" in str(res[1])
    assert all(isinstance(e, ConnectionError) for e in res2)


def test_a_slow_item_does_not_hold_its_batch_mates_and_is_cancelled_when_abandoned():
    async def main():
        r = FakeRemote(delay=0.01)
        mb = MicroBatcher(r.send, max_in_flight=1)
        fast = asyncio.gather(*(mb.call(i) for i in range(5)))
        slow = asyncio.ensure_future(asyncio.wait_for(mb.call("slow"), 2.0))
        got = await fast
        held = slow.done()  # the fast ones waited for the slow one's 2 s deadline
        with pytest.raises(TimeoutError):
            await slow
        await asyncio.sleep(0.01)
        after = await asyncio.wait_for(mb.call(7), 5.0)  # the pipeline slot was freed
        return got, held, r.cancelled, after

    got, held, cancelled, after = asyncio.run(main())
    assert got == [0, 2, 4, 6, 8] and not held
    assert cancelled == 1 and after == 14


def test_a_call_behind_full_slots_waits_at_most_max_wait_not_for_a_slow_batch():
    async def main():
        r = FakeRemote(delay=0.01)
        mb = MicroBatcher(r.send, max_in_flight=1, max_wait_s=0.02)
        slow = asyncio.ensure_future(mb.call("slow"))  # holds the only slot for 10 s
        await asyncio.sleep(0.05)
        fast = await asyncio.wait_for(mb.call(3), 5.0)  # not 10 s: it went out past the cap
        never = MicroBatcher(FakeRemote(delay=0.01).send, max_in_flight=1, max_wait_s=None)
        held = asyncio.ensure_future(never.call("slow"))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):  # without the bound it waits for the slot
            await asyncio.wait_for(never.call(3), 0.5)
        slow.cancel()
        held.cancel()
        return fast, r.batches

    fast, batches = asyncio.run(main())
    assert fast == 6 and batches == [1, 1]


def test_a_crashed_auction_keeps_what_its_calls_cost_and_is_retriable():
    cfg = _config()
    agents = {s.name: ScriptedAgent(s, cfg) for s in cfg.pool.agents}
    prices = {n: (p, p) for n, p in PRICES.items()}

    async def broken_verifier(task, answer):  # a bug after bids, jury and execution were paid
        raise RuntimeError("verifier bug")

    async def main():
        ok = Auctioneer(agents, prices, cfg, evaluate=scripted_evaluate)
        crashed = Auctioneer(agents, prices, cfg, evaluate=broken_verifier)
        task = _tasks(1)[0]  # the same task in both: the same scripted calls, the same cost
        return await ok.submit(task), await crashed.submit(task)

    ok, crashed = asyncio.run(main())
    assert (
        crashed.error.startswith("auction crashed: RuntimeError") and crashed.failure == "retriable"
    )
    # the same calls were made as in the auction that finished, and cost the same
    assert crashed.cost_usd == pytest.approx(ok.cost_usd) and crashed.cost_usd > 0
    assert set(crashed.phase_usage) == {"bid", "jury", "execute"}
    assert ok.failure is None


def test_an_auction_without_a_valid_bid_says_whether_a_rerun_could_help():
    from sale_ray.auction.protocol import _bid_failure
    from sale_ray.types import Bid

    assert _bid_failure([Bid(agent="a", rejected="empty plan")]) == "final"
    assert _bid_failure([Bid(agent="a", rejected="malformed bid: int")]) == "final"
    assert _bid_failure([Bid(agent="a", rejected="empty plan"), Bid(agent="b", rejected="timeout: no bid within 5s")]) == "retriable"  # fmt: skip
    assert _bid_failure([Bid(agent="a", rejected="RateLimited: rpm quota full")]) == "retriable"
