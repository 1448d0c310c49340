"""The online endpoint's logic, free of HTTP and of Ray: :class:`Gateway`.

It turns a chat request into an auction (model ``sale``) or a passthrough call (model = an
agent's name), a task request into an auction with its verifier, and every result into an
OpenAI-shaped answer that says who answered, why, and what it cost. It keeps the recent records
(:class:`~sale_ray.serve.store.RecordStore`) and counts metrics. Cancelling any of its
coroutines cancels the model calls under it.

Streaming an auction: the auction runs as usual (``protocol.run_auction``), but the winner's
``execute`` is served by its ``execute_stream``, whose deltas are relayed as they come. The
response starts when the winner starts executing, so its headers can name the auction and the
winner; the cost and every agent's C − V ride on the last chunk's ``sale`` field (which is the
authority: if the winner's actor dies before writing, the runner-up executes instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..auction.protocol import run_auction
from ..config import SaleConfig
from ..errors import ModelError, TruncatedOutput
from ..types import TASK_ID_PATTERN, AuctionRecord, Execution, Task, Usage
from . import conversation, explain, policies
from .errors import InvalidRequest, NotFound, UpstreamFailed
from .handles import ServeAgent
from .metrics import PASSTHROUGH, Metrics
from .policies import Policy
from .store import RecordStore
from .wire import (
    SALE_MODEL,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    SaleInfo,
    SaleOptions,
    TaskRequest,
    TaskResult,
    WireUsage,
    new_id,
)

AuctionFn = Callable[..., Awaitable[AuctionRecord]]


class Chunks:
    """The chunks of a started stream, and what must stop when nobody reads them: ``aclose``
    runs ``cleanup`` even if iteration never began (a generator's own ``finally`` would not)."""

    def __init__(
        self, gen: AsyncIterator[ChatCompletionChunk], cleanup: Callable[[], Awaitable[None]]
    ) -> None:
        self._gen, self._cleanup = gen, cleanup

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        return await anext(self._gen)

    async def aclose(self) -> None:
        try:
            await self._gen.aclose()  # type: ignore[attr-defined]
        finally:
            await self._cleanup()


_DONE = object()
UPSTREAM_TIMEOUT_MARGIN_S = 1.0


def _wire_usage(u: Usage) -> WireUsage:
    return WireUsage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
    )


class _Chunker:
    """Builds the chunks of one streamed completion (same id, created and model)."""

    def __init__(self, model: str, cid: str) -> None:
        self.model, self.id, self.created = model, cid, int(time.time())

    def __call__(
        self,
        delta: Delta,
        finish: str | None = None,
        *,
        choices: bool = True,
        usage: WireUsage | None = None,
        sale: SaleInfo | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=self.id,
            created=self.created,
            model=self.model,
            usage=usage,
            sale=sale,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)] if choices else [],
        )


class _Teed:
    """An agent whose ``execute`` streams: deltas go to ``queue`` as the winner writes them."""

    def __init__(self, inner: ServeAgent, queue: asyncio.Queue[Any]) -> None:
        self.inner, self.queue, self.name = inner, queue, inner.name

    async def bid(self, task: Task) -> Any:
        return await self.inner.bid(task)

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> Any:
        return await self.inner.judge(task, plans)

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Any:
        return await self.inner.refine(task, plan, pairs)

    async def execute(self, task: Task, plan: str) -> Execution:
        self.queue.put_nowait(("start", self.name))
        async with contextlib.aclosing(self.inner.execute_stream(task, plan)) as items:
            async for item in items:
                if isinstance(item, Execution):
                    return item
                self.queue.put_nowait(("delta", item))
        raise ModelError(f"{self.name}: execution stream ended without its result")


class Gateway:
    """Chat, task, record and model-list operations over a pool of agents."""

    def __init__(
        self,
        agents: Mapping[str, ServeAgent],
        prices: Mapping[str, float],
        config: SaleConfig,
        *,
        evaluate: Callable[..., Awaitable[Any]] | None = None,
        metrics: Metrics | None = None,
        auction_fn: AuctionFn = run_auction,
    ) -> None:
        taken = sorted(n for n in agents if policies.is_auction(n))
        if taken:
            raise ValueError(f"no agent may be named {SALE_MODEL!r} or 'sale:…': {taken}")
        self.agents = dict(agents)
        self.prices = dict(prices)
        self.config = config
        self.policies = policies.build(config, self.prices)
        self.limits = config.serve
        self.evaluate = evaluate
        self.metrics = metrics or Metrics()
        self.store = RecordStore(config.serve.max_records)
        self._auction_fn = auction_fn

    # --- reads -----------------------------------------------------------------------------
    def models(self) -> ModelList:
        cards = [ModelCard(id=p.model, description=p.description) for p in self.policies.values()]
        cards += [
            ModelCard(
                id=n,
                description="Passthrough to this agent (no auction).",
                price_out_per_mtok=self.prices.get(n),
            )
            for n in self.agents
        ]
        return ModelList(data=cards)

    def auction(self, auction_id: str) -> AuctionRecord:
        rec = self.store.get(auction_id)
        if rec is None:
            raise NotFound(
                f"no recent auction {auction_id[:64]!r} on this replica (only the "
                f"last {self.store.max_records} are kept)",
                param="auction_id",
            )
        return rec

    # --- validation --------------------------------------------------------------------------
    def check_chat(self, req: ChatCompletionRequest) -> None:
        """Limits that depend on configuration; each error names its field."""
        if len(req.messages) > self.limits.max_messages:
            raise InvalidRequest(
                f"messages: {len(req.messages)} messages, at most {self.limits.max_messages}",
                param="messages",
            )
        chars = sum(len(m.text()) for m in req.messages)
        if chars > self.limits.max_prompt_chars:
            raise InvalidRequest(
                f"messages: {chars} characters in all, at most {self.limits.max_prompt_chars}",
                param="messages",
            )
        if policies.is_auction(req.model):
            policies.resolve(self.policies, req.model)
        else:
            if req.model not in self.agents:
                raise NotFound(
                    f"model {req.model!r} does not exist; GET /v1/models lists them",
                    param="model",
                    code="model_not_found",
                )
            if req.sale is not None:
                raise InvalidRequest("sale: only for model 'sale'", param="sale")

    def _task(self, req: ChatCompletionRequest) -> Task:
        """The task of an auction: the whole conversation, rendered (conversation.py)."""
        opts = req.sale or SaleOptions()
        text = conversation.task_text(req.messages, self.limits.max_conversation_tokens)
        if opts.task_id is not None and not TASK_ID_PATTERN.match(opts.task_id):
            raise InvalidRequest(
                "sale.task_id: 1-200 chars of letters, digits, _ . : / -", param="sale.task_id"
            )
        return Task(
            id=opts.task_id or new_id("chat"),
            prompt=text,
            kind=opts.kind,
            entry_point=opts.entry_point,
        )

    def _params(self, req: ChatCompletionRequest, timeout_s: float) -> dict[str, Any]:
        temp = req.temperature
        return {
            "max_tokens": req.max_completion_tokens
            or req.max_tokens
            or self.config.execution.max_tokens,
            "temperature": self.config.auction.temperature if temp is None else temp,
            # a backstop just past the request's deadline, which cancels the call first
            "timeout_s": timeout_s + UPSTREAM_TIMEOUT_MARGIN_S,
        }

    # --- auctions ----------------------------------------------------------------------------
    async def _run(
        self,
        task: Task,
        policy: Policy,
        tenant: str,
        agents: Mapping[str, Any] | None = None,
        *,
        evaluate: Any = None,
        auction_id: str | None = None,
    ) -> AuctionRecord:
        rec = await self._auction_fn(
            task,
            agents or self.agents,
            self.prices,
            policy.config,
            evaluate=evaluate,
            auction_id=auction_id,
        )
        self.store.put(rec)
        self.metrics.observe_record(rec, policy=policy.model, tenant=tenant)
        return rec

    def _info(self, rec: AuctionRecord, policy: Policy) -> SaleInfo:
        return explain.sale_info(rec).model_copy(update={"policy": policy.model})

    @staticmethod
    def _failed(rec: AuctionRecord, info: SaleInfo) -> UpstreamFailed | None:
        ex = rec.execution
        if rec.winner is not None and ex is not None and ex.error is None:
            return None
        return UpstreamFailed(
            f"auction {rec.auction_id} produced no answer: {info.reason}",
            code="no_answer",
            headers=explain.headers(info),
        )

    async def chat(
        self, req: ChatCompletionRequest, timeout_s: float, tenant: str = "none"
    ) -> tuple[ChatCompletion, dict[str, str]]:
        """A whole completion: an auction's winning answer, or one agent's (passthrough).
        ``tenant`` labels the metrics (the API key's tenant)."""
        if policies.is_auction(req.model):
            policy = policies.resolve(self.policies, req.model)
            rec = await self._run(self._task(req), policy, tenant)
            info = self._info(rec, policy)
            if (err := self._failed(rec, info)) is not None:
                raise err
            assert rec.execution is not None
            msg = AssistantMessage(content=rec.execution.answer)
            return ChatCompletion(
                id=f"chatcmpl-{rec.auction_id}",
                model=policy.model,
                choices=[Choice(message=msg)],
                usage=_wire_usage(explain.total_usage(rec)),
                sale=info,
            ), explain.headers(info)
        agent = self.agents[req.model]
        result, usage = await agent.complete(req.plain_messages(), self._params(req, timeout_s))
        self.metrics.observe_usage(agent.name, usage, PASSTHROUGH, tenant)
        info = explain.passthrough_info(agent.name, usage)
        choice = Choice(
            message=AssistantMessage(content=result.text), finish_reason=result.finish_reason
        )
        return ChatCompletion(
            id=new_id("chatcmpl"),
            model=req.model,
            choices=[choice],
            usage=_wire_usage(usage),
            sale=info,
        ), explain.headers(info)

    async def chat_stream(
        self, req: ChatCompletionRequest, timeout_s: float, tenant: str = "none"
    ) -> tuple[dict[str, str], Chunks]:
        """Start a streamed completion; return once its first byte can go out.

        Failures before that raise (and get a proper HTTP status); after it, the chunk iterator
        raises, and the caller ends the stream with an error event (never a clean finish).
        """
        if policies.is_auction(req.model):
            return await self._stream_auction(req, tenant)
        return await self._stream_passthrough(req, timeout_s, tenant)

    async def _stream_passthrough(
        self, req: ChatCompletionRequest, timeout_s: float, tenant: str
    ) -> tuple[dict[str, str], Chunks]:
        agent = self.agents[req.model]
        items = agent.complete_stream(req.plain_messages(), self._params(req, timeout_s))
        try:
            first = await anext(items)
        except StopAsyncIteration:
            raise TruncatedOutput(f"{agent.name}: stream ended before any output") from None
        except BaseException:
            await items.aclose()
            raise
        make = _Chunker(req.model, new_id("chatcmpl"))
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks() -> AsyncIterator[ChatCompletionChunk]:
            async with contextlib.aclosing(items):
                yield make(Delta(role="assistant", content=""))
                item = first
                while not isinstance(item, tuple):
                    yield make(Delta(content=item))
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        raise TruncatedOutput(f"{agent.name}: stream ended early") from None
                finish, usage = item
                self.metrics.observe_usage(agent.name, usage, PASSTHROUGH, tenant)
                info = explain.passthrough_info(agent.name, usage)
                yield make(Delta(), finish, sale=info)
                if with_usage:
                    yield make(Delta(), choices=False, usage=_wire_usage(usage))

        return {explain.H_WINNER: agent.name}, Chunks(chunks(), items.aclose)

    async def _stream_auction(
        self, req: ChatCompletionRequest, tenant: str
    ) -> tuple[dict[str, str], Chunks]:
        policy = policies.resolve(self.policies, req.model)
        task = self._task(req)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        teed = {n: _Teed(a, queue) for n, a in self.agents.items()}
        aid = uuid.uuid4().hex
        job = asyncio.ensure_future(self._run(task, policy, tenant, teed, auction_id=aid))
        job.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while (ev := await queue.get()) is not _DONE and ev[0] != "start":
                pass
            if ev is _DONE:  # finished without executing: no valid bid, or a crash
                rec = job.result()
                raise self._failed(rec, self._info(rec, policy)) or UpstreamFailed("no answer")
        except BaseException:
            job.cancel()
            raise
        make = _Chunker(policy.model, f"chatcmpl-{aid}")
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks() -> AsyncIterator[ChatCompletionChunk]:
            wrote = False
            try:
                yield make(Delta(role="assistant", content=""))
                while (ev := await queue.get()) is not _DONE:
                    kind, value = ev
                    if kind == "delta":
                        wrote = True
                        yield make(Delta(content=value))
                    elif wrote:  # a second executor after text went out: cannot be spliced
                        raise UpstreamFailed(f"auction {aid}: the winner failed mid-answer")
                rec = job.result()
                info = self._info(rec, policy)
                if (err := self._failed(rec, info)) is not None:
                    raise err
                yield make(Delta(), "stop", sale=info)
                if with_usage:
                    yield make(Delta(), choices=False, usage=_wire_usage(explain.total_usage(rec)))
            finally:
                if not job.done():
                    job.cancel()

        async def stop() -> None:
            job.cancel()

        return {explain.H_AUCTION: aid, explain.H_WINNER: ev[1]}, Chunks(chunks(), stop)

    # --- tasks -------------------------------------------------------------------------------
    async def run_task(
        self, req: TaskRequest, tenant: str = "none"
    ) -> tuple[TaskResult, dict[str, str]]:
        """Auction a task, run its verifier, return the answer with the full record. A task
        without an answer is still a result (``error`` says why), not an HTTP error."""
        policy = policies.resolve(self.policies, req.model)
        task = req.to_task()
        if len(task.prompt) > self.limits.max_prompt_chars:
            raise InvalidRequest(
                f"prompt: {len(task.prompt)} characters, at most {self.limits.max_prompt_chars}",
                param="prompt",
            )
        rec = await self._run(task, policy, tenant, evaluate=self.evaluate)
        info = self._info(rec, policy)
        ex = rec.execution
        return TaskResult(
            task_id=task.id,
            auction_id=rec.auction_id,
            winner=rec.winner,
            answer=ex.answer if ex else None,
            passed=rec.passed,
            cost_usd=rec.cost_usd,
            error=info.error,
            sale=info,
            record=rec,
        ), explain.headers(info)
