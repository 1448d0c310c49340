"""The one place that turns plain classes into Ray actors, and connects to a cluster.

* Agents become one actor each, pinned with the resources their :class:`AgentSpec` names
  (``num_gpus`` for a GPU agent, a custom quota resource such as ``quota_openai`` for a hosted
  API, which the cluster declares). A local agent's actor owns its model server.
* :class:`ActorAgent` is the auctioneer's handle on an agent actor: concurrent ``bid`` /
  ``judge`` / ``refine`` / ``execute`` calls are coalesced by a
  :class:`~sale_ray.auctioneer.MicroBatcher` into one streaming ``call_many`` actor call.
* The auctioneer runs in its own async actor (:class:`AuctioneerService`), next to nothing
  else, so the driver (a batch job, a Serve replica) only ships tasks in and records out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .auctioneer import Auctioneer
from .batching import MicroBatcher
from .config import AgentSpec, SaleConfig
from .types import AuctionRecord, Bid, Execution, JuryVerdict, Task


def unwrap(e: BaseException) -> BaseException:
    """The exception an actor raised, not Ray's wrapper (whose text has a remote traceback)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


log = logging.getLogger(__name__)


async def relay(gen: Any) -> AsyncIterator[Any]:
    """The items of a Ray streaming call, with the actor's own exceptions (not Ray's wrapper);
    closing it early (a reader gone, a cancel, a failure) stops the remote stream."""
    import ray

    finished = False
    try:
        async for ref in gen:
            try:
                yield await ref
            except ray.exceptions.RayTaskError as e:
                raise unwrap(e) from None
        finished = True
    finally:
        if not finished:
            ray.cancel(gen)


# Loopback-only sockets and no usage reporting for clusters we start ourselves.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def local_cluster() -> str | None:
    """The address of a Ray cluster started on this machine with ``ray start`` (as
    ``sale-ray up`` does) whose GCS is alive, or None. Ray's own ``ray.init()`` looks there
    too; a stale address file (the cluster is gone) is ignored."""
    try:
        from ray._private import services, utils

        addr = utils.read_ray_address()
        return addr if addr and addr in services.find_gcs_addresses() else None
    except Exception:  # private Ray API: if it moved, behave as if no cluster ran
        return None


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Connect to Ray: ``address`` if given (or ``RAY_ADDRESS``, as under ``ray job submit``),
    else the cluster ``ray start`` / ``sale-ray up`` runs on this machine (so doors find the
    service there), else start a private local cluster bound to 127.0.0.1. Returns True if we
    started it."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or local_cluster()
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


def agent_options(spec: AgentSpec) -> dict[str, Any]:
    """Ray actor options of one agent: its pinned resources and how many calls interleave."""
    r = spec.resources
    return {
        "num_cpus": r.num_cpus,
        "num_gpus": r.num_gpus,
        "resources": dict(r.custom),
        # batched calls from the auctioneer plus direct ones (Serve): let them interleave; the
        # agent's own semaphore is what bounds its model server
        "max_concurrency": max(64, spec.max_concurrency * 4),
    }


class ActorAgent:
    """An :class:`~sale_ray.auction.protocol.AgentHandle` over a Ray actor.

    ``batched=True`` (the default) sends calls through one :class:`MicroBatcher` per method;
    ``batched=False`` makes one Ray call per call (the baseline the benchmark compares with).
    Awaiting an ``ObjectRef`` does not stop the remote call when the awaiting coroutine is
    cancelled (auction deadline), so cancellation is forwarded with ``ray.cancel``."""

    def __init__(
        self,
        name: str,
        actor: Any,
        *,
        batched: bool = True,
        max_batch: int = 256,
        batches_in_flight: int = 4,
        batch_wait_s: float | None = 0.005,
    ) -> None:
        self.name = name
        self.actor = actor
        self.batched = batched
        self._batchers = {
            m: MicroBatcher(
                self._sender(m),
                max_batch=max_batch,
                max_in_flight=batches_in_flight,
                max_wait_s=batch_wait_s,
            )
            for m in ("bid", "judge", "refine", "execute")
        }

    def _sender(self, method: str):
        async def send(items: list[tuple]) -> AsyncIterator[list]:
            import ray

            gen = self.actor.call_many.remote(method, items)
            try:
                async for ref in gen:
                    yield await ref
            finally:  # deadline or all callers gone: stop the items still running remotely
                ray.cancel(gen)

        return send

    async def _direct(self, ref: Any) -> Any:
        import ray

        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise

    async def _call(self, method: str, *args: Any) -> Any:
        if self.batched:
            return await self._batchers[method].call(args)
        return await self._direct(getattr(self.actor, method).remote(*args))

    async def bid(self, task: Task) -> Bid:
        return await self._call("bid", task)

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict:
        return await self._call("judge", task, list(plans))

    async def execute(self, task: Task, plan: str) -> Execution:
        return await self._call("execute", task, plan)

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Bid:
        return await self._call("refine", task, plan, list(pairs))

    async def execute_direct(self, task: Task) -> Execution:
        """One call with the task alone (the evaluation's direct baselines; never batched)."""
        return await self._direct(self.actor.execute_direct.remote(task))

    # the endpoint's calls: one Ray call each (streams cannot share a batch)
    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Any:
        """A passthrough completion: ``(ChatResult, Usage)``; errors are the agent's own."""
        import ray

        try:
            return await self._direct(self.actor.complete.remote(messages, params))
        except ray.exceptions.RayTaskError as e:
            raise unwrap(e) from None

    def complete_stream(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Any:
        """:meth:`complete`, streamed: deltas, then ``(finish_reason, usage)``."""
        return self._stream(self.actor.complete_stream.remote(messages, params))

    def execute_stream(self, task: Task, plan: str) -> Any:
        """The winner's execution, streamed: deltas, then the ``Execution``."""
        return self._stream(self.actor.execute_stream.remote(task, plan))

    def _stream(self, gen: Any) -> AsyncIterator[Any]:
        return relay(gen)

    def batch_stats(self) -> dict[str, float]:
        b = [x for x in self._batchers.values() if x.batches]
        items, batches = sum(x.items for x in b), sum(x.batches for x in b)
        return {
            "calls": items,
            "ray_calls": batches,
            "mean_batch": items / batches if batches else 0,
        }


def actor_handles(
    actors: dict[str, Any], config: SaleConfig, *, batched: bool = True
) -> dict[str, ActorAgent]:
    """Protocol handles over agent actors, batched as ``config.auctioneer`` says."""
    a = config.auctioneer
    return {
        n: ActorAgent(
            n,
            act,
            batched=batched,
            max_batch=a.max_batch,
            batches_in_flight=a.batches_in_flight,
            batch_wait_s=a.batch_wait_ms / 1000,
        )
        for n, act in actors.items()
    }


class AgentPool:
    """The started agent actors of one config, with their prices."""

    def __init__(
        self,
        actors: dict[str, Any],
        infos: dict[str, dict],
        config: SaleConfig,
        *,
        batched: bool = True,
    ) -> None:
        self.actors = actors
        self.infos = infos  # name -> {"price_in", "price_out", "node_id"?}
        self.handles = actor_handles(actors, config, batched=batched)
        self.prices = {n: i["price_out"] for n, i in infos.items()}  # the auction's cost term

    @property
    def price_pairs(self) -> dict[str, tuple[float, float]]:
        return {n: (i["price_in"], i["price_out"]) for n, i in self.infos.items()}

    async def stop(self) -> None:
        import ray

        await asyncio.gather(
            *(a.stop.remote() for a in self.actors.values()), return_exceptions=True
        )
        for a in self.actors.values():
            ray.kill(a)


def _agent_class(spec: AgentSpec) -> type:
    from .agents.backends import agent_class

    return agent_class(spec.backend)


async def start_agents(
    config: SaleConfig,
    *,
    batched: bool = True,
    names: dict[str, str] | None = None,
    namespace: str | None = None,
    detached: bool = False,
    max_restarts: int = 0,
) -> AgentPool:
    """One actor per agent; waits until every agent's model is being served.

    ``names`` (agent -> actor name) makes them named actors in ``namespace``, created only if
    no actor of that name exists yet (two doors starting one service get the same actors);
    ``max_restarts`` lets Ray bring a dead one back (it restarts its model on the first call)."""
    import ray

    def options(spec: AgentSpec) -> dict[str, Any]:
        opts = agent_options(spec)
        if max_restarts:
            opts["max_restarts"] = max_restarts
        if names:
            opts.update(name=names[spec.name], namespace=namespace, get_if_exists=True)
        if detached:
            opts["lifetime"] = "detached"
        return opts

    actors = {
        spec.name: ray.remote(_agent_class(spec)).options(**options(spec)).remote(spec, config)
        for spec in config.pool.agents
    }
    infos = await asyncio.gather(*(a.start.remote() for a in actors.values()))
    return AgentPool(actors, {i["name"]: i for i in infos}, config, batched=batched)


# --- the auctioneer actor ------------------------------------------------------------------------
class AuctioneerService:
    """The body of the auctioneer actor: an :class:`Auctioneer` over batched agent handles."""

    def __init__(
        self,
        config: SaleConfig,
        actors: dict[str, Any],
        prices: dict[str, tuple[float, float]],
        batched: bool = True,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.handles = actor_handles(actors, config, batched=batched)
        from .evaluators.verifier import make_evaluator

        self.memory = None
        if config.memory.enabled:
            from .memory.remote import start_memory

            self.memory = start_memory(config.memory, config.storage)
        self.core = Auctioneer(
            self.handles, prices, config, evaluate=make_evaluator(config), memory=self.memory
        )
        from .service.state import ServiceState  # the ledger, the log, the policies

        self.state = ServiceState(self.core, config, prices, **(state or {}))

    async def submit(
        self,
        task: Task,
        policy: str | None = None,
        evaluate: bool = True,
        tenant: str = "none",
        limits: Any = None,
        observe: bool = False,
    ) -> AuctionRecord:
        self.state.ensure_running()
        rec = await self.core.submit(
            task, policy=policy, evaluate=evaluate, tenant=tenant, limits=limits
        )
        if observe:  # the endpoint's metrics, counted here: the record need not come back
            self._metrics().observe_record(rec, policy=policy or "sale", tenant=tenant)
        return rec

    async def stream_one(
        self, task: Task, policy: str | None = None, tenant: str = "none", limits: Any = None
    ) -> AsyncIterator[tuple[str, Any]]:
        """One auction as events (a streaming call; see ``Auctioneer.stream_one``)."""
        self.state.ensure_running()
        async for ev in self.core.stream_one(task, policy=policy, tenant=tenant, limits=limits):
            yield ev

    async def complete(
        self, agent: str, messages: list, params: dict, tenant: str = "none", limits: Any = None
    ) -> tuple[Any, Any]:
        self.state.ensure_running()
        return await self.core.complete(agent, messages, params, tenant=tenant, limits=limits)

    async def complete_stream(
        self, agent: str, messages: list, params: dict, tenant: str = "none", limits: Any = None
    ) -> AsyncIterator[Any]:
        self.state.ensure_running()
        stream = self.core.complete_stream(agent, messages, params, tenant=tenant, limits=limits)
        async for item in stream:
            yield item

    async def call(self, agent: str, method: str, args: list, tenant: str = "eval") -> Any:
        """One gated agent call (the evaluation's matrix runs through the service's limits)."""
        self.state.ensure_running()
        return await self.core.call(agent, method, args, tenant=tenant)

    async def record(self, auction_id: str) -> AuctionRecord | None:
        """A recent auction from memory, else from the durable log (None: never seen)."""
        rec = self.core.record(auction_id)
        if rec is None:
            rec = await asyncio.to_thread(self.state.find_logged, auction_id)
        return rec

    def observe(self, kind: str, args: tuple, kwargs: dict) -> None:
        """One observation for the endpoint's metrics (sent without waiting by replicas)."""
        getattr(self._metrics(), f"observe_{kind}")(*args, **kwargs)

    def metrics_text(self) -> bytes:
        """The endpoint's Prometheus text: the same from every replica (one set of counters)."""
        return self._metrics().render()

    def _metrics(self) -> Any:
        if getattr(self, "_metrics_obj", None) is None:
            from .serve.metrics import Metrics

            self._metrics_obj = Metrics()
        return self._metrics_obj

    def describe(self) -> dict[str, Any]:
        """What a door needs to speak for this service: agents, prices, policies, config."""
        return self.state.describe()

    async def health(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """Each agent actor's liveness (``alive`` / ``unreachable`` / ``dead``) and stats."""
        import ray

        async def one(name: str, actor: Any) -> tuple[str, str]:
            try:
                await asyncio.wait_for(actor.ping.remote(), timeout_s)
                return name, "alive"
            except ray.exceptions.ActorUnavailableError:  # being restarted (a RayActorError too)
                return name, "unreachable"
            except ray.exceptions.RayActorError:
                return name, "dead"
            except (TimeoutError, ray.exceptions.RayError):
                return name, "unreachable"

        states = dict(await asyncio.gather(*(one(n, h.actor) for n, h in self.handles.items())))
        return {"agents": states, "stats": self.stats()}

    async def flush(self) -> None:
        """Write the ledger and the log now (a door about to finish, ``sale-ray down``)."""
        await self.state.flush()

    async def stop(self) -> None:
        """Flush, snapshot the memory (where ``storage.snapshot_uri`` says), then stop the
        agents' models (the actors are killed by the caller)."""
        await self.state.flush()
        try:  # the shards die with this actor: their durable copy is the snapshot
            await self.snapshot()
        except Exception as e:
            log.warning("memory snapshot at stop failed: %s: %s", type(e).__name__, str(e)[:200])
        import ray

        await asyncio.gather(
            *(h.actor.stop.remote() for h in self.handles.values()), return_exceptions=True
        )
        for h in self.handles.values():
            ray.kill(h.actor)

    async def stream(self, tasks: list[Task]) -> AsyncIterator[dict[str, Any]]:
        """Records (and refusals) of ``tasks`` in groups as they finish (a streaming call)."""
        async for group in self.core.stream(tasks):
            yield group

    def stats(self) -> dict[str, Any]:
        s = self.core.stats()
        s["batching"] = {n: h.batch_stats() for n, h in self.handles.items()}
        s["service"] = self.state.stats()
        return s

    def take_timings(self) -> list[tuple[str, float, float]]:
        return self.core.take_timings()

    def ping(self) -> int:
        return 1

    async def snapshot(self) -> str | None:
        """Snapshot the memory to ``storage.snapshot_uri`` (None when there is nowhere to)."""
        if self.memory is None or self.memory.store is None:
            return None
        manifest = await asyncio.to_thread(self.memory.snapshot)
        return getattr(manifest, "snapshot_id", None) or str(manifest)[:200]


def start_auctioneer(
    config: SaleConfig,
    pool: AgentPool,
    *,
    batched: bool = True,
    name: str | None = None,
    namespace: str | None = None,
    detached: bool = False,
    max_restarts: int = 0,
    state: dict[str, Any] | None = None,
) -> Any:
    """The auctioneer actor for ``pool``. It needs no CPU of its own (it only awaits), so it
    fits beside the agents on a small machine; ``max_concurrency`` bounds the calls into it
    (streams and single submits), not the auctions, which ``max_in_flight`` bounds.

    ``state``: where the service keeps its ledger and log (:class:`~sale_ray.service.state.
    ServiceState`'s keyword arguments). A ``name`` is created only if not taken already."""
    import ray

    opts: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 10_000}
    if name:
        opts.update(name=name, namespace=namespace, get_if_exists=True)
    if detached:
        opts["lifetime"] = "detached"
    if max_restarts:
        opts["max_restarts"] = max_restarts
    return (
        ray.remote(AuctioneerService)
        .options(**opts)
        .remote(config, pool.actors, pool.price_pairs, batched, state)
    )
