"""An agent in this process, as the in-process service (``service.local``) needs it.

It offers the auction's calls (bid / judge / refine / execute) plus the endpoint's own:
``complete`` (passthrough), ``complete_stream`` and ``execute_stream``. On a cluster the same
calls go to agent actors through the service (``runtime.ActorAgent``), which forwards
cancellation with ``ray.cancel`` and returns the agents' own exceptions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from ..agents.llm import ChatResult
from ..types import Bid, Execution, JuryVerdict, Task, Usage

StreamItem = Any  # str deltas, then a final (finish_reason, Usage) or Execution


class ServeAgent(Protocol):
    """What the gateway needs from an agent."""

    name: str

    async def bid(self, task: Task) -> Bid: ...
    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict: ...
    async def execute(self, task: Task, plan: str) -> Execution: ...
    async def execute_direct(self, task: Task) -> Execution: ...
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

    async def execute_direct(self, task: Task) -> Execution:
        return await self.agent.execute_direct(task)

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
