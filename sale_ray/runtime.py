"""The one place that turns plain classes into Ray actors, and connects to a cluster.

Agents become one actor each, pinned with the resources their :class:`AgentSpec` names
(``num_gpus`` for a GPU agent, a custom quota resource for a hosted API). A local agent's actor
owns its model server: the server lives and dies with the actor.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

from .config import AgentSpec, SaleConfig
from .types import Bid, Execution, JuryVerdict, Task

# Loopback-only sockets and no usage reporting for clusters we start ourselves.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to Ray: ``address`` if given (or ``RAY_ADDRESS``, as under ``ray job submit``),
    else start a private local cluster bound to 127.0.0.1. Returns True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return False
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    ray.init(
        address="local",
        num_cpus=num_cpus or max(2, os.cpu_count() or 2),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024**2,
    )
    return True


def _agent_options(spec: AgentSpec) -> dict[str, Any]:
    r = spec.resources
    return {
        "num_cpus": r.num_cpus,
        "num_gpus": r.num_gpus,
        "resources": dict(r.custom),
        # several auctions share one agent: let its async calls interleave
        "max_concurrency": max(8, spec.max_concurrency * 4),
    }


class ActorAgent:
    """An :class:`~sale_ray.auction.protocol.AgentHandle` over a Ray actor.

    Awaiting an ``ObjectRef`` does not stop the remote call when the awaiting coroutine is
    cancelled (auction deadline); here cancellation is forwarded with ``ray.cancel``.
    """

    def __init__(self, name: str, actor: Any) -> None:
        self.name = name
        self.actor = actor

    async def _call(self, ref: Any) -> Any:
        import ray

        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise

    async def bid(self, task: Task) -> Bid:
        return await self._call(self.actor.bid.remote(task))

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict:
        return await self._call(self.actor.judge.remote(task, list(plans)))

    async def execute(self, task: Task, plan: str) -> Execution:
        return await self._call(self.actor.execute.remote(task, plan))

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Bid:
        return await self._call(self.actor.refine.remote(task, plan, list(pairs)))


class AgentPool:
    """The started agent actors of one config, with their prices."""

    def __init__(self, handles: dict[str, ActorAgent], prices: dict[str, float]) -> None:
        self.handles = handles
        self.prices = prices  # $/Mtok of completion tokens, the auction's cost term

    async def stop(self) -> None:
        import ray

        await asyncio.gather(
            *(h.actor.stop.remote() for h in self.handles.values()), return_exceptions=True
        )
        for h in self.handles.values():
            ray.kill(h.actor)


async def start_agents(config: SaleConfig) -> AgentPool:
    """One actor per agent; waits until every agent's model is being served."""
    import ray

    from .agents.agent import Agent

    remote_agent = ray.remote(Agent)
    actors = {
        spec.name: remote_agent.options(**_agent_options(spec)).remote(spec, config)
        for spec in config.pool.agents
    }
    infos = await asyncio.gather(*(a.start.remote() for a in actors.values()))
    prices = {i["name"]: i["price_out"] for i in infos}
    return AgentPool({n: ActorAgent(n, a) for n, a in actors.items()}, prices)
