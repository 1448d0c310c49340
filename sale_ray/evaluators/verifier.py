"""The verifier a run's auctions call, chosen from its pool.

``make_evaluator(config)`` is the one function every door's auctioneer uses to check answers
(batch, Serve tasks, the evaluation), so it lives with the verifiers, below them all.
"""

from __future__ import annotations

import asyncio

from ..config import SaleConfig
from ..types import Evaluation, Task


def make_evaluator(config: SaleConfig):
    """The verifier the protocol calls: the pool's own when its backends bring one (scripted
    answers for an all-scripted pool), else sandboxed tests for code and exact match for
    answers (bounded: each is a subprocess)."""
    from ..agents.backends import own_evaluator

    own = own_evaluator([a.backend for a in config.pool.agents])
    if own is not None:  # a backend that brings its own verifier (agents/backends.py)
        return own
    from .broker import contained

    sem = asyncio.Semaphore(config.auctioneer.evaluate_concurrency)

    async def evaluate(task: Task, answer: str) -> Evaluation:
        async with sem:  # started by the broker actor when Ray is up (evaluators/broker.py)
            return await contained(
                "check_solution", task, answer, config.sandbox, cfg=config.sandbox
            )

    return evaluate
