"""Refinement from auction memory (SALE.md steps 6, 7, 9).

After the provisional winner is known, every strictly cheaper agent that has something to learn
from — at least one (losing plan, winning plan) pair on a similar past task in which it bid — rewrites
its plan; refined plans are re-scored by the same jury and compete with the provisional winner.
Agents with no pair spend no tokens: refinement is opportunistic.

:class:`MemoryRefiner` is the protocol's ``refine`` hook plus ``remember``, which stores a finished
auction so later auctions can learn from it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..config import SaleConfig
from ..types import AuctionRecord, Bid, JuryVerdict, ScoredBid, Task
from .protocol import collect_verdicts


class ContrastMemory(Protocol):
    async def acontrast(self, task_text: str, agents: Sequence[str]) -> dict[str, list[Any]]: ...
    async def asearch(self, texts: Sequence[str], k: int | None = None) -> list[list[Any]]: ...
    async def awrite(self, entries: Sequence[Any]) -> int: ...


class MemoryRefiner:
    """Refine cheaper agents' bids from a shared memory; remember every finished auction."""

    def __init__(
        self, memory: ContrastMemory, agents: Mapping[str, Any], config: SaleConfig
    ) -> None:
        self.memory = memory
        self.agents = agents
        self.config = config

    async def __call__(
        self,
        task: Task,
        provisional: ScoredBid,
        scored: Sequence[ScoredBid],
        eligible: Sequence[str],
    ) -> tuple[list[Bid], list[JuryVerdict]]:
        cfg = self.config.auction
        own = {s.bid.agent: s.bid for s in scored if s.bid.valid and not s.bid.refined}
        candidates = [a for a in eligible if a in own]
        if not candidates:
            return [], []
        pairs = await self.memory.acontrast(task.prompt, candidates)
        cap = self.config.memory.max_pairs  # pairs come most similar first
        jobs = {
            a: [(p.task_text, p.losing_plan, p.winning_plan) for p in pairs.get(a, [])[:cap]]
            for a in candidates
        }
        jobs = {a: ps for a, ps in jobs.items() if ps}
        if not jobs:
            return [], []
        results = await asyncio.gather(
            *(
                asyncio.wait_for(self.agents[a].refine(task, own[a].plan, ps), cfg.bid_timeout_s)
                for a, ps in jobs.items()
            ),
            return_exceptions=True,
        )
        bids = [
            r
            if isinstance(r, Bid) and r.agent == a
            else Bid(agent=a, refined=True, rejected=f"refine failed: {type(r).__name__}")
            for a, r in zip(jobs, results, strict=True)
        ]
        verdicts: list[JuryVerdict] = []
        if cfg.jury and any(b.valid for b in bids):
            jury = (
                self.agents
                if cfg.jurors is None
                else {n: h for n, h in self.agents.items() if n in cfg.jurors}
            )
            verdicts = await collect_verdicts(task, jury, bids, cfg.jury_timeout_s)
        return bids, verdicts

    async def recall(self, task: Task, k: int) -> list[dict[str, bool]]:
        """Outcome memory (``bid: answer``, ``answer_memory_k``): how each agent's judged
        answers did on the ``k`` most similar past auctions, most similar first."""
        from ..memory.entry import bid_outcomes

        hits = (await self.memory.asearch([task.prompt], k))[0]
        return [o for o in (bid_outcomes(h.entry) for h in hits) if o]

    async def remember(self, task: Task, record: AuctionRecord) -> None:
        """Store a finished auction (idempotent by auction id: a retry never duplicates)."""
        from ..memory.entry import entry_from_record

        if record.winner is None:
            return  # nothing was decided: no contrast to learn from
        await self.memory.awrite([entry_from_record(record, task.prompt)])
