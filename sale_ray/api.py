"""The public façade: what a program (and every door) uses to reach sale-ray.

    from sale_ray import api

    api.connect()                          # Ray: RAY_ADDRESS, this machine's `ray start`, or private
    svc = api.up(config)                   # start the service (or attach: it is already up)
    rec = api.submit(svc, task)            # one auction; idempotent by task id
    for group in api.stream(svc, tasks):   # many, as they finish
        ...
    api.status("default"); api.down("default")

The blocking functions here wrap the asyncio ones of :mod:`sale_ray.service.handle` (use those
from async code: ``await svc.submit(task)``). Nothing here starts anything on import.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from .config import SaleConfig, embedded_default, load_config
from .service.handle import Service, ServiceNotFound, attach, open_pool, open_service
from .tenants import TenantLimits
from .types import AuctionRecord, Task

__all__ = [
    "Service",
    "ServiceNotFound",
    "TenantLimits",
    "attach",
    "connect",
    "down",
    "load_config",
    "open_pool",
    "open_service",
    "status",
    "stream",
    "submit",
    "up",
]


def connect(address: str | None = None) -> bool:
    """Connect this process to Ray (see :func:`sale_ray.runtime.connect`); True if it started a
    private local cluster."""
    from .runtime import connect as _connect

    return _connect(address)


def up(
    config: SaleConfig | None = None, *, name: str | None = None, detached: bool = True
) -> Service:
    """Start service ``name`` (default ``config.service.name``) or attach to it if it runs."""
    from .service.handle import up as _up

    return asyncio.run(_up(config or embedded_default(), name=name, detached=detached))


def submit(service: Service, task: Task, **kw: Any) -> AuctionRecord:
    """Auction one task through ``service`` (``policy=``, ``evaluate=``, ``tenant=``)."""
    return asyncio.run(service.submit(task, **kw))


def stream(service: Service, tasks: list[Task]) -> Iterator[dict[str, Any]]:
    """Auction ``tasks``; groups ``{"records": [...], "refused": {id: why}}`` as they finish."""
    loop = asyncio.new_event_loop()
    agen = service.stream(tasks)
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(agen))
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(agen.aclose())
        loop.close()


def status(name: str = "default") -> dict[str, Any]:
    """Service ``name``'s agents, money and counters."""
    from .service.handle import status as _status

    return asyncio.run(_status(name))


def down(name: str = "default") -> dict[str, Any]:
    """Stop service ``name`` (its ledger and log are flushed first)."""
    from .service.handle import down as _down

    return asyncio.run(_down(name))
