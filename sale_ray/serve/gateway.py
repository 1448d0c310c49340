"""The online endpoint's logic, free of HTTP and of Ray: :class:`Gateway`.

It turns a chat request into an auction (model ``sale``) or a passthrough call (model = an
agent's name), a task request into an auction with its verifier, and every result into an
OpenAI-shaped answer that says who answered, why, and what it cost. It counts metrics.
Cancelling any of its coroutines cancels the model calls under it.

The gateway owns no agents, limits or records: every auction and passthrough call goes to the
**service** (:class:`~sale_ray.service.handle.Service` on a cluster — shared by every replica
and every other door — or :class:`~sale_ray.service.local.LocalService` in one process). So
online requests get the same gates, budget ledger, idempotency (a retried ``sale.task_id`` or
``Idempotency-Key`` returns the first auction), memory and durable log as batch jobs.

Streaming an auction: the service runs it as usual, but the winner's ``execute`` is served by
its ``execute_stream``, whose deltas are relayed as they come. The response starts when the
winner starts executing, so its headers can name the auction and the winner; the cost and every
agent's C − V ride on the last chunk's ``sale`` field (which is the authority: if the winner's
actor dies before writing, the runner-up executes instead).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from ..config import SaleConfig
from ..errors import TruncatedOutput
from ..tenants import TenantLimits
from ..types import TASK_ID_PATTERN, AuctionRecord, Task, Usage
from . import conversation, explain, policies
from .errors import InvalidRequest, NotFound, UpstreamFailed
from .metrics import PASSTHROUGH, Metrics
from .policies import Policy
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
    PromptTokensDetails,
    SaleInfo,
    SaleOptions,
    TaskRequest,
    TaskResult,
    WireUsage,
    new_id,
)

IDEMPOTENCY_KEY_MAX = 200


def idempotent_task_id(tenant: str, key: str) -> str:
    """The task id of a request carrying ``Idempotency-Key: key``: per tenant (two tenants'
    keys never collide), and a digest (the key itself is never stored or logged)."""
    return "idem-" + hashlib.sha256(f"{tenant}\x00{key}".encode()).hexdigest()[:40]


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


UPSTREAM_TIMEOUT_MARGIN_S = 1.0


def _wire_usage(u: Usage) -> WireUsage:
    return WireUsage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_prompt_tokens),
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


class Gateway:
    """Chat, task, record and model-list operations over a service's pool of agents.

    ``agents``: the pool's agent names (or in-process handles, then ``service`` may be left
    out: a :class:`~sale_ray.service.local.LocalService` is built over them). ``prices``: $/Mtok
    out per agent (or (in, out) pairs)."""

    def __init__(
        self,
        agents: Mapping[str, Any] | list[str],
        prices: Mapping[str, Any],
        config: SaleConfig,
        *,
        evaluate: Callable[..., Awaitable[Any]] | None = None,
        metrics: Any = None,
        service: Any = None,
    ) -> None:
        taken = sorted(n for n in agents if policies.is_auction(n))
        if taken:
            raise ValueError(f"no agent may be named {SALE_MODEL!r} or 'sale:…': {taken}")
        if service is None:
            from ..service.local import LocalService

            assert isinstance(agents, Mapping), "in-process serving needs agent handles"
            service = LocalService.over(agents, prices, config, evaluate=evaluate)
        self.service = service
        self.agents = list(agents)
        self.prices = {n: p[1] if isinstance(p, tuple | list) else p for n, p in prices.items()}
        self.config = config
        self.policies = policies.build(config, self.prices)
        self.limits = config.serve
        self.metrics = metrics or Metrics()

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

    async def auction(self, auction_id: str, may_read: Callable[[str | None], bool]) -> Any:
        """An auction's record, from any replica: the service's recent records, else its
        durable log (then the log's row, a dict). ``may_read(tenant)``: whether the caller may
        see that tenant's auctions; another tenant's auction is a 404 like a missing one (its
        existence is not theirs to know)."""
        rec = await self.service.record(auction_id)
        owner = rec.get("tenant") if isinstance(rec, dict) else getattr(rec, "tenant", None)
        if rec is None or not may_read(owner):
            raise NotFound(f"no auction {auction_id[:64]!r} in this service", param="auction_id")
        return rec

    async def render_metrics(self) -> bytes:
        """Prometheus text of the endpoint (the service's, when the metrics live there)."""
        out = self.metrics.render()
        return await out if inspect.isawaitable(out) else out

    async def health(self) -> dict[str, Any]:
        """``ok`` while every agent answers, ``degraded`` while some do not (a dead agent is
        being restarted): each agent's state, as the service sees it."""
        agents = (await self.service.health())["agents"]
        ok = all(v == "alive" for v in agents.values())
        return {"status": "ok" if ok else "degraded", "agents": agents}

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

    def _task(
        self, req: ChatCompletionRequest, tenant: str = "none", idempotency_key: str | None = None
    ) -> Task:
        """The task of an auction: the whole conversation, rendered (conversation.py). Its id
        is ``sale.task_id``, else one derived from the ``Idempotency-Key`` header, else new:
        the service runs one auction per id, so a retried request spends nothing twice."""
        opts = req.sale or SaleOptions()
        text = conversation.task_text(req.messages, self.limits.max_conversation_tokens)
        if opts.task_id is not None and not TASK_ID_PATTERN.match(opts.task_id):
            raise InvalidRequest(
                "sale.task_id: 1-200 chars of letters, digits, _ . : / -", param="sale.task_id"
            )
        tid = opts.task_id
        if tid is None and idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= IDEMPOTENCY_KEY_MAX:
                raise InvalidRequest(
                    f"Idempotency-Key: 1-{IDEMPOTENCY_KEY_MAX} characters",
                    param="Idempotency-Key",
                )
            tid = idempotent_task_id(tenant, idempotency_key)
        return Task(
            id=tid or new_id("chat"),
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
        *,
        evaluate: bool = False,
        limits: TenantLimits | None = None,
    ) -> AuctionRecord:
        in_service = getattr(self.metrics, "counts_records", False)
        rec = await self.service.submit(
            task,
            policy=policy.model,
            evaluate=evaluate,
            tenant=tenant,
            limits=limits,
            observe=in_service,
        )
        if not in_service:
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
        self,
        req: ChatCompletionRequest,
        timeout_s: float,
        tenant: str = "none",
        idempotency_key: str | None = None,
        limits: TenantLimits | None = None,
    ) -> tuple[ChatCompletion, dict[str, str]]:
        """A whole completion: an auction's winning answer, or one agent's (passthrough).
        ``tenant``: the API key's tenant (its spend and metrics); ``limits``: its rate and
        budget, which the service enforces."""
        if policies.is_auction(req.model):
            policy = policies.resolve(self.policies, req.model)
            task = self._task(req, tenant, idempotency_key)
            rec = await self._run(task, policy, tenant, limits=limits)
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
        name = req.model
        result, usage = await self.service.complete(
            name, req.plain_messages(), self._params(req, timeout_s), tenant=tenant, limits=limits
        )
        self.metrics.observe_usage(name, usage, PASSTHROUGH, tenant)
        info = explain.passthrough_info(name, usage)
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
        self,
        req: ChatCompletionRequest,
        timeout_s: float,
        tenant: str = "none",
        idempotency_key: str | None = None,
        limits: TenantLimits | None = None,
    ) -> tuple[dict[str, str], Chunks]:
        """Start a streamed completion; return once its first byte can go out.

        Failures before that raise (and get a proper HTTP status); after it, the chunk iterator
        raises, and the caller ends the stream with an error event (never a clean finish).
        """
        if policies.is_auction(req.model):
            return await self._stream_auction(req, tenant, idempotency_key, limits)
        return await self._stream_passthrough(req, timeout_s, tenant, limits)

    async def _stream_passthrough(
        self,
        req: ChatCompletionRequest,
        timeout_s: float,
        tenant: str,
        limits: TenantLimits | None,
    ) -> tuple[dict[str, str], Chunks]:
        name = req.model
        items = self.service.complete_stream(
            name, req.plain_messages(), self._params(req, timeout_s), tenant=tenant, limits=limits
        )
        try:
            first = await anext(items)
        except StopAsyncIteration:
            raise TruncatedOutput(f"{name}: stream ended before any output") from None
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
                        raise TruncatedOutput(f"{name}: stream ended early") from None
                finish, usage = item
                self.metrics.observe_usage(name, usage, PASSTHROUGH, tenant)
                info = explain.passthrough_info(name, usage)
                yield make(Delta(), finish, sale=info)
                if with_usage:
                    yield make(Delta(), choices=False, usage=_wire_usage(usage))

        return {explain.H_WINNER: name}, Chunks(chunks(), items.aclose)

    async def _stream_auction(
        self,
        req: ChatCompletionRequest,
        tenant: str,
        idempotency_key: str | None,
        limits: TenantLimits | None,
    ) -> tuple[dict[str, str], Chunks]:
        policy = policies.resolve(self.policies, req.model)
        task = self._task(req, tenant, idempotency_key)
        events = self.service.stream_one(task, policy=policy.model, tenant=tenant, limits=limits)
        try:
            ev = await anext(events)
            if ev[0] == "record":  # already auctioned (a retry), or over without executing
                rec = ev[1]
                self.metrics.observe_record(rec, policy=policy.model, tenant=tenant)
                err = self._failed(rec, self._info(rec, policy))
                if err is not None:
                    raise err
        except StopAsyncIteration:
            raise UpstreamFailed("auction stream ended without a record") from None
        except BaseException:
            await events.aclose()
            raise
        if ev[0] == "record":
            return self._replay(req, policy, ev[1], events)
        start = ev[1]
        aid = start["auction_id"]
        make = _Chunker(policy.model, f"chatcmpl-{aid}")
        with_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks() -> AsyncIterator[ChatCompletionChunk]:
            wrote = False
            async with contextlib.aclosing(events):
                yield make(Delta(role="assistant", content=""))
                rec = None
                async for kind, value in events:
                    if kind == "delta":
                        wrote = True
                        yield make(Delta(content=value))
                    elif kind == "record":
                        rec = value
                    elif wrote:  # a second executor after text went out: cannot be spliced
                        raise UpstreamFailed(f"auction {aid}: the winner failed mid-answer")
                if rec is None:
                    raise UpstreamFailed(f"auction {aid}: stream ended without its record")
                self.metrics.observe_record(rec, policy=policy.model, tenant=tenant)
                info = self._info(rec, policy)
                if (err := self._failed(rec, info)) is not None:
                    raise err
                yield make(Delta(), "stop", sale=info)
                if with_usage:
                    yield make(Delta(), choices=False, usage=_wire_usage(explain.total_usage(rec)))

        return {explain.H_AUCTION: aid, explain.H_WINNER: start["winner"]}, Chunks(
            chunks(), events.aclose
        )

    def _replay(
        self, req: ChatCompletionRequest, policy: Policy, rec: AuctionRecord, events: Any
    ) -> tuple[dict[str, str], Chunks]:
        """A stream of an auction that already ran: its answer in one chunk, then the end."""
        assert rec.execution is not None
        make = _Chunker(policy.model, f"chatcmpl-{rec.auction_id}")
        info = self._info(rec, policy)
        with_usage = bool(req.stream_options and req.stream_options.include_usage)
        answer = rec.execution.answer

        async def chunks() -> AsyncIterator[ChatCompletionChunk]:
            yield make(Delta(role="assistant", content=""))
            yield make(Delta(content=answer))
            yield make(Delta(), "stop", sale=info)
            if with_usage:
                yield make(Delta(), choices=False, usage=_wire_usage(explain.total_usage(rec)))

        return explain.headers(info), Chunks(chunks(), events.aclose)

    # --- tasks -------------------------------------------------------------------------------
    async def run_task(
        self, req: TaskRequest, tenant: str = "none", limits: TenantLimits | None = None
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
        rec = await self._run(task, policy, tenant, evaluate=True, limits=limits)
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
