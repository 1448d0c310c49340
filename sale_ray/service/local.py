"""A service in this process: the same :class:`~sale_ray.auctioneer.Auctioneer`, no Ray.

:class:`LocalService` offers :class:`~sale_ray.service.handle.Service`'s calls over an
in-process auctioneer, so a door built on the service (the gateway) runs unchanged in unit
tests and in one-process serving — with the same gates, idempotency and policies it gets on a
cluster, because it is the same code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..config import SaleConfig
from ..types import AuctionRecord, Task


class LocalService:
    """:class:`~sale_ray.service.handle.Service`'s interface over an in-process auctioneer."""

    name = None
    private = True

    def __init__(self, core: Any) -> None:
        self.core = core

    @classmethod
    def over(
        cls,
        agents: Mapping[str, Any],
        prices: Mapping[str, float | tuple[float, float]],
        config: SaleConfig,
        *,
        evaluate: Any = None,
    ) -> LocalService:
        """An auctioneer over in-process agent handles (prices: $/Mtok out, or (in, out)),
        with the named policies of ``config`` (``sale``, ``sale:lean``, ...)."""
        from ..auctioneer import Auctioneer
        from ..serve import policies

        pairs = {n: p if isinstance(p, tuple) else (p, p) for n, p in prices.items()}
        core = Auctioneer(agents, pairs, config, evaluate=evaluate)
        policies.install(core, config, {n: p[1] for n, p in pairs.items()})
        return cls(core)

    async def submit(
        self,
        task: Task,
        *,
        policy: str | None = None,
        evaluate: bool = True,
        tenant: str = "none",
        limits: Any = None,
        observe: bool = False,
    ) -> AuctionRecord:
        """``observe`` is for the Ray service, which keeps the endpoint's metrics; in one
        process the gateway's own metrics count the record (nothing to save)."""
        return await self.core.submit(
            task, policy=policy, evaluate=evaluate, tenant=tenant, limits=limits
        )

    def stream_one(
        self, task: Task, *, policy: str | None = None, tenant: str = "none", limits: Any = None
    ) -> AsyncIterator[tuple[str, Any]]:
        return self.core.stream_one(task, policy=policy, tenant=tenant, limits=limits)

    async def complete(
        self, agent: str, messages: list, params: dict, *, tenant: str = "none", limits: Any = None
    ) -> tuple[Any, Any]:
        return await self.core.complete(agent, messages, params, tenant=tenant, limits=limits)

    def complete_stream(
        self, agent: str, messages: list, params: dict, *, tenant: str = "none", limits: Any = None
    ) -> AsyncIterator[Any]:
        return self.core.complete_stream(agent, messages, params, tenant=tenant, limits=limits)

    async def record(self, auction_id: str) -> Any:
        return self.core.record(auction_id)

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    async def health(self) -> dict[str, Any]:
        """In one process every agent is alive while the process is."""
        return {"agents": dict.fromkeys(self.core.handles, "alive"), "stats": self.core.stats()}
