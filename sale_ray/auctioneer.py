"""The auctioneer: admission, many auctions in flight, idempotent task ids, every agent's gate.

Pure asyncio, no Ray (``runtime`` hosts it in an actor, the service's one auctioneer).
:class:`Auctioneer` admits tasks into a bounded queue, runs up to ``max_in_flight`` auctions at
once through :func:`~sale_ray.auction.protocol.run_auction`, and remembers every task id: a
resubmitted id gets the first auction's record back, never a second award. Each agent is
wrapped in a :class:`~sale_ray.agents.quota.GatedAgent`, so concurrency, RPM / TPM and budgets
hold across all auctions and all callers; tenants' rates and budgets are held here too
(:mod:`sale_ray.tenants`). Every settled record — finished, failed, crashed or cancelled — goes
to ``on_record`` (the service's log and tracing).

Its neighbours: :mod:`sale_ray.batching` (the micro-batched wire to agent actors),
:mod:`sale_ray.online` (streamed auctions, passthrough and single agent calls, mixed in here),
:mod:`sale_ray.admission` (:class:`Job` and the refusal types).
"""

from __future__ import annotations

import asyncio
import pickle
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from .admission import BUDGET_REFUSED, Job, Overloaded, UnknownName
from .agents.quota import AgentGate, Budget, BudgetExhausted, GatedAgent, estimate_call
from .auction.meter import metering
from .auction.protocol import Evaluator, Refiner, run_auction
from .auction.refinement import ContrastMemory, MemoryRefiner
from .batching import AgentCallError, Group, MicroBatcher, serve_batch
from .config import SaleConfig
from .errors import SaleRayError
from .online import AGENT_METHODS, OnlineCalls
from .tenants import TenantGate, TenantLimits
from .types import AuctionRecord, Evaluation, Task, Usage

# re-exported: where callers found them before the split
__all__ = [
    "AGENT_METHODS",
    "AgentCallError",
    "Auctioneer",
    "BUDGET_REFUSED",
    "Group",
    "Job",
    "MicroBatcher",
    "Overloaded",
    "UnknownName",
    "budget_refused",
    "serve_batch",
]

RecordHook = Callable[[AuctionRecord, str], None]


# --- the auctioneer ------------------------------------------------------------------------------
def budget_refused(rec: AuctionRecord) -> bool:
    """True if the auction produced nothing because money ran out (a rerun may retry it)."""
    return bool(rec.error and rec.error.startswith(BUDGET_REFUSED))


class KeptRecords:
    """Finished records by task id, oldest first, each kept as one pickled ``bytes``.

    A long-lived service keeps ``auctioneer.remember`` (200,000) records for idempotency. As
    objects, each is ~64 objects the garbage collector walks on every full pass, and the
    service slows as it ages (measured: 461 → 270 auctions/s over 16,000 auctions in process);
    as bytes each is one untracked object, and smaller. A duplicate submit — rare — unpickles."""

    def __init__(self) -> None:
        self._data: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._data

    def put(self, task_id: str, rec: AuctionRecord) -> None:
        self._data[task_id] = pickle.dumps(rec, protocol=pickle.HIGHEST_PROTOCOL)

    def get(self, task_id: str | None) -> AuctionRecord | None:
        raw = self._data.get(task_id) if task_id is not None else None
        return None if raw is None else pickle.loads(raw)

    def pop_oldest(self) -> str:
        return self._data.popitem(last=False)[0]


class Auctioneer(OnlineCalls):
    """Runs auctions for many tasks at once over one pool of agent handles.

    ``agents``: name -> handle (a batched Ray actor handle in production, a plain object in
    tests). ``prices``: name -> (price_in, price_out) in $/Mtok. ``policies``: model name ->
    the config a ``policy=`` submit runs (``sale:lean``, ...; one pool and one set of limits
    serve them all). ``on_record`` sees every record as it settles — finished, failed, crashed
    or cancelled — with its tenant (the service's log writer and tracing)."""

    def __init__(
        self,
        agents: Mapping[str, Any],
        prices: Mapping[str, tuple[float, float]],
        config: SaleConfig,
        *,
        evaluate: Evaluator | None = None,
        refine: Refiner | None = None,
        memory: ContrastMemory | None = None,
        policies: Mapping[str, SaleConfig] | None = None,
        on_record: RecordHook | None = None,
    ) -> None:
        self.config = config
        self.policies = dict(policies or {})
        self.on_record = on_record
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
        self._done = KeptRecords()  # finished, LRU-bounded, stored compactly
        self._forgotten: set[str] = set()  # ids whose record was evicted: still never re-run
        self._by_auction: OrderedDict[str, str] = OrderedDict()  # auction id -> task id
        self._waiters: dict[str, int] = {}  # task id -> callers awaiting its auction
        self.tenant_gates: dict[str, TenantGate] = {}
        self._tenant_holds: dict[str, tuple[TenantGate, float]] = {}  # task id -> reservation
        self.tenant_spent: dict[str, float] = {}
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
            "cancelled": 0,
            "memory_write_failed": 0,
            "record_hook_failed": 0,
            "passthrough": 0,
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

    def job(
        self,
        policy: str | None = None,
        *,
        evaluate: bool = True,
        tenant: str = "none",
        handles: Mapping[str, Any] | None = None,
        limits: TenantLimits | None = None,
    ) -> Job:
        """The :class:`Job` of a submit: ``policy`` None runs the service's own config."""
        if policy is None:
            cfg = self.config
        elif policy in self.policies:
            cfg = self.policies[policy]
        else:
            raise UnknownName(f"unknown policy {policy!r}; known: {sorted(self.policies)}")
        return Job(
            cfg,
            uuid.uuid4().hex,
            evaluate=evaluate,
            tenant=tenant,
            handles=handles,
            limits=limits,
        )

    async def submit(
        self,
        task: Task,
        *,
        policy: str | None = None,
        evaluate: bool = True,
        tenant: str = "none",
        limits: TenantLimits | None = None,
    ) -> AuctionRecord:
        """Auction ``task`` (or return the record of its earlier auction: a retried id spends
        nothing twice). ``evaluate``: run the task's verifier (chat requests have none).
        ``limits``: the tenant's rate and budget, held here for every door and replica.

        Raises :class:`Overloaded` when the queue is full and
        :class:`~sale_ray.agents.quota.BudgetExhausted` when no money is left; in both cases
        the id is not remembered, so the same task may be submitted again later."""
        job = self.job(policy, evaluate=evaluate, tenant=tenant, limits=limits)
        return await self._submit(task, job)

    async def _submit(self, task: Task, job: Job) -> AuctionRecord:
        known = self._done.get(task.id)
        if known is not None:
            self.counts["duplicates"] += 1
            return known
        fut = self._running.get(task.id)
        if fut is None:
            if task.id in self._forgotten:
                self.counts["duplicates"] += 1
                return self._forgotten_record(task)
            # the auction is its own task: a caller that gives up does not cancel it, and a
            # second caller for the same id waits on the same future
            fut = self._start(task, job)
        else:
            self.counts["duplicates"] += 1
        # the auction is shared by every caller of its id; when the last one gives up (a
        # client gone, a deadline) nobody waits for it any more: stop it and its spending
        self._waiters[task.id] = self._waiters.get(task.id, 0) + 1
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if self._waiters.get(task.id) == 1 and not fut.done():
                fut.cancel()
            raise
        finally:
            left = self._waiters.pop(task.id, 1) - 1
            if left:
                self._waiters[task.id] = left

    def _start(self, task: Task, job: Job) -> asyncio.Future:
        """Admit ``task`` (queue, run budget, the tenant's limits) and start its auction; raises
        :class:`Overloaded` / ``BudgetExhausted`` / a tenant refusal with nothing started."""
        why = self.admission_refusal()
        if why:
            self.counts["refused"] += 1
            raise (BudgetExhausted if why.startswith(BUDGET_REFUSED) else Overloaded)(why)
        self._admit_tenant(task, job)
        fut = asyncio.ensure_future(self._run(task, job))
        self._running[task.id] = fut
        self.counts["admitted"] += 1
        return fut

    def _tenant(self, name: str, limits: TenantLimits | None) -> TenantGate | None:
        if limits is None or limits == TenantLimits():
            return None
        gate = self.tenant_gates.get(name)
        if gate is None:
            gate = self.tenant_gates[name] = TenantGate(name, limits)
            gate.budget.spent = self.tenant_spent.get(name, 0.0)  # continued from the ledger
        else:
            gate.update(limits)
        return gate

    def _admit_tenant(self, task: Task, job: Job) -> None:
        """Take the tenant's token and reserve the auction's estimate (raises when over)."""
        gate = self._tenant(job.tenant, job.limits)
        if gate is not None:
            try:
                held = gate.admit(self.auction_estimate(task))
            except SaleRayError:
                self.counts["refused"] += 1
                raise
            self._tenant_holds[task.id] = (gate, held)

    def _release_tenant(self, task_id: str, cost_usd: float) -> None:
        hold = self._tenant_holds.pop(task_id, None)
        if hold is not None:
            hold[0].settle(hold[1], cost_usd)

    async def _run(self, task: Task, job: Job) -> AuctionRecord:
        t0 = time.perf_counter()
        self.queued += 1
        try:
            async with self._slots:
                self.queued -= 1
                est = await self._hold_money(task)
                t1 = time.perf_counter()
                try:
                    rec = await self._auction(task, job)
                finally:
                    if est:
                        self._holding -= 1
                        # a sum of floats never returns to exactly 0: reset when nobody holds
                        self._committed = self._committed - est if self._holding else 0.0
                        self.run_budget.notify()
                self.timings.append((task.id, t1 - t0, time.perf_counter() - t1))
        finally:
            self._running.pop(task.id, None)
            self._release_tenant(task.id, 0.0)  # never ran (cancelled while queued): nothing
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

    async def _auction(self, task: Task, job: Job) -> AuctionRecord:
        aid = job.auction_id
        started = time.time()

        def failed(error: str) -> AuctionRecord:
            # what its calls already cost stays on the record; resume runs it again
            return AuctionRecord(
                auction_id=aid,
                task_id=task.id,
                kind=task.kind,
                bin=task.bin,
                error=error[:500],
                failure="retriable",
                phase_usage=dict(meter.by_phase),
                started_at=started,
                evaluation=Evaluation(passed=False if task.tests or task.expected else None),
            )

        with metering() as meter:  # every gated call books its spend here as it settles
            try:
                rec = await run_auction(
                    task,
                    job.handles or self.handles,
                    self.prices_out,
                    job.config,
                    evaluate=self.evaluate if job.evaluate else None,
                    refine=self.refine,
                    auction_id=aid,
                )
            except asyncio.CancelledError:  # the caller left or its deadline passed
                self.counts["cancelled"] += 1
                self._settled(failed("auction cancelled before it finished"), job.tenant)
                raise
            except Exception as e:  # a bug must cost one task, never the run: record it
                self.counts["crashed"] += 1
                return self._settled(
                    failed(f"auction crashed: {type(e).__name__}: {e}"), job.tenant
                )
        if meter.unreported:  # calls that raised were charged: the record must say so
            rec = _with_unreported(rec, meter.unreported)
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
        return self._settled(rec, job.tenant)

    def _settled(self, rec: AuctionRecord, tenant: str) -> AuctionRecord:
        """Book a record's spend on its tenant and hand it to the log (never raises)."""
        if tenant != "none":
            rec = rec.model_copy(update={"tenant": tenant})
        self._release_tenant(rec.task_id, rec.cost_usd)
        if rec.cost_usd:
            self.tenant_spent[tenant] = self.tenant_spent.get(tenant, 0.0) + rec.cost_usd
        if self.on_record is not None:
            try:
                self.on_record(rec, tenant)
            except Exception:  # the log is the hook's job to keep; the auction is done
                self.counts["record_hook_failed"] += 1
        return rec

    def _remember(self, task_id: str, rec: AuctionRecord) -> None:
        self._done.put(task_id, rec)
        self._by_auction[rec.auction_id] = task_id
        while len(self._done) > self.config.auctioneer.remember:
            old = self._done.pop_oldest()
            self._forgotten.add(old)  # an id is ~60 bytes: keep them all, records are bigger
        while len(self._by_auction) > self.config.auctioneer.remember:
            self._by_auction.popitem(last=False)

    def record(self, auction_id: str) -> AuctionRecord | None:
        """The record of a recent auction by its auction id (None when not kept in memory)."""
        tid = self._by_auction.get(auction_id)
        rec = self._done.get(tid) if tid is not None else None
        return rec if rec is not None and rec.auction_id == auction_id else None

    # -- the ledger's view ---------------------------------------------------------------------
    def spent(self) -> dict[str, Any]:
        """What every budget has spent: ``{"run": $, "agents": {name: $}, "tenants": {...}}``."""
        return {
            "run": self.run_budget.spent,
            "agents": {n: g.budget.spent for n, g in self.gates.items()},
            "tenants": dict(self.tenant_spent),
        }

    def restore_spent(self, run: float, agents: Mapping[str, float], tenants: Mapping) -> None:
        """Continue from a ledger: budgets start where they stopped, not at $0."""
        self.run_budget.spent = float(run)
        for n, usd in agents.items():
            if n in self.gates:
                self.gates[n].budget.spent = float(usd)
        self.tenant_spent = {str(k): float(v) for k, v in tenants.items()}

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
                return t.id, await self._submit(t, self.job()), None
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
            "tenants": dict(self.tenant_spent),
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


def _with_unreported(rec: AuctionRecord, unreported: Mapping[str, Usage]) -> AuctionRecord:
    usage = dict(rec.phase_usage)
    for phase, u in unreported.items():
        usage[phase] = usage.get(phase, Usage()) + u
    n, usd = sum(u.calls for u in unreported.values()), sum(u.cost_usd for u in unreported.values())
    note = f"{n} failed call(s) charged at their reservation (${usd:.6g})"
    return rec.model_copy(update={"phase_usage": usage, "notes": [*rec.notes, note]})


def _mentions_budget(rec: AuctionRecord) -> bool:
    texts = [rec.error or ""] + [s.bid.rejected or "" for s in rec.bids]
    return any(BudgetExhausted.__name__ in t for t in texts)
