"""How the gateway reaches an agent: in-process (tests, one-process serving) or a Ray actor.

Both offer the auction's calls (bid / judge / refine / execute) plus the endpoint's own:
``complete`` (passthrough), ``complete_stream`` and ``execute_stream``. Over Ray, cancelling the
awaiting coroutine (client gone, deadline) cancels the actor's call with ``ray.cancel``, and the
actor's model client closes its HTTP request: a request nobody waits for stops costing money.
Remote errors come back as the original exception (never Ray's wrapper, whose text carries a
remote traceback).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from ..agents.llm import ChatResult
from ..config import AgentSpec, SaleConfig
from ..types import Bid, Execution, JuryVerdict, Task, Usage

StreamItem = Any  # str deltas, then a final (finish_reason, Usage) or Execution


class ServeAgent(Protocol):
    """What the gateway needs from an agent."""

    name: str

    async def bid(self, task: Task) -> Bid: ...
    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict: ...
    async def execute(self, task: Task, plan: str) -> Execution: ...
    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Bid: ...
    async def complete(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[ChatResult, Usage]: ...
    def complete_stream(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> AsyncIterator[StreamItem]: ...
    def execute_stream(self, task: Task, plan: str) -> AsyncIterator[StreamItem]: ...


class InProcessAgent:
    """A started :class:`~sale_ray.agents.agent.Agent` used directly, without Ray."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.name: str = agent.name

    async def bid(self, task: Task) -> Bid:
        return await self.agent.bid(task)

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict:
        return await self.agent.judge(task, plans)

    async def execute(self, task: Task, plan: str) -> Execution:
        return await self.agent.execute(task, plan)

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Bid:
        return await self.agent.refine(task, plan, pairs)

    async def complete(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[ChatResult, Usage]:
        return await self.agent.complete(messages, params)

    def complete_stream(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> AsyncIterator[StreamItem]:
        return self.agent.complete_stream(messages, params)

    def execute_stream(self, task: Task, plan: str) -> AsyncIterator[StreamItem]:
        return self.agent.execute_stream(task, plan)


def _unwrap(e: BaseException) -> BaseException:
    """The exception the agent raised, not Ray's wrapper (whose text has a remote traceback)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


class RayAgent:
    """An agent actor. ``handle`` is the runtime's handle (auction calls); ``actor`` its actor.

    ``direct``: a replica-local :class:`~sale_ray.agents.agent.Agent` over the same model
    server (see :func:`direct_agent`); when set, passthrough calls use it and skip the actor hop.
    """

    def __init__(self, name: str, handle: Any, actor: Any, direct: Any = None) -> None:
        self.name = name
        self.handle = handle
        self.actor = actor
        self.direct = direct

    async def _call(self, ref: Any) -> Any:
        import ray

        try:
            return await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        except ray.exceptions.RayTaskError as e:
            raise _unwrap(e) from None

    async def _stream(self, gen: Any) -> AsyncIterator[StreamItem]:
        import ray

        finished = False
        try:
            async for ref in gen:
                try:
                    yield await ref
                except ray.exceptions.RayTaskError as e:
                    raise _unwrap(e) from None
            finished = True
        finally:
            if not finished:  # closed early, cancelled or failed: stop the actor's stream
                ray.cancel(gen)

    async def bid(self, task: Task) -> Bid:
        return await self.handle.bid(task)

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict:
        return await self.handle.judge(task, plans)

    async def execute(self, task: Task, plan: str) -> Execution:
        return await self.handle.execute(task, plan)

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Bid:
        return await self.handle.refine(task, plan, pairs)

    async def complete(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[ChatResult, Usage]:
        if self.direct is not None:
            return await self.direct.complete(messages, params)
        return await self._call(self.actor.complete.remote(messages, params))

    def complete_stream(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> AsyncIterator[StreamItem]:
        if self.direct is not None:
            return self.direct.complete_stream(messages, params)
        return self._stream(self.actor.complete_stream.remote(messages, params))

    def execute_stream(self, task: Task, plan: str) -> AsyncIterator[StreamItem]:
        return self._stream(self.actor.execute_stream.remote(task, plan))


_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def direct_agent(spec: AgentSpec, config: SaleConfig, actor: Any) -> Any:
    """A replica-local Agent over the model server of ``actor``, or None when this process
    cannot reach that server (a loopback URL on another host) or lacks its API key.

    Passthrough is a plain proxy call: going straight to the server saves one actor round trip
    (about 1-2 ms here, see benchmarks/serve_overhead.py). It is priced like the actor's calls
    and bounded by its own semaphore of ``spec.max_concurrency`` per replica.
    """
    import socket
    from urllib.parse import urlparse

    from ..agents.agent import Agent
    from ..agents.llm import ChatClient

    try:
        info = await actor.endpoint.remote()
    except Exception:  # an agent kind without a model server of its own (scripted, ...)
        return None
    url = info.get("base_url")
    if not url:
        return None
    if urlparse(url).hostname in _LOOPBACK and info.get("host") != socket.gethostname():
        return None
    if spec.api_key_env and not os.environ.get(spec.api_key_env):
        return None
    return Agent(spec, config, client=ChatClient(url, spec.model, api_key_env=spec.api_key_env))
