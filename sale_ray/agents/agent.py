"""Agent: one model that bids, judges and executes. A plain class; ``runtime`` makes it an actor.

Every model call is priced from the server's own token usage and the agent's $/Mtok, and
bounded by the agent's ``max_concurrency`` (a semaphore shared by all auctions using it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..auction import jury as jurylib
from ..auction.scoring import mean_entropy
from ..config import AgentSpec, SaleConfig
from ..errors import MalformedOutput, ModelError, TruncatedOutput
from ..types import Bid, Execution, JuryVerdict, Task, Usage
from . import prompts
from .delimit import as_data
from .llm import ChatClient, ChatResult
from .screen import screen

_EXEC_TIMEOUT_MARGIN = 0.9  # leave the protocol's deadline a little slack to record the outcome


def resolve_prices(spec: AgentSpec) -> tuple[float, float]:
    """($/Mtok in, $/Mtok out): the spec's, else the local catalog's default for the model."""
    if spec.price_in_per_mtok is not None and spec.price_out_per_mtok is not None:
        return spec.price_in_per_mtok, spec.price_out_per_mtok
    default = 0.0
    if spec.backend == "local":
        from .catalog import get_model

        default = get_model(spec.model).price_per_mtok
    pin = spec.price_in_per_mtok if spec.price_in_per_mtok is not None else default
    pout = spec.price_out_per_mtok if spec.price_out_per_mtok is not None else default
    return pin, pout


class Agent:
    """One agent of the pool. ``start()`` must be awaited before the first call."""

    def __init__(self, spec: AgentSpec, config: SaleConfig, client: ChatClient | None = None):
        self.spec = spec
        self.config = config
        self.price_in, self.price_out = resolve_prices(spec)
        cached_in = spec.price_cached_in_per_mtok
        self.price_cached_in = self.price_in if cached_in is None else cached_in
        self._client = client
        self._server: Any = None
        self._sem = asyncio.Semaphore(spec.max_concurrency)
        self._starting = asyncio.Lock()  # two doors starting one shared agent: one server

    @property
    def name(self) -> str:
        return self.spec.name

    async def start(self) -> dict:
        """Start the local model server (local backend) and build the client. Idempotent, and
        safe to call concurrently (several doors attaching to one service)."""
        async with self._starting:
            return await self._start()

    def ping(self) -> int:
        """Liveness probe of the agent's actor (``sale-ray status``)."""
        return 1

    async def _start(self) -> dict:
        if self._client is None:
            if self.spec.backend == "local":
                self._server = await asyncio.to_thread(self._start_local_server)
                base_url = self._server.base_url
            else:
                base_url = self.spec.base_url
            self._client = ChatClient(base_url, self.spec.model, api_key_env=self.spec.api_key_env)
        if self.config.cache.enabled and not getattr(self._client, "is_cached", False):
            from ..cache import cached_client  # temperature-0 reruns answered from Parquet

            self._client = cached_client(self._client, self.spec, self.config.cache)
        return {"name": self.name, "price_in": self.price_in, "price_out": self.price_out}

    def _start_local_server(self) -> Any:
        from .catalog import model_path
        from .local import LocalModelServer

        server = LocalModelServer(
            model_path(self.spec.model),
            n_ctx=self.spec.n_ctx,
            n_parallel=self.spec.max_concurrency,
            threads=self.spec.threads or self._fair_threads(),
            name=self.name,
        )
        server.start()
        return server

    def _fair_threads(self) -> int:
        """An equal share of this machine's cores per local agent of the pool.

        Measured here: two llama.cpp servers that each use every core while generating at the same
        time drop to ~1 tok/s each (spin-waiting threads fight); with a share each, 11-45 tok/s.
        """
        from .local import default_threads

        local = sum(1 for a in self.config.pool.agents if a.backend == "local")
        return max(1, default_threads() // max(1, local))

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.close()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)
            self._server = None

    def prices(self) -> tuple[float, float]:
        return self.price_in, self.price_out

    # --- accounting -------------------------------------------------------------------------
    def _usage(self, r: ChatResult) -> Usage:
        # prompt tokens served from the server's prefix cache are billed at their own price
        cached = min(max(r.cached_prompt_tokens, 0), r.prompt_tokens)
        cost = (
            (r.prompt_tokens - cached) * self.price_in
            + cached * self.price_cached_in
            + r.completion_tokens * self.price_out
        ) / 1e6
        return Usage(
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cached_prompt_tokens=cached,
            cost_usd=cost,
            latency_s=r.latency_s,
            calls=1,
            cached_calls=1 if r.cached else 0,
        )

    async def _chat(self, messages: list[dict[str, str]], **kw: Any) -> ChatResult:
        if self._client is None:
            await self.start()  # a restarted actor starts on its first call
        async with self._sem:
            return await self._client.chat(
                messages, temperature=self.config.auction.temperature, **kw
            )

    def _system(self) -> dict[str, str]:
        return {"role": "system", "content": prompts.render("system")}

    # --- the three things an agent does ------------------------------------------------------
    async def bid(self, task: Task) -> Bid:
        """Write a short plan; its per-token entropy is the agent's self-confidence."""
        cfg = self.config.auction
        msg = prompts.render(
            "bid", task=as_data("task", task.prompt), max_words=int(cfg.plan_max_tokens * 0.7)
        )
        return await self._plan(msg)

    async def _plan(self, msg: str, refined: bool = False) -> Bid:
        cfg = self.config.auction
        try:
            r = await self._chat(
                [self._system(), {"role": "user", "content": msg}],
                max_tokens=cfg.plan_max_tokens,
                top_logprobs=cfg.top_logprobs,
                timeout_s=cfg.bid_timeout_s,
            )
        except ModelError as e:
            return Bid(agent=self.name, rejected=f"error: {e}", refined=refined)
        usage = self._usage(r)
        plan = r.text.strip()
        if not plan:
            return Bid(agent=self.name, usage=usage, rejected="empty plan", refined=refined)
        # A plan cut at the cap is still a plan (the cap is ours); it is kept as written, and
        # the record says which of its sentences jurors will not see (screen.py).
        return Bid(
            agent=self.name,
            plan=plan,
            plan_tokens=r.completion_tokens,
            entropy=mean_entropy(list(t.top.values()) for t in r.tokens),
            usage=usage,
            refined=refined,
            screened=[rule for rule, _ in screen(plan).removed],
        )

    def _shown(self, text: str) -> str:
        """``text`` as a juror or refiner may see it: screened unless the config says not."""
        return screen(text).text if self.config.auction.screen_directives else text

    async def refine(self, task: Task, plan: str, pairs: Sequence[tuple[str, str, str]]) -> Bid:
        """Rewrite ``plan`` after seeing (past task, losing plan, winning plan) contrasts."""
        cfg = self.config.auction
        # past tasks come from other callers' auctions: data, never instructions (delimit.py)
        cap = cfg.jury_max_plan_chars
        shown = "\n\n".join(
            f"PAST TASK {i}:\n{as_data('past_task', self._shown(t), 600)}\n"
            f"LOST:\n{as_data('plan', self._shown(lost), cap)}\n"
            f"WON:\n{as_data('plan', self._shown(won), cap)}"
            for i, (t, lost, won) in enumerate(pairs, 1)
        )
        msg = prompts.render(
            "refine",
            pairs=shown,
            task=as_data("task", task.prompt),
            plan=as_data("plan", plan, cap),
            max_words=int(cfg.plan_max_tokens * 0.7),
        )
        return await self._plan(msg, refined=True)

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict:
        """Score every (agent, plan) 0-5 in one call; garbage -> an abstaining verdict."""
        cfg = self.config.auction
        labels = jurylib.labels_for(len(plans))
        msg = prompts.render(
            "jury",
            task=as_data("task", self._shown(task.prompt)),
            plans=jurylib.format_plans([self._shown(p) for _, p in plans], cfg.jury_max_plan_chars),
            labels=", ".join(labels),
        )
        try:
            r = await self._chat(
                [
                    {"role": "system", "content": prompts.render("jury_system")},
                    {"role": "user", "content": msg},
                ],
                max_tokens=16 + 12 * len(labels),
                top_logprobs=cfg.top_logprobs,
                response_format=jurylib.verdict_schema(labels),
                timeout_s=cfg.jury_timeout_s,
            )
        except ModelError as e:
            return JuryVerdict(juror=self.name, error=f"error: {e}")
        usage = self._usage(r)
        try:
            by_label = jurylib.parse_verdict(r.text, labels, r.tokens)
        except ModelError as e:
            return JuryVerdict(juror=self.name, usage=usage, error=f"malformed: {e}")
        scores = {agent: by_label[lab] for (agent, _), lab in zip(plans, labels, strict=True)}
        return JuryVerdict(juror=self.name, scores=scores, usage=usage)

    async def execute(self, task: Task, plan: str) -> Execution:
        """Follow the plan: with ``execution.max_turns`` > 1 the agent loop (agents/loop.py),
        else one completion and up to N self-check turns on the prompt's examples."""
        from ..evaluators import extract_code
        from ..evaluators.broker import contained

        ex_cfg = self.config.execution
        if ex_cfg.max_turns > 1:
            return await self.execute_loop(task, plan)
        deadline = time.monotonic() + self.config.auction.execute_timeout_s * _EXEC_TIMEOUT_MARGIN
        if task.kind == "code":
            instr = prompts.render("execute_code", entry_point=task.entry_point or "solution")
        else:
            instr = prompts.render("execute_answer")
        messages = [
            self._system(),
            {
                "role": "user",
                "content": prompts.render(
                    "execute", task_block=prompts.task_block(task), plan=plan, instructions=instr
                ),
            },
        ]
        usage, checks, answer, turns = Usage(), [], "", 0
        try:
            for turn in range(1 + (ex_cfg.self_check_turns if task.kind == "code" else 0)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r = await self._chat(messages, max_tokens=ex_cfg.max_tokens, timeout_s=left)
                usage, turns = usage + self._usage(r), turn + 1
                if r.truncated:
                    raise TruncatedOutput(f"answer cut at {ex_cfg.max_tokens} tokens")
                answer = r.text
                if task.kind != "code":
                    break
                code = extract_code(answer, task.entry_point)
                ok, feedback = await contained(
                    "run_self_check", task, code, self.config.sandbox, cfg=self.config.sandbox
                )
                checks.append(ok)
                if ok or turn == ex_cfg.self_check_turns:
                    break
                messages += [
                    {"role": "assistant", "content": answer},
                    {
                        "role": "user",
                        "content": prompts.render(
                            "fix", feedback=feedback, entry_point=task.entry_point or "solution"
                        ),
                    },
                ]
        except ModelError as e:
            return Execution(
                agent=self.name,
                answer=answer,
                turns=turns,
                self_checks_passed=checks,
                usage=usage,
                error=f"{type(e).__name__}: {e}",
            )
        return Execution(
            agent=self.name, answer=answer, turns=turns, self_checks_passed=checks, usage=usage
        )

    async def execute_loop(self, task: Task, plan: str | None = None) -> Execution:
        """The agent loop on this agent's model: guided by ``plan`` (a winning bid's), or with
        ``plan=None`` the agent called directly, as a user would, with its tools."""
        from .loop import run_loop
        from .tools import make_tools

        cfg = self.config
        left = cfg.auction.execute_timeout_s * _EXEC_TIMEOUT_MARGIN

        async def chat(messages: list[dict[str, str]], max_tokens: int, timeout_s: float):
            return await self._chat(messages, max_tokens=max_tokens, timeout_s=timeout_s)

        return await run_loop(
            task,
            plan,
            agent=self.name,
            chat=chat,
            price=self._usage,
            system=self._system(),
            tools=make_tools(cfg.execution.tools, cfg.sandbox),
            cfg=cfg.execution,
            deadline=time.monotonic() + left,
        )

    async def execute_direct(self, task: Task) -> Execution:
        """The baseline a user means by "just call the model": one call with the task and the
        standard instruction (code: complete this function), no plan, no fix turn.

        For code tasks the answer's run of the prompt's examples is recorded (the direct
        cascade's verifier), never fed back; for answer tasks the answer's mean per-token
        entropy is (the cascade's verifier there).
        """
        from ..evaluators import extract_code
        from ..evaluators.broker import contained

        cfg, max_tokens = self.config.auction, self.config.execution.max_tokens
        if task.kind == "code":
            instr = prompts.render("execute_code", entry_point=task.entry_point or "solution")
        else:
            instr = prompts.render("execute_answer")
        user = prompts.render("direct", task_block=prompts.task_block(task), instructions=instr)
        try:
            r = await self._chat(
                [self._system(), {"role": "user", "content": user}],
                max_tokens=max_tokens,
                top_logprobs=cfg.top_logprobs if task.kind != "code" else None,
                timeout_s=cfg.execute_timeout_s * _EXEC_TIMEOUT_MARGIN,
            )
        except ModelError as e:
            return Execution(agent=self.name, error=f"{type(e).__name__}: {e}")
        usage = self._usage(r)
        if r.truncated:
            return Execution(
                agent=self.name,
                answer=r.text,
                turns=1,
                usage=usage,
                error=f"TruncatedOutput: answer cut at {max_tokens} tokens",
            )
        checks: list[bool] = []
        if task.kind == "code":
            code = extract_code(r.text, task.entry_point)
            ok, _ = await contained(
                "run_self_check", task, code, self.config.sandbox, cfg=self.config.sandbox
            )
            checks.append(ok)
        entropy = mean_entropy(list(t.top.values()) for t in r.tokens) if r.tokens else None
        return Execution(
            agent=self.name,
            answer=r.text,
            turns=1,
            self_checks_passed=checks,
            usage=usage,
            entropy=entropy,
        )

    async def write_tests(self, task: Task, n: int = 5, max_tokens: int = 256) -> Execution:
        """Write ``n`` assert lines for a code task from its prompt alone (a check that needs
        no examples in the prompt, :mod:`~sale_ray.evaluators.self_tests`). The reply is the
        execution's ``answer``; parse it with ``parse_asserts``. A reply cut at ``max_tokens``
        is kept: its complete lines are still tests."""
        if task.kind != "code":
            return Execution(agent=self.name, error="UserError: tests are written for code tasks")
        ep = task.entry_point or "solution"
        user = prompts.render("write_tests", prompt=task.prompt.strip("\n"), n=n, entry_point=ep)
        try:
            r = await self._chat(
                [self._system(), {"role": "user", "content": user}],
                max_tokens=max_tokens,
                timeout_s=self.config.auction.execute_timeout_s * _EXEC_TIMEOUT_MARGIN,
            )
        except ModelError as e:
            return Execution(agent=self.name, error=f"{type(e).__name__}: {e}")
        return Execution(agent=self.name, answer=r.text, turns=1, usage=self._usage(r))

    # --- online endpoint (sale_ray.serve): passthrough and streamed execution -----------------
    async def complete(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> tuple[ChatResult, Usage]:
        """A plain chat completion on this agent's model (the endpoint's passthrough path),
        bounded by the agent's concurrency and priced like every other call.

        ``params``: ``max_tokens`` (required), ``temperature`` and ``timeout_s`` (optional).
        A ``finish_reason`` of ``length`` is returned as is: the caller chose the cap.
        """
        if self._client is None:
            await self.start()  # a restarted actor starts on its first call
        async with self._sem:
            try:
                r = await self._client.chat(
                    messages,
                    max_tokens=params["max_tokens"],
                    temperature=params.get("temperature", 0.0),
                    timeout_s=params.get("timeout_s"),
                )
            except ModelError:
                raise
            except Exception as e:  # e.g. a 200 whose body is not JSON: the model's fault
                raise MalformedOutput(
                    f"{self.name}: unusable answer ({type(e).__name__})"
                ) from None
        return r, self._usage(r)

    async def complete_stream(
        self, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> AsyncIterator[str | tuple[str, Usage]]:
        """:meth:`complete`, streamed: text deltas (``str``), then ``(finish_reason, usage)``.

        Errors (including a stream cut before its finish reason) raise :class:`ModelError`.
        """
        if self._client is None:
            await self.start()  # a restarted actor starts on its first call
        async with self._sem:
            async for d in self._client.chat_stream(
                messages,
                max_tokens=params["max_tokens"],
                temperature=params.get("temperature", 0.0),
                timeout_s=params.get("timeout_s"),
            ):
                if d.finish_reason is None:
                    yield d.text
                else:
                    yield (d.finish_reason, self._usage(d.result()))

    async def execute_stream(self, task: Task, plan: str) -> AsyncIterator[str | Execution]:
        """:meth:`execute`, streamed: text deltas (``str``), then the :class:`Execution`.

        Answer tasks stream token by token. Code tasks run self-checks between turns, and the
        agent loop (``execution.max_turns`` > 1) runs tools between them, so there the final
        answer comes in one piece once it is settled. A cut or failed stream ends in
        an ``Execution`` with an error (never a success); its text so far is kept and priced.
        """
        if task.kind == "code" or self.config.execution.max_turns > 1:  # answer when settled
            ex = await self.execute(task, plan)
            if ex.error is None and ex.answer:
                yield ex.answer
            yield ex
            return
        if self._client is None:
            await self.start()  # a restarted actor starts on its first call
        cfg, max_tokens = self.config.auction, self.config.execution.max_tokens
        messages = [
            self._system(),
            {
                "role": "user",
                "content": prompts.render(  # the same prompt as execute() (a test holds it)
                    "execute",
                    task_block=prompts.task_block(task),
                    plan=plan,
                    instructions=prompts.render("execute_answer"),
                ),
            },
        ]
        parts: list[str] = []
        t0 = time.perf_counter()
        try:
            async with self._sem:
                async for d in self._client.chat_stream(
                    messages,
                    max_tokens=max_tokens,
                    temperature=cfg.temperature,
                    timeout_s=cfg.execute_timeout_s * _EXEC_TIMEOUT_MARGIN,
                ):
                    if d.finish_reason is None:
                        parts.append(d.text)
                        yield d.text
                        continue
                    usage = self._usage(d.result())
                    error = None
                    if d.finish_reason == "length":
                        error = f"TruncatedOutput: answer cut at {max_tokens} tokens"
                    yield Execution(
                        agent=self.name, answer="".join(parts), turns=1, usage=usage, error=error
                    )
                    return
        except ModelError as e:
            # the server's usage never arrived: count the deltas we saw, so spend is not zero
            usage = self._usage(ChatResult("", None, 0, len(parts), time.perf_counter() - t0))
            yield Execution(
                agent=self.name,
                answer="".join(parts),
                turns=1,
                usage=usage,
                error=f"{type(e).__name__}: {e}",
            )

    # --- batched entry point (added for the auctioneer) ---------------------------------------
    async def call_many(self, method: str, calls: list[tuple]):
        """Run many ``bid`` / ``judge`` / ``refine`` / ``execute`` calls in one actor call and
        stream back ``[(index, ok, result_or_error), ...]`` groups as they finish: the
        auctioneer coalesces concurrent auctions' calls into these (one Ray call per batch
        instead of per item). The agent's own semaphore still bounds its model server."""
        from ..batching import serve_batch

        if method not in ("bid", "judge", "refine", "execute"):
            raise ValueError(f"not a batchable method: {method!r}")
        async for group in serve_batch(getattr(self, method), calls):
            yield group

    def endpoint(self) -> dict[str, Any]:
        """Where this agent's model is served (base URL, and the host name it is local to), so
        that a caller on the same host — or any caller, for a network URL — may reach it
        without a hop through this agent (the endpoint's passthrough path)."""
        import socket

        url = self._server.base_url if self._server is not None else self.spec.base_url
        return {"base_url": url, "host": socket.gethostname()}
