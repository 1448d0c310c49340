"""What the online door asks of the auctioneer besides ``submit``: one auction streamed,
passthrough calls, and single agent calls — all inside the same gates and tenant limits.

:class:`OnlineCalls` is a mixin of :class:`~sale_ray.auctioneer.Auctioneer` (it uses the
auctioneer's gates, admission and bookkeeping); it lives here to keep each module one concept.
Pure asyncio, no Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .admission import Job, UnknownName
from .errors import ModelError
from .tenants import TenantGate, TenantLimits
from .types import Execution, Task, Usage

AGENT_METHODS = frozenset({"bid", "judge", "refine", "execute", "execute_direct"})


class OnlineCalls:
    """Streaming, passthrough and single-call entry points of the auctioneer."""

    # -- one auction, streamed (the endpoint's ``stream: true``) ------------------------------
    async def stream_one(
        self,
        task: Task,
        *,
        policy: str | None = None,
        tenant: str = "none",
        limits: TenantLimits | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """Auction ``task`` and relay it as events: ``("start", {"winner", "auction_id"})``
        when the winner starts executing, ``("delta", text)`` as it writes, then
        ``("record", record)``. A task id already auctioned yields its record alone. Closing
        the stream early cancels the auction (its spend so far is recorded)."""
        known = self._done.get(task.id) or (
            self._forgotten_record(task) if task.id in self._forgotten else None
        )
        if known is None and task.id in self._running:
            known = await asyncio.shield(self._running[task.id])
        if known is not None:
            self.counts["duplicates"] += 1
            yield ("record", known)
            return
        queue: asyncio.Queue[Any] = asyncio.Queue()
        job = self.job(policy, evaluate=False, tenant=tenant)
        teed = {n: _Teed(h, queue, job.auction_id) for n, h in self.handles.items()}
        job = Job(
            job.config, job.auction_id, evaluate=False, tenant=tenant, handles=teed, limits=limits
        )
        fut = self._start(task, job)
        fut.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while (ev := await queue.get()) is not _DONE:
                yield ev
            yield ("record", fut.result())
        finally:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(BaseException):
                    await fut

    # -- passthrough: one agent, no auction, the same limits -----------------------------------
    def _agent(self, name: str) -> Any:
        h = self.handles.get(name)
        if h is None:
            raise UnknownName(f"no agent {name!r}; agents: {sorted(self.handles)}")
        return h

    async def complete(
        self,
        agent: str,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        *,
        tenant: str = "none",
        limits: TenantLimits | None = None,
    ) -> tuple[Any, Usage]:
        """One agent's completion, inside its limits and the tenant's: ``(ChatResult, Usage)``."""
        h = self._agent(agent)
        gate, held = self._hold_passthrough(h, messages, params, tenant, limits)
        cost = held
        try:
            result, usage = await h.complete(messages, params)
            cost = usage.cost_usd
        finally:
            self._spend_passthrough(gate, held, cost, tenant)
        return result, usage

    def _hold_passthrough(
        self, h: Any, messages: list, params: dict, tenant: str, limits: TenantLimits | None
    ) -> tuple[TenantGate | None, float]:
        gate = self._tenant(tenant, limits)
        if gate is None:
            return None, 0.0
        est = h.gate.price(h._passthrough_estimate(messages, params))
        return gate, gate.admit(est)

    def _spend_passthrough(
        self, gate: TenantGate | None, held: float, cost: float, tenant: str
    ) -> None:
        """A passthrough call settled (a failed one is charged its reservation, as agents do)."""
        self.counts["passthrough"] += 1
        self.tenant_spent[tenant] = self.tenant_spent.get(tenant, 0.0) + cost
        if gate is not None:
            gate.settle(held, cost)

    async def complete_stream(
        self,
        agent: str,
        messages: list[dict[str, str]],
        params: dict[str, Any],
        *,
        tenant: str = "none",
        limits: TenantLimits | None = None,
    ) -> AsyncIterator[Any]:
        """:meth:`complete`, streamed: deltas, then ``(finish_reason, usage)``."""
        h = self._agent(agent)
        gate, held = self._hold_passthrough(h, messages, params, tenant, limits)
        stream = h.complete_stream(messages, params)
        cost = held
        try:
            async for item in stream:
                if isinstance(item, tuple):
                    cost = item[1].cost_usd
                yield item
        finally:
            try:
                await stream.aclose()
            finally:
                self._spend_passthrough(gate, held, cost, tenant)

    # -- one agent call, for a door that drives agents itself (the evaluation) ----------------
    async def call(
        self, agent: str, method: str, args: Sequence[Any], *, tenant: str = "eval"
    ) -> Any:
        """``agent.method(*args)`` through its gate (its limits and budgets hold); the spend
        is the tenant's. ``method``: bid, judge, refine, execute or execute_direct."""
        if method not in AGENT_METHODS:
            raise UnknownName(f"not an agent call: {method!r}; known: {sorted(AGENT_METHODS)}")
        result = await getattr(self._agent(agent), method)(*args)
        cost = getattr(getattr(result, "usage", None), "cost_usd", 0.0)
        self.tenant_spent[tenant] = self.tenant_spent.get(tenant, 0.0) + cost
        return result


_DONE = object()


class _Teed:
    """A gated agent whose ``execute`` streams: ``("start", …)`` then ``("delta", text)``
    events go to ``queue`` as the winner writes (the endpoint relays them)."""

    def __init__(self, inner: Any, queue: asyncio.Queue[Any], auction_id: str) -> None:
        self.inner, self.queue, self.auction_id = inner, queue, auction_id
        self.name = getattr(inner, "name", None) or getattr(inner.gate, "name", "")

    async def bid(self, task: Task) -> Any:
        return await self.inner.bid(task)

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> Any:
        return await self.inner.judge(task, plans)

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Any:
        return await self.inner.refine(task, plan, pairs)

    async def execute_direct(self, task: Task) -> Execution:
        # ``bid: answer``: a direct answer is a bid until it is accepted, so nothing streams;
        # the stream sends the winner's answer from the record
        return await self.inner.execute_direct(task)

    async def execute(self, task: Task, plan: str) -> Execution:
        self.queue.put_nowait(("start", {"winner": self.name, "auction_id": self.auction_id}))
        stream = self.inner.execute_stream(task, plan)
        try:
            async for item in stream:
                if isinstance(item, Execution):
                    return item
                self.queue.put_nowait(("delta", item))
        finally:
            await stream.aclose()
        raise ModelError(f"{self.name}: execution stream ended without its result")
