"""The handle a door holds on a service, and the service's lifecycle: up, attach, status, down.

A service is the auctioneer actor plus one actor per agent, named in the ``sale-ray``
namespace (:mod:`.names`). Every door talks to the auctioneer only, through :class:`Service`:
it owns the agents' limits, the ledger, idempotency, the memory and the log, so whatever the
door — a batch job, a Serve replica, an evaluation — the same limits hold and the same records
land. Doors never write ``.remote`` on our actors; they call :class:`Service` methods, which
forward cancellation (a caller that gives up stops the remote work) and return the actor's own
exceptions rather than Ray's wrappers.

``open_service(config)`` is what doors use: attach to the running service of
``config.service.name`` (``service.attach: auto``), else start a private one that lives as long
as the ``async with`` block — today's one-command behaviour, so ``make demo`` needs no ``up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ..config import SaleConfig
from ..errors import UserError
from ..tenants import TenantLimits
from ..types import AuctionRecord, Task
from . import names
from .names import NAMESPACE

log = logging.getLogger(__name__)


class ServiceNotFound(UserError):
    """No service of that name is running on this Ray cluster."""


class ServiceMismatch(UserError):
    """The running service of that name runs another pool than the door's config."""


async def attach_for(config: SaleConfig, name: str | None = None) -> Service:
    """The running service ``name`` (default ``config.service.name``), checked to run the pool
    ``config`` names: a door must not silently auction on other agents than it was given.
    Raises :class:`ServiceNotFound` or :class:`ServiceMismatch`."""
    name = name or config.service.name
    svc = attach(name)
    running = (await svc.describe())["config"]["pool"]
    if running != config.pool.model_dump(mode="json"):
        have = [a["name"] for a in running["agents"]]
        want = [a.name for a in config.pool.agents]
        raise ServiceMismatch(
            f"service {name!r} is up with another pool (agents {have}; this config: {want}, "
            f"or the same names set up differently): pick another service.name, or stop it "
            f"with `sale-ray down --name {name}`"
        )
    return svc


class Service:
    """A door's handle on one running service (its auctioneer actor).

    ``owned``: the agent pool this handle started (a private service, or ``up``); only an
    owner's :meth:`close` stops the service. An attached handle's ``close`` leaves it running.
    """

    def __init__(self, name: str | None, auctioneer: Any, *, owned: Any = None) -> None:
        self.name = name
        self.actor = auctioneer
        self._owned = owned

    @property
    def started(self) -> bool:
        """True when this handle started the service (its :meth:`close` stops it)."""
        return self._owned is not None

    @property
    def private(self) -> bool:
        """True when this handle started the service for itself (it ends with the handle)."""
        return self._owned is not None and self.name is None

    # -- calls ---------------------------------------------------------------------------------
    async def _call(self, ref: Any) -> Any:
        import ray

        from ..runtime import unwrap

        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except ray.exceptions.RayTaskError as e:
            raise unwrap(e) from None

    def _stream(self, gen: Any) -> AsyncIterator[Any]:
        from ..runtime import relay

        return relay(gen)

    async def submit(
        self,
        task: Task,
        *,
        policy: str | None = None,
        evaluate: bool = True,
        tenant: str = "none",
        limits: TenantLimits | None = None,
        observe: bool = False,
    ) -> AuctionRecord:
        """Auction one task (idempotent by task id: a retry returns the first record).
        ``tenant`` / ``limits``: whose spend it is, and that tenant's rate and budget.
        ``observe``: count the record in the service's endpoint metrics before answering (what
        the Serve door asks: one call instead of the record travelling back for counting)."""
        ref = self.actor.submit.remote(task, policy, evaluate, tenant, limits, observe)
        return await self._call(ref)

    def stream(self, tasks: list[Task]) -> AsyncIterator[dict[str, Any]]:
        """Submit many; groups ``{"records": [...], "refused": {id: why}}`` as they finish."""
        return self._stream(self.actor.stream.remote(tasks))

    def stream_one(
        self,
        task: Task,
        *,
        policy: str | None = None,
        tenant: str = "none",
        limits: TenantLimits | None = None,
    ) -> AsyncIterator[tuple[str, Any]]:
        """One auction as events: ``start``, ``delta``…, ``record`` (closing it cancels)."""
        return self._stream(self.actor.stream_one.remote(task, policy, tenant, limits))

    async def complete(
        self,
        agent: str,
        messages: list,
        params: dict,
        *,
        tenant: str = "none",
        limits: TenantLimits | None = None,
    ) -> tuple[Any, Any]:
        """One agent's completion within its limits (the endpoint's passthrough)."""
        ref = self.actor.complete.remote(agent, messages, params, tenant, limits)
        return await self._call(ref)

    def complete_stream(
        self,
        agent: str,
        messages: list,
        params: dict,
        *,
        tenant: str = "none",
        limits: TenantLimits | None = None,
    ) -> AsyncIterator[Any]:
        """:meth:`complete`, streamed: deltas, then ``(finish_reason, usage)``."""
        gen = self.actor.complete_stream.remote(agent, messages, params, tenant, limits)
        return self._stream(gen)

    async def call(self, agent: str, method: str, *args: Any, tenant: str = "eval") -> Any:
        """One agent call through the service's gate for that agent (its limits hold)."""
        return await self._call(self.actor.call.remote(agent, method, list(args), tenant))

    async def record(self, auction_id: str) -> Any:
        """A recent :class:`AuctionRecord`, an older auction's log row (dict), or None."""
        return await self._call(self.actor.record.remote(auction_id))

    async def describe(self) -> dict[str, Any]:
        """Agents, prices, policies, where the ledger and log live, the config."""
        return await self._call(self.actor.describe.remote())

    async def health(self) -> dict[str, Any]:
        """Each agent's liveness and the auctioneer's counters."""
        return await self._call(self.actor.health.remote())

    async def stats(self) -> dict[str, Any]:
        """The auctioneer's counters, money and batching."""
        return await self._call(self.actor.stats.remote())

    async def flush(self) -> None:
        """Write the ledger and the log now."""
        await self._call(self.actor.flush.remote())

    async def snapshot(self) -> str | None:
        """Snapshot the memory to ``storage.snapshot_uri`` (None when there is nowhere to)."""
        return await self._call(self.actor.snapshot.remote())

    async def close(self) -> None:
        """Stop the service if this handle started it; an attached handle only lets go."""
        if self._owned is None:
            return
        import ray

        try:
            await self._call(self.actor.stop.remote())
        except Exception as e:  # already dead: kill what is left
            log.warning("service stop: %s: %s", type(e).__name__, str(e)[:200])
            await self._owned.stop()
        ray.kill(self.actor, no_restart=True)
        self._owned = None


# --- lifecycle ------------------------------------------------------------------------------------
def attach(name: str) -> Service:
    """The running service ``name`` (Ray must be connected). Raises :class:`ServiceNotFound`."""
    import ray

    try:
        actor = ray.get_actor(names.auctioneer_name(name), namespace=NAMESPACE)
    except ValueError:
        raise ServiceNotFound(
            f"no sale-ray service {name!r} is running on this Ray cluster "
            f"(start one with `sale-ray up --name {name}`)"
        ) from None
    return Service(name, actor)


def _state(config: SaleConfig, name: str, ledger_uri: str | None, log_uri: str | None) -> dict:
    sc = config.service
    return {
        "name": name,
        "ledger_uri": ledger_uri,
        "log_uri": log_uri,
        "flush_s": sc.flush_s,
    }


async def up(
    config: SaleConfig,
    *,
    name: str | None = None,
    detached: bool | None = None,
    ledger_uri: str | None = "",
    log_uri: str | None = "",
) -> Service:
    """Start service ``name`` (default ``config.service.name``), or return it if it is up.

    Every actor is created only if its name is free, so doors racing to start one service
    (two Serve replicas) end up sharing it. ``ledger_uri`` / ``log_uri``: "" takes the
    ``service:`` section's, None turns them off. Waits until every agent serves its model.

    A service that is not ``detached`` lives as long as the returned handle (Ray collects an
    actor nobody holds a handle to, named or not) and its owner process: keep it."""
    from ..runtime import start_agents, start_auctioneer

    sc = config.service
    name = name or sc.name
    detached = sc.detached if detached is None else detached
    ledger = names.fill(sc.ledger_uri if ledger_uri == "" else ledger_uri, name)
    logs = names.fill(sc.log_uri if log_uri == "" else log_uri, name)
    with contextlib.suppress(ServiceNotFound):
        return await attach_for(config, name)
    pool = await start_agents(
        config,
        names={a.name: names.agent_name(name, a.name) for a in config.pool.agents},
        namespace=NAMESPACE,
        detached=detached,
        max_restarts=sc.agent_max_restarts,
    )
    actor = start_auctioneer(
        config,
        pool,
        name=names.auctioneer_name(name),
        namespace=NAMESPACE,
        detached=detached,
        max_restarts=sc.auctioneer_max_restarts,
        state=_state(config, name, ledger, logs),
    )
    svc = Service(name, actor, owned=pool)
    await svc.describe()  # the constructor ran: ledger read, policies valid
    return svc


async def down(name: str) -> dict[str, Any]:
    """Stop service ``name``: flush its ledger and log, stop its models, kill its actors."""
    import ray

    svc = attach(name)
    info = await svc.describe()
    try:
        await svc._call(svc.actor.stop.remote())
    finally:
        ray.kill(svc.actor, no_restart=True)
        for agent in info["agents"]:  # actors the stop could not reach
            with contextlib.suppress(ValueError):
                ray.kill(
                    ray.get_actor(names.agent_name(name, agent), namespace=NAMESPACE),
                    no_restart=True,
                )
    return {"name": name, "stopped": True, "agents": info["agents"]}


async def status(name: str) -> dict[str, Any]:
    """Service ``name``'s agents (alive / unreachable / dead), money and counters."""
    svc = attach(name)
    info, health = await asyncio.gather(svc.describe(), svc.health())
    st = health["stats"]
    return {
        "name": name,
        "agents": health["agents"],
        "policies": sorted(info["policies"]),
        "ledger_uri": info["ledger_uri"],
        "log_uri": info["log_uri"],
        "spent_usd": st["spent_usd"],
        "budget_usd": st["budget_usd"],
        "in_flight": st["in_flight"],
        "queued": st["queued"],
        "counts": {k: st[k] for k in ("admitted", "finished", "duplicates", "refused", "crashed")},
        "tenants": st.get("tenants", {}),
        "service": st.get("service", {}),
    }


async def _running_for(config: SaleConfig) -> Service | None:
    """The running service a door should attach to under ``service.attach`` (None: start a
    private one); ``always`` with none up raises :class:`ServiceNotFound`."""
    if config.service.attach == "never":
        return None
    try:
        return await attach_for(config)
    except ServiceNotFound:
        if config.service.attach == "always":
            raise
        return None


@contextlib.asynccontextmanager
async def open_service(
    config: SaleConfig,
    *,
    ledger_uri: str | None = None,
    log_uri: str | None = None,
    batched: bool = True,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> AsyncIterator[Service]:
    """The service a door should use: the running ``config.service.name`` (``attach: auto``
    or ``always``), else a private one for this block only (``auto`` or ``never``), with the
    given ledger and log (a batch run passes its ``--out``'s ledger)."""
    from ..runtime import start_agents, start_auctioneer

    svc = await _running_for(config)
    if svc is not None:
        log.info("attached to sale-ray service %r", config.service.name)
        yield svc
        return
    pool = await start_agents(config, batched=batched)
    state = _state(config, None, ledger_uri, log_uri)  # type: ignore[arg-type]
    state.update(endpoint_url=endpoint_url, region=region)
    svc = Service(None, start_auctioneer(config, pool, batched=batched, state=state), owned=pool)
    try:
        yield svc
    finally:
        await svc.close()


class ServiceMetrics:
    """The endpoint's metrics kept in the service, so ``GET /metrics`` answers the same from
    every replica. Observations go out without waiting (a replica never blocks on them); they
    are queued before the response that follows them, so a scrape after it sees them.
    An auction's record is counted by the service itself (``Service.submit(observe=True)``,
    ``counts_records``), so it never travels back to the actor it came from."""

    counts_records = True

    def __init__(self, service: Service) -> None:
        self.actor = service.actor

    def observe_request(self, *args: Any, **kw: Any) -> None:
        self.actor.observe.remote("request", args, kw)

    def observe_usage(self, *args: Any, **kw: Any) -> None:
        self.actor.observe.remote("usage", args, kw)

    def observe_record(self, *args: Any, **kw: Any) -> None:
        self.actor.observe.remote("record", args, kw)

    async def render(self) -> bytes:
        return await self.actor.metrics_text.remote()


class _ServiceAgent:
    """An agent handle whose calls go through the service (and so through its gate)."""

    def __init__(self, service: Service, name: str) -> None:
        self.service, self.name = service, name

    async def bid(self, task: Task) -> Any:
        return await self.service.call(self.name, "bid", task)

    async def judge(self, task: Task, plans: Any) -> Any:
        return await self.service.call(self.name, "judge", task, list(plans))

    async def refine(self, task: Task, plan: str, pairs: Any) -> Any:
        return await self.service.call(self.name, "refine", task, plan, list(pairs))

    async def execute(self, task: Task, plan: str) -> Any:
        return await self.service.call(self.name, "execute", task, plan)

    async def execute_direct(self, task: Task) -> Any:
        return await self.service.call(self.name, "execute_direct", task)


class ServicePool:
    """What the evaluation needs of an agent pool (``handles``, ``prices``, ``price_pairs``,
    ``stop``) over a running service's agents: the evaluation then spends within the same
    limits and budgets as every other door, and starts no model of its own."""

    def __init__(self, service: Service, prices: dict[str, Any]) -> None:
        self.service = service
        self.price_pairs = {n: (float(p[0]), float(p[1])) for n, p in prices.items()}
        self.prices = {n: p[1] for n, p in self.price_pairs.items()}
        self.handles = {n: _ServiceAgent(service, n) for n in prices}

    async def stop(self) -> None:
        """Nothing to stop: the service is not the evaluation's."""


@contextlib.asynccontextmanager
async def open_pool(config: SaleConfig) -> AsyncIterator[Any]:
    """Agents for a door that drives them itself: the running service's (through its gates;
    ``service.attach`` as for :func:`open_service`), else private actors for this block."""
    from ..runtime import start_agents

    svc = await _running_for(config)
    if svc is not None:
        info = await svc.describe()
        yield ServicePool(svc, info["prices"])
        return
    pool = await start_agents(config)
    try:
        yield pool
    finally:
        await pool.stop()
