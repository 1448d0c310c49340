"""Quotas: RPM / TPM token buckets, concurrency limits and budgets (reserve, then settle).

Pure asyncio, no Ray. The auctioneer wraps every agent handle in an :class:`AgentGate`, so one
agent's limits hold across *all* auctions in flight, and a call that would break a limit is
either delayed (backpressure) or refused with a recorded reason (the agent is excluded from that
auction; the auction goes on with the others).

Budgets follow the gateway rule "reserve first": before a model call, a pessimistic estimate of
its cost is reserved against the agent's and the run's budget; after the call the reservation
is replaced by what the call really cost. A call whose reservation does not fit is refused, so
the money spent can exceed a budget only where a call costs more than its estimate (the
estimate uses each call's ``max_tokens`` cap, so completions cannot; only an underestimated
prompt can), i.e. by less than one reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..auction.meter import charge
from ..config import AgentSpec, SaleConfig
from ..errors import SaleRayError
from ..types import Task, Usage

Clock = Callable[[], float]


class QuotaExhausted(SaleRayError):
    """An agent may not make this call now; recorded as the reason it sat out the auction."""


class BudgetExhausted(QuotaExhausted):
    """The call's reservation does not fit in the agent's or the run's budget."""


class RateLimited(QuotaExhausted):
    """The agent's RPM / TPM quota has no room for this call within its deadline."""


class TokenBucket:
    """A token bucket in 'reservation' style: taking may drive the level negative, and the
    taker then waits until the debt is refilled. Callers queue in arrival order with no lock,
    because computing the delay and debiting happen without an ``await`` in between."""

    def __init__(self, per_minute: float, *, clock: Clock = time.monotonic) -> None:
        self.rate = per_minute / 60.0  # tokens per second
        self.capacity = per_minute  # providers meter per minute: one minute's worth may burst
        self._level = float(per_minute)
        self._clock = clock
        self._t = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._t) * self.rate)
        self._t = now

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def reserve(self, n: float, max_wait_s: float) -> float | None:
        """Debit ``n`` and return how long to wait before using it, or None (nothing debited)
        when the wait would exceed ``max_wait_s``."""
        self._refill()
        after = self._level - n
        wait = 0.0 if after >= 0 else -after / self.rate
        if wait > max_wait_s:
            return None
        self._level = after
        return wait

    def adjust(self, delta: float) -> None:
        """Correct an estimate after the fact (positive: the call used more than reserved)."""
        self._refill()
        self._level = min(self.capacity, self._level - delta)


class Budget:
    """Dollars with reservations. Check-and-reserve is one synchronous step (no ``await``),
    so concurrent callers on one event loop cannot both squeeze into the last dollar.

    A call that does not fit only because other calls' reservations are pending waits for them
    to settle (they usually cost less than reserved); it is refused when even the money
    actually spent leaves no room."""

    def __init__(self, limit_usd: float | None, label: str) -> None:
        self.limit = limit_usd
        self.label = label
        self.spent = 0.0
        self.reserved = 0.0
        self.largest_reservation = 0.0
        self.smallest_reservation = 0.0
        self._changed: asyncio.Event | None = None

    @property
    def exhausted(self) -> bool:
        """No call could fit any more, whatever settles (not: momentarily fully reserved)."""
        if self.limit is None:
            return False
        return self.limit - self.spent <= self.smallest_reservation

    def refusal(self, usd: float, *, hard: bool = False) -> str | None:
        """Why a reservation of ``usd`` would not fit (None: it fits). ``hard``: ignoring
        pending reservations (would it fit once everything in flight has settled?)."""
        pending = 0.0 if hard else self.reserved
        if self.limit is None or self.spent + pending + usd <= self.limit:
            return None
        return (
            f"{self.label} budget ${self.limit:.6g} exhausted (spent ${self.spent:.6g}, "
            f"reserved ${self.reserved:.6g}, call needs ~${usd:.6g})"
        )

    def reserve(self, usd: float) -> None:
        self.reserved += usd
        self.largest_reservation = max(self.largest_reservation, usd)
        if usd > 0:
            s = self.smallest_reservation
            self.smallest_reservation = usd if s == 0 else min(s, usd)

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        self.reserved = max(0.0, self.reserved - reserved_usd)
        self.spent += actual_usd
        self.notify()

    def notify(self) -> None:
        """Wake everyone waiting for money to move."""
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_settled(self, timeout_s: float) -> None:
        """Wait until some reservation settles (or ``timeout_s``)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout_s))
        except TimeoutError:
            pass


@dataclass(frozen=True)
class Estimate:
    """Pessimistic size of one model call: prompt tokens (a guess from characters) and the
    completion cap (exact upper bound)."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


_TEMPLATE_TOKENS = 300  # system prompt + instructions around the task text


def _chars_to_tokens(n_chars: int) -> int:
    return n_chars // 3 + 1  # ~4 chars/token for English; 3 errs on the expensive side


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` as every estimate here counts them (pessimistic, from characters)."""
    return _chars_to_tokens(len(text))


def estimate_call(method: str, task: Task, config: SaleConfig, n_plans: int = 0) -> Estimate:
    """What one ``bid`` / ``judge`` / ``refine`` / ``execute`` call may cost, in tokens."""
    a, ex = config.auction, config.execution
    task_toks = _chars_to_tokens(len(task.prompt)) + _TEMPLATE_TOKENS
    if method == "bid":
        return Estimate(task_toks, a.plan_max_tokens)
    if method == "judge":
        return Estimate(task_toks + n_plans * a.plan_max_tokens, 16 + 12 * max(1, n_plans))
    if method == "refine":  # up to 8 (task, lost, won) contrasts plus the plan itself
        return Estimate(
            task_toks + 8 * (200 + 2 * a.plan_max_tokens) + a.plan_max_tokens, a.plan_max_tokens
        )
    turns = 1 + (ex.self_check_turns if task.kind == "code" else 0)
    # every fix turn re-sends the conversation so far: prompt grows by one answer + feedback
    prompt = sum(task_toks + a.plan_max_tokens + t * (ex.max_tokens + 300) for t in range(turns))
    return Estimate(prompt, turns * ex.max_tokens)


class AgentGate:
    """One agent's limits, shared by every auction: max concurrency, RPM, TPM, its own budget
    and the run's budget."""

    def __init__(
        self,
        spec: AgentSpec,
        price_in: float,
        price_out: float,
        run_budget: Budget,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = spec.name
        self.price_in, self.price_out = price_in, price_out
        self.sem = asyncio.Semaphore(spec.max_concurrency)
        q = spec.quota
        self.rpm = TokenBucket(q.rpm, clock=clock) if q.rpm else None
        self.tpm = TokenBucket(q.tpm, clock=clock) if q.tpm else None
        self.budget = Budget(q.budget_usd, f"agent {spec.name!r}")
        self.run_budget = run_budget
        self.refused: dict[str, int] = {}  # reason kind -> count, for stats

    def price(self, est: Estimate) -> float:
        return (est.prompt_tokens * self.price_in + est.completion_tokens * self.price_out) / 1e6

    def exclusion(self) -> str | None:
        """Why this agent is out right now, before any estimate (None: it may be asked)."""
        for b in (self.budget, self.run_budget):
            if b.exhausted:
                return f"{b.label} budget ${b.limit:.6g} exhausted"
        return None

    def _refuse(self, kind: str, exc: QuotaExhausted) -> QuotaExhausted:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        return exc

    async def call(
        self,
        est: Estimate,
        max_wait_s: float,
        fn: Callable[[], Awaitable[Any]],
        method: str = "call",
    ) -> Any:
        """Run ``fn`` within every limit, or raise a :class:`QuotaExhausted` saying which one."""
        usd = self.price(est)
        await self._wait_for_money(usd, max_wait_s)
        # reserve before waiting: a waiting call holds its money, so nobody overtakes into it
        self.budget.reserve(usd)
        self.run_budget.reserve(usd)
        actual: float | None = None
        result: Any = None
        started = False  # was the model asked at all? (a call cancelled while queued was not)
        try:
            async with self.sem:  # per-agent concurrency, across all auctions (backpressure)
                wait = self._take_rate(est, max_wait_s)
                try:
                    if wait > 0:
                        await asyncio.sleep(wait)
                except BaseException:  # gave up while waiting for rate room: give it back
                    self._refund_rate(est)
                    raise
                started = True
                result = await fn()
            actual, tokens = _usage_of(result)
            if self.tpm is not None and tokens is not None:
                self.tpm.adjust(tokens - est.tokens)
            return result
        finally:
            # a failed or cancelled call may still have been billed: charge the reservation;
            # one that never reached the model (cancelled while queued) cost nothing
            spent = (usd if started else 0.0) if actual is None else actual
            self.budget.settle(usd, spent)
            self.run_budget.settle(usd, spent)
            # and book it on the auction's meter: a crash later in the auction keeps it
            if actual is not None:
                charge(method, result.usage)
            elif started:
                charge(method, Usage(cost_usd=spent, calls=1), reported=False)

    async def _wait_for_money(self, usd: float, max_wait_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait_s
        while True:
            blocked = next((b for b in (self.budget, self.run_budget) if b.refusal(usd)), None)
            if blocked is None:
                return  # fits now; the caller reserves before its next await
            why = blocked.refusal(usd, hard=True)
            if why or loop.time() >= deadline:
                raise self._refuse("budget", BudgetExhausted(why or blocked.refusal(usd) or ""))
            await blocked.wait_settled(deadline - loop.time())

    def _refund_rate(self, est: Estimate) -> None:
        if self.rpm is not None:
            self.rpm.adjust(-1)
        if self.tpm is not None:
            self.tpm.adjust(-est.tokens)

    def _take_rate(self, est: Estimate, max_wait_s: float) -> float:
        waits = []
        if self.rpm is not None:
            w = self.rpm.reserve(1, max_wait_s)
            if w is None:
                raise self._refuse("rpm", RateLimited(f"agent {self.name!r}: rpm quota full"))
            waits.append(w)
        if self.tpm is not None:
            w = self.tpm.reserve(est.tokens, max_wait_s)
            if w is None:
                if self.rpm is not None:
                    self.rpm.adjust(-1)  # give the request back
                raise self._refuse("tpm", RateLimited(f"agent {self.name!r}: tpm quota full"))
            waits.append(w)
        return max(waits, default=0.0)


def _usage_of(result: Any) -> tuple[float | None, int | None]:
    """(cost, tokens) a Bid / JuryVerdict / Execution reports; (None, None) if it has none."""
    u = getattr(result, "usage", None)
    if u is None:
        return None, None
    return float(u.cost_usd), int(u.prompt_tokens + u.completion_tokens)


class GatedAgent:
    """An agent handle whose every call passes its :class:`AgentGate` first.

    ``max_wait`` per method is the longest a call may queue for RPM / TPM room; past it the
    agent sits out (recorded) rather than blowing the auction's phase deadline."""

    def __init__(self, inner: Any, gate: AgentGate, config: SaleConfig) -> None:
        self.inner, self.gate, self.config = inner, gate, config
        a = config.auction
        self._max_wait = {
            "bid": a.bid_timeout_s / 2,
            "judge": a.jury_timeout_s / 2,
            "refine": a.bid_timeout_s / 2,
            "execute": a.execute_timeout_s / 4,
        }

    async def bid(self, task: Task) -> Any:
        est = estimate_call("bid", task, self.config)
        return await self.gate.call(est, self._max_wait["bid"], lambda: self.inner.bid(task), "bid")

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> Any:
        est = estimate_call("judge", task, self.config, len(plans))
        return await self.gate.call(
            est, self._max_wait["judge"], lambda: self.inner.judge(task, plans), "judge"
        )

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Any:
        est = estimate_call("refine", task, self.config)
        return await self.gate.call(
            est, self._max_wait["refine"], lambda: self.inner.refine(task, plan, pairs), "refine"
        )

    async def execute(self, task: Task, plan: str) -> Any:
        est = estimate_call("execute", task, self.config)
        return await self.gate.call(
            est, self._max_wait["execute"], lambda: self.inner.execute(task, plan), "execute"
        )

    async def execute_direct(self, task: Task) -> Any:
        """The task alone, no plan (the evaluation's direct baselines), inside the gate."""
        est = estimate_call("execute", task, self.config)
        return await self.gate.call(
            est, self._max_wait["execute"], lambda: self.inner.execute_direct(task), "execute"
        )

    # --- the endpoint's calls, under the same gate ---------------------------------------------
    def _passthrough_estimate(self, messages: Sequence[dict], params: dict[str, Any]) -> Estimate:
        chars = sum(len(str(m.get("content") or "")) for m in messages)
        return Estimate(_chars_to_tokens(chars) + 16 * len(messages), int(params["max_tokens"]))

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Any:
        """A passthrough completion, inside this agent's limits: ``(ChatResult, Usage)``."""
        est = self._passthrough_estimate(messages, params)

        async def call() -> _Priced:
            result, usage = await self.inner.complete(messages, params)
            return _Priced((result, usage), usage)

        wait = float(params.get("timeout_s") or self.config.auction.execute_timeout_s) / 4
        return (await self.gate.call(est, wait, call, "passthrough")).value

    def complete_stream(self, messages: list[dict[str, str]], params: dict[str, Any]) -> Any:
        """:meth:`complete`, streamed: deltas, then ``(finish_reason, usage)``."""
        est = self._passthrough_estimate(messages, params)
        wait = float(params.get("timeout_s") or self.config.auction.execute_timeout_s) / 4
        return gated_stream(
            self.gate,
            est,
            wait,
            "passthrough",
            lambda: self.inner.complete_stream(messages, params),
            lambda item: item[1] if isinstance(item, tuple) else None,
        )

    def execute_stream(self, task: Task, plan: str) -> Any:
        """:meth:`execute`, streamed: deltas, then the ``Execution`` (priced by the gate)."""
        est = estimate_call("execute", task, self.config)
        return gated_stream(
            self.gate,
            est,
            self._max_wait["execute"],
            "execute",
            lambda: self.inner.execute_stream(task, plan),
            lambda item: getattr(item, "usage", None) if not isinstance(item, str) else None,
        )


class _Priced:
    """A result whose spend the gate reads from ``usage`` (for results that carry none)."""

    def __init__(self, value: Any, usage: Usage) -> None:
        self.value, self.usage = value, usage


async def gated_stream(
    gate: AgentGate,
    est: Estimate,
    max_wait_s: float,
    method: str,
    open_stream: Callable[[], Any],
    usage_of: Callable[[Any], Usage | None],
) -> Any:
    """Relay a stream opened inside ``gate``: the reservation is held for the whole stream and
    settled with the usage of its last item (``usage_of`` finds it). The stream runs in its own
    task so the gate's ``finally`` settles it even when the reader stops early."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def consume() -> _Priced:
        usage: Usage | None = None
        stream = open_stream()
        try:
            async for item in stream:
                u = usage_of(item)
                usage = u if u is not None else usage
                queue.put_nowait(("item", item))
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if usage is None:  # the stream ended without its usage: nothing proves a smaller bill
            usage = Usage(cost_usd=gate.price(est))
        return _Priced(None, usage)

    runner = asyncio.ensure_future(gate.call(est, max_wait_s, consume, method))
    runner.add_done_callback(lambda _: queue.put_nowait(("end", None)))
    try:
        while True:
            kind, item = await queue.get()
            if kind == "end":
                runner.result()  # raise what stopped it (quota refusal, model error)
                return
            yield item
    finally:
        if not runner.done():
            runner.cancel()
            with contextlib.suppress(BaseException):
                await runner
