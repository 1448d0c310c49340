"""The auctioneer: admission, many auctions in flight, idempotent task ids, batched agent calls.

Pure asyncio, no Ray (``runtime`` hosts it in an actor). Three pieces:

* :class:`Auctioneer` admits tasks into a bounded queue, runs up to ``max_in_flight`` auctions
  at once through :func:`~sale_ray.auction.protocol.run_auction`, and remembers every task id:
  a resubmitted id gets the first auction's record back, never a second award. Each agent is
  wrapped in a :class:`~sale_ray.agents.quota.GatedAgent`, so concurrency, RPM / TPM and budgets
  hold across all auctions.
* :class:`MicroBatcher` coalesces the concurrent calls that many auctions make to one agent
  into one remote call carrying many items (one Ray call tops out near 2,000/s; a batched one
  carries 100+ items), with a few batches in flight (pipelining). The protocol stays unaware.
* :func:`serve_batch` is the agent's side of that wire: run the items concurrently and stream
  back groups of results as they finish, so one slow item never holds back the others.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from .agents.quota import AgentGate, Budget, BudgetExhausted, GatedAgent, estimate_call
from .auction.meter import metering
from .auction.protocol import Evaluator, Refiner, run_auction
from .auction.refinement import ContrastMemory, MemoryRefiner
from .config import SaleConfig
from .errors import SaleRayError
from .types import AuctionRecord, Evaluation, Task

# (index, ok, value): value is the result, or "Type: message" of the error it raised
Group = list[tuple[int, bool, Any]]
BUDGET_REFUSED = "budget exhausted"  # prefix of a record's error: not done, rerun may retry it


class Overloaded(SaleRayError):
    """The admission queue is full: try again later (HTTP 429/503 with Retry-After)."""


class AgentCallError(SaleRayError):
    """An agent raised while serving a batched call; the text is its ``Type: message``."""


# --- the agent's side of a batched call ----------------------------------------------------------
async def serve_batch(
    fn: Callable[..., Awaitable[Any]], calls: Sequence[tuple]
) -> AsyncIterator[Group]:
    """Run ``fn(*args)`` for every args tuple concurrently; yield finished groups as they come.

    Errors are returned as data (one failing item must not fail its batch-mates). Closing the
    generator (the caller gave up) cancels the items still running."""

    async def one(i: int, args: tuple) -> tuple[int, bool, Any]:
        try:
            return i, True, await fn(*args)
        except Exception as e:
            return i, False, f"{type(e).__name__}: {e}"[:500]

    pending = {asyncio.ensure_future(one(i, a)) for i, a in enumerate(calls)}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            yield [t.result() for t in done]
    finally:
        for t in pending:
            t.cancel()


# --- the caller's side ---------------------------------------------------------------------------
Send = Callable[[list[Any]], AsyncIterator[Group]]


class MicroBatcher:
    """Coalesce concurrent ``call(item)``s into ``send(items)`` batches.

    Items that arrive in the same event-loop turn, or while ``max_in_flight`` batches are
    already out, travel together (up to ``max_batch``): under light load a call goes out at
    once, under heavy load batches grow by themselves, and nothing waits on a timer. A caller
    that gives up (deadline) is dropped from the queue; a batch whose callers have all given up
    is cancelled, so a hung agent cannot pin the pipeline."""

    def __init__(self, send: Send, *, max_batch: int = 256, max_in_flight: int = 4) -> None:
        self._send = send
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: deque[tuple[Any, asyncio.Future]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self.batches = 0  # sent so far (stats)
        self.items = 0

    async def call(self, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)
        return await fut

    def _pump(self) -> None:
        self._scheduled = False
        while self._queue and self._in_flight < self.max_in_flight:
            batch: list[tuple[Any, asyncio.Future]] = []
            while self._queue and len(batch) < self.max_batch:
                item, fut = self._queue.popleft()
                if not fut.done():  # cancelled while queued: never sent
                    batch.append((item, fut))
            if not batch:
                break
            self._in_flight += 1
            self.batches += 1
            self.items += len(batch)
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        futs = [f for _, f in batch]
        runner = asyncio.current_task()
        left = len(futs)

        def on_done(_: asyncio.Future) -> None:
            nonlocal left
            left -= 1
            if left == 0 and runner is not None and not runner.done():
                runner.cancel()  # every caller is answered or gone: stop waiting on the rest

        for f in futs:
            f.add_done_callback(on_done)
        try:
            async for group in self._send([item for item, _ in batch]):
                for i, ok, value in group:
                    f = futs[i]
                    if not f.done():
                        f.set_result(value) if ok else f.set_exception(AgentCallError(value))
        except asyncio.CancelledError:
            pass
        except Exception as e:  # the remote side died: everyone still waiting gets the error
            for f in futs:
                if not f.done():
                    f.set_exception(e)
        finally:
            for f in futs:
                if not f.done():
                    f.set_exception(AgentCallError("batch ended without an answer"))
            self._in_flight -= 1
            if self._queue and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._pump)


# --- the auctioneer ------------------------------------------------------------------------------
def budget_refused(rec: AuctionRecord) -> bool:
    """True if the auction produced nothing because money ran out (a rerun may retry it)."""
    return bool(rec.error and rec.error.startswith(BUDGET_REFUSED))


class Auctioneer:
    """Runs auctions for many tasks at once over one pool of agent handles.

    ``agents``: name -> handle (a batched Ray actor handle in production, a plain object in
    tests). ``prices``: name -> (price_in, price_out) in $/Mtok."""

    def __init__(
        self,
        agents: Mapping[str, Any],
        prices: Mapping[str, tuple[float, float]],
        config: SaleConfig,
        *,
        evaluate: Evaluator | None = None,
        refine: Refiner | None = None,
        memory: ContrastMemory | None = None,
    ) -> None:
        self.config = config
        s = config.auctioneer
        self.run_budget = Budget(s.budget_usd, "run")
        specs = {a.name: a for a in config.pool.agents}
        self.gates = {
            n: AgentGate(specs[n], prices[n][0], prices[n][1], self.run_budget) for n in agents
        }
        self.handles = {n: GatedAgent(h, self.gates[n], config) for n, h in agents.items()}
        self.prices_out = {n: prices[n][1] for n in agents}
        self.evaluate, self.refine = evaluate, refine
        self.remember: Callable[[Task, AuctionRecord], Awaitable[None]] | None = None
        if memory is not None:  # SALE with memory: refine through the gated handles, remember all
            refiner = MemoryRefiner(memory, self.handles, config)
            self.refine, self.remember = refine or refiner, refiner.remember
        self._slots = asyncio.Semaphore(s.max_in_flight)
        self._running: dict[str, asyncio.Future] = {}  # task id -> its auction (in flight)
        self._done: OrderedDict[str, AuctionRecord] = OrderedDict()  # finished, LRU-bounded
        self._forgotten: set[str] = set()  # ids whose record was evicted: still never re-run
        self.queued = 0
        self._committed = 0.0  # $ held for the auctions running (run budget only)
        self._holding = 0  # how many auctions hold some of it
        self.counts = {
            "admitted": 0,
            "finished": 0,
            "duplicates": 0,
            "refused": 0,
            "budget_refused": 0,
            "crashed": 0,
            "memory_write_failed": 0,
        }
        self.timings: deque[tuple[str, float, float]] = deque(maxlen=200_000)  # id, queue_s, run_s

    # -- admission ---------------------------------------------------------------------------
    def admission_refusal(self) -> str | None:
        """Why a new task would be refused now (None: it would be admitted)."""
        if self.run_budget.exhausted:
            return f"{BUDGET_REFUSED}: run budget ${self.run_budget.limit:.6g} spent or reserved"
        if all(g.exclusion() for g in self.gates.values()):
            return f"{BUDGET_REFUSED}: every agent is out of budget"
        if self.queued >= self.config.auctioneer.max_queued:
            return f"queue full ({self.queued} waiting)"
        return None

    async def submit(self, task: Task) -> AuctionRecord:
        """Auction ``task`` (or return the record of its earlier auction).

        Raises :class:`Overloaded` when the queue is full and
        :class:`~sale_ray.agents.quota.BudgetExhausted` when no money is left; in both cases
        the id is not remembered, so the same task may be submitted again later."""
        known = self._done.get(task.id)
        if known is not None:
            self.counts["duplicates"] += 1
            return known
        fut = self._running.get(task.id)
        if fut is None:
            if task.id in self._forgotten:
                self.counts["duplicates"] += 1
                return self._forgotten_record(task)
            why = self.admission_refusal()
            if why:
                self.counts["refused"] += 1
                raise (BudgetExhausted if why.startswith(BUDGET_REFUSED) else Overloaded)(why)
            # the auction is its own task: a caller that gives up does not cancel it, and a
            # second caller for the same id waits on the same future
            fut = asyncio.ensure_future(self._run(task))
            self._running[task.id] = fut
            self.counts["admitted"] += 1
        else:
            self.counts["duplicates"] += 1
        return await asyncio.shield(fut)

    async def _run(self, task: Task) -> AuctionRecord:
        t0 = time.perf_counter()
        self.queued += 1
        try:
            async with self._slots:
                self.queued -= 1
                est = await self._hold_money(task)
                t1 = time.perf_counter()
                try:
                    rec = await self._auction(task)
                finally:
                    if est:
                        self._holding -= 1
                        # a sum of floats never returns to exactly 0: reset when nobody holds
                        self._committed = self._committed - est if self._holding else 0.0
                        self.run_budget.notify()
                self.timings.append((task.id, t1 - t0, time.perf_counter() - t1))
        finally:
            self._running.pop(task.id, None)
        self.counts["finished"] += 1
        if budget_refused(rec):
            self.counts["budget_refused"] += 1  # not remembered: a later submit may run it
        else:
            self._remember(task.id, rec)
        return rec

    def auction_estimate(self, task: Task) -> float:
        """Pessimistic $ of one whole auction: every bid and verdict, the dearest execution."""
        n = len(self.gates)
        bid = sum(g.price(estimate_call("bid", task, self.config)) for g in self.gates.values())
        jury = (
            sum(g.price(estimate_call("judge", task, self.config, n)) for g in self.gates.values())
            if self.config.auction.jury
            else 0.0
        )
        exe = max(g.price(estimate_call("execute", task, self.config)) for g in self.gates.values())
        return bid + jury + exe

    async def _hold_money(self, task: Task) -> float:
        """With a run budget, start an auction only when the money not yet spent covers it and
        the auctions already running: otherwise many auctions would each pay for bids and the
        money would run out before their executions (bids paid for nothing). Waits while
        running auctions may still free room; returns the amount held."""
        b = self.run_budget
        if b.limit is None:
            return 0.0
        est = self.auction_estimate(task)
        while self._holding and b.spent + self._committed + est > b.limit:
            await b.wait_settled(1.0)
        self._committed += est
        self._holding += 1
        return est

    async def _auction(self, task: Task) -> AuctionRecord:
        aid = f"{task.id}#{uuid.uuid4().hex[:12]}"
        started = time.time()
        with metering() as meter:  # every gated call books its spend here as it settles
            try:
                rec = await run_auction(
                    task,
                    self.handles,
                    self.prices_out,
                    self.config,
                    evaluate=self.evaluate,
                    refine=self.refine,
                    auction_id=aid,
                )
            except Exception as e:  # a bug must cost one task, never the run: record it
                self.counts["crashed"] += 1
                # what its calls already cost stays on the record; resume runs it again
                return AuctionRecord(
                    auction_id=aid,
                    task_id=task.id,
                    kind=task.kind,
                    bin=task.bin,
                    error=f"auction crashed: {type(e).__name__}: {e}"[:500],
                    failure="retriable",
                    phase_usage=dict(meter.by_phase),
                    started_at=started,
                    evaluation=Evaluation(passed=False if task.tests or task.expected else None),
                )
        if rec.execution is None and _mentions_budget(rec):
            rec = rec.model_copy(
                update={
                    "error": f"{BUDGET_REFUSED}: {rec.error or ''}"[:500],
                    "failure": "retriable",
                }
            )
        if self.remember is not None:
            try:
                await self.remember(task, rec)
            except Exception:  # memory is an optimisation: losing one entry never loses the task
                self.counts["memory_write_failed"] += 1
        return rec

    def _remember(self, task_id: str, rec: AuctionRecord) -> None:
        self._done[task_id] = rec
        while len(self._done) > self.config.auctioneer.remember:
            old, _ = self._done.popitem(last=False)
            self._forgotten.add(old)  # an id is ~60 bytes: keep them all, records are bigger

    def _forgotten_record(self, task: Task) -> AuctionRecord:
        return AuctionRecord(
            auction_id=f"{task.id}#duplicate",
            task_id=task.id,
            kind=task.kind,
            bin=task.bin,
            error="duplicate task id: already auctioned (see the results log)",
            failure="final",
        )

    # -- many at once ------------------------------------------------------------------------
    async def stream(self, tasks: Sequence[Task]) -> AsyncIterator[dict[str, Any]]:
        """Submit ``tasks`` and yield ``{"records": [...], "refused": {id: reason}}`` groups as
        auctions finish. Refused tasks (queue full, no budget) were not run."""
        refused: dict[str, str] = {}
        futs: set[asyncio.Future] = set()

        async def one(t: Task) -> tuple[str, AuctionRecord | None, str | None]:
            try:
                return t.id, await self.submit(t), None
            except SaleRayError as e:  # refused at admission: not run, not remembered
                return t.id, None, str(e)

        for t in tasks:
            known = t.id in self._done or t.id in self._running
            why = None if known else self.admission_refusal()
            if why:
                refused[t.id] = why
                self.counts["refused"] += 1
            else:
                futs.add(asyncio.ensure_future(one(t)))
        if refused:
            yield {"records": [], "refused": refused}
        while futs:
            done, futs = await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
            recs, ref = [], {}
            for f in done:
                tid, rec, why = f.result()
                if rec is not None:
                    recs.append(rec)
                else:
                    ref[tid] = why
            yield {"records": recs, "refused": ref}

    def stats(self) -> dict[str, Any]:
        """Counters, money and per-agent refusals (for progress bars and benchmarks)."""
        return {
            **self.counts,
            "in_flight": len(self._running) - self.queued,
            "queued": self.queued,
            "spent_usd": self.run_budget.spent,
            "reserved_usd": self.run_budget.reserved,
            "largest_reservation_usd": self.run_budget.largest_reservation,
            "budget_usd": self.run_budget.limit,
            "agents": {
                n: {"spent_usd": g.budget.spent, "refused": dict(g.refused)}
                for n, g in self.gates.items()
            },
        }

    def take_timings(self) -> list[tuple[str, float, float]]:
        """(task id, queue seconds, auction seconds) of auctions finished since the last call."""
        out = list(self.timings)
        self.timings.clear()
        return out


def _mentions_budget(rec: AuctionRecord) -> bool:
    texts = [rec.error or ""] + [s.bid.rejected or "" for s in rec.bids]
    return any(BudgetExhausted.__name__ in t for t in texts)
