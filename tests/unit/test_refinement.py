"""Refinement: only cheaper agents with something to learn refine, and memory grows."""

import asyncio
from types import SimpleNamespace

from sale_ray.auction.protocol import run_auction
from sale_ray.auction.refinement import MemoryRefiner
from sale_ray.config import SaleConfig
from sale_ray.types import Bid

from .test_protocol import PRICES, TASK, ScriptedAgent, passes


class FakeMemory:
    """Hands out one contrast pair to agents listed in ``knows``; records writes."""

    def __init__(self, knows=()):
        self.knows = set(knows)
        self.asked = None
        self.written = []

    async def acontrast(self, task_text, agents):
        self.asked = list(agents)
        pair = SimpleNamespace(task_text="past", losing_plan="bad", winning_plan="good")
        return {a: [pair] for a in agents if a in self.knows}

    async def awrite(self, entries):
        self.written.extend(entries)
        return len(entries)


class Refining(ScriptedAgent):
    def __init__(self, name, **kw):
        super().__init__(name, **kw)
        self.refined_with = None

    async def refine(self, task, plan, pairs):
        self.refined_with = pairs
        return Bid(
            agent=self.name, plan="better " + plan, plan_tokens=20, entropy=0.0, refined=True
        )


def _agents():
    scores = {"small": 2, "mid": 5, "large": 4}
    return {n: Refining(n, scores=scores) for n in PRICES}


def _run(agents, memory):
    cfg = SaleConfig()
    refiner = MemoryRefiner(memory, agents, cfg)
    rec = asyncio.run(run_auction(TASK, agents, PRICES, cfg, evaluate=passes, refine=refiner))
    asyncio.run(refiner.remember(TASK, rec))
    return rec


def test_only_cheaper_agents_with_a_contrast_pair_spend_tokens_on_refining():
    agents, memory = _agents(), FakeMemory(knows={"small", "large"})
    rec = _run(agents, memory)
    assert memory.asked == ["small"]  # mid won provisionally; only small is cheaper
    assert agents["small"].refined_with == [("past", "bad", "good")]
    assert agents["large"].refined_with is None
    assert any(s.bid.refined and s.bid.agent == "small" for s in rec.bids)


def test_with_an_empty_memory_nobody_refines_and_no_tokens_are_spent():
    agents = _agents()
    rec = _run(agents, FakeMemory())
    assert all(a.refined_with is None for a in agents.values())
    assert "refine" not in rec.phase_usage or rec.phase_usage["refine"].calls == 0


def test_refined_plans_are_judged_by_the_same_jury():
    agents = _agents()
    rec = _run(agents, FakeMemory(knows={"small"}))
    refined = next(s for s in rec.bids if s.bid.refined)
    assert set(refined.jury) == set(PRICES)


def test_every_decided_auction_is_remembered():
    memory = FakeMemory()
    rec = _run(_agents(), memory)
    assert [e.auction_id for e in memory.written] == [rec.auction_id]
    assert memory.written[0].winner == rec.winner


def test_a_broken_memory_never_fails_the_auction_and_is_noted():
    class Broken(FakeMemory):
        async def acontrast(self, task_text, agents):
            raise ConnectionError("shard down")

    rec = _run(_agents(), Broken())
    assert rec.winner == "mid" and rec.passed
    assert rec.notes and "refinement skipped" in rec.notes[0]
