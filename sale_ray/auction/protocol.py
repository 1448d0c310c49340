"""One auction, as an async function over agent handles (SALE.md steps 1-9).

bid (parallel, deadline) -> jury (one call per juror, deadline) -> provisional winner ->
refinement by strictly cheaper agents (when a refiner is given) -> final winner -> execution ->
evaluation -> :class:`AuctionRecord`.

Handles are anything with async ``bid`` / ``judge`` / ``execute`` (and ``refine`` for the
refinement step): a plain :class:`~sale_ray.agents.agent.Agent` in tests, a Ray actor wrapper in
production (``runtime.ActorAgent``). A bid or verdict that errors, times out or is malformed is
*recorded*, never raised: one misbehaving model never ends an auction.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from ..config import AuctionConfig, SaleConfig
from ..types import AuctionRecord, Bid, Evaluation, Execution, JuryVerdict, ScoredBid, Task, Usage
from . import scoring
from .jury import juror_order


class AgentHandle(Protocol):
    async def bid(self, task: Task) -> Bid: ...
    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict: ...
    async def execute(self, task: Task, plan: str) -> Execution: ...


# (task, provisional winner, scored bids, eligible agents) -> refined bids and their verdicts
Refiner = Callable[
    [Task, ScoredBid, Sequence[ScoredBid], Sequence[str]],
    Awaitable[tuple[list[Bid], list[JuryVerdict]]],
]
Evaluator = Callable[[Task, str], Awaitable[Evaluation]]


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300] if str(e) else type(e).__name__


async def _bounded(coro: Awaitable[Any], timeout_s: float) -> Any:
    return await asyncio.wait_for(coro, timeout_s)


async def collect_bids(
    task: Task, agents: Mapping[str, AgentHandle], timeout_s: float
) -> list[Bid]:
    """Every agent bids in parallel; a late, failed or malformed bid is recorded as rejected."""
    names = list(agents)
    results = await asyncio.gather(
        *(_bounded(agents[n].bid(task), timeout_s) for n in names), return_exceptions=True
    )
    bids = []
    for n, r in zip(names, results, strict=True):
        if isinstance(r, Bid) and r.agent == n:
            bids.append(r)
        elif isinstance(r, TimeoutError):
            bids.append(Bid(agent=n, rejected=f"timeout: no bid within {timeout_s:g}s"))
        elif isinstance(r, BaseException):
            bids.append(Bid(agent=n, rejected=_describe(r)))
        else:
            bids.append(Bid(agent=n, rejected=f"malformed bid: {type(r).__name__}"))
    return bids


async def collect_verdicts(
    task: Task,
    jurors: Mapping[str, AgentHandle],
    bids: Sequence[Bid],
    timeout_s: float,
) -> list[JuryVerdict]:
    """Every juror scores all valid plans in one call; failures become abstentions."""
    plans = [(b.agent, b.plan) for b in bids if b.valid]
    names = list(jurors)
    results = await asyncio.gather(
        *(
            _bounded(jurors[n].judge(task, juror_order(plans, n, task.id)), timeout_s)
            for n in names
        ),
        return_exceptions=True,
    )
    out = []
    for n, r in zip(names, results, strict=True):
        if isinstance(r, JuryVerdict) and r.juror == n:
            out.append(r)
        elif isinstance(r, TimeoutError):
            out.append(JuryVerdict(juror=n, error=f"timeout: no verdict within {timeout_s:g}s"))
        else:
            out.append(
                JuryVerdict(
                    juror=n,
                    error=_describe(r)
                    if isinstance(r, BaseException)
                    else f"malformed verdict: {type(r).__name__}",
                )
            )
    return out


def _sum(usages: Sequence[Usage]) -> Usage:
    total = Usage()
    for u in usages:
        total = total + u
    return total


async def run_auction(
    task: Task,
    agents: Mapping[str, AgentHandle],
    prices: Mapping[str, float],
    config: SaleConfig,
    *,
    evaluate: Evaluator | None = None,
    refine: Refiner | None = None,
    auction_id: str | None = None,
) -> AuctionRecord:
    """Run one full auction for ``task`` and return its record (never raises for model faults).

    ``prices``: each agent's $/Mtok for completion tokens, used by the cost term and to decide
    who is cheaper. ``evaluate`` runs the task's verifier on the winner's answer.
    """
    cfg = config.auction
    aid = auction_id or uuid.uuid4().hex
    started = time.time()
    seconds: dict[str, float] = {}
    usage: dict[str, Usage] = {}
    rec: dict[str, Any] = {
        "auction_id": aid,
        "task_id": task.id,
        "kind": task.kind,
        "bin": task.bin,
        "started_at": started,
    }

    # 1. bids (a reserve agent does not bid: it plans only if it wins, see step 5)
    reserve = cfg.reserve_agent if cfg.reserve_agent in agents else None
    bidders = {n: h for n, h in agents.items() if n != reserve}
    t = time.perf_counter()
    bids = await collect_bids(task, bidders, cfg.bid_timeout_s)
    seconds["bid"], usage["bid"] = time.perf_counter() - t, _sum([b.usage for b in bids])
    valid = [b for b in bids if b.valid]

    # 2-3. jury, skipped when at most one valid bid remains (nothing to compare: save tokens)
    jury = agents if cfg.jurors is None else {n: agents[n] for n in cfg.jurors if n in agents}
    verdicts: list[JuryVerdict] = []
    if cfg.jury and jury and len(valid) > 1:
        t = time.perf_counter()
        verdicts = await collect_verdicts(task, jury, bids, cfg.jury_timeout_s)
        seconds["jury"], usage["jury"] = time.perf_counter() - t, _sum([v.usage for v in verdicts])
    scored = scoring.score_bids(bids, verdicts, prices, cfg.weights)

    # 5. provisional winner; the reserve wins when no bid scores at or below its constant
    provisional = scoring.pick_winner(scored, prices)
    if reserve and (provisional is None or provisional.score > cfg.reserve_score):
        rbid = await _reserve_bid(task, agents, reserve, cfg.reserve_score, cfg.bid_timeout_s)
        usage["bid"] = usage.get("bid", Usage()) + rbid.bid.usage
        scored = scored + [rbid]
        provisional = rbid if rbid.score is not None else provisional
    if provisional is None:
        return AuctionRecord(
            **rec,
            bids=scored,
            verdicts=verdicts,
            phase_usage=usage,
            phase_seconds=seconds,
            evaluation=Evaluation(
                passed=False if _verifiable(task) else None, detail="no valid bids"
            ),
            error="no valid bids",
            failure=_bid_failure(bids),
        )

    # 6-7. refinement by strictly cheaper agents, then the final winner
    final = provisional
    notes: list[str] = []
    eligible = scoring.refinement_eligible(provisional.bid.agent, prices)
    if refine is not None and eligible:
        t = time.perf_counter()
        try:
            new_bids, new_verdicts = await refine(task, provisional, scored, eligible)
        except Exception as e:  # memory down: the provisional winner stands, and we say so
            new_bids, new_verdicts = [], []
            notes.append(f"refinement skipped: {_describe(e)}")
        seconds["refine"] = time.perf_counter() - t
        usage["refine"] = _sum([b.usage for b in new_bids] + [v.usage for v in new_verdicts])
        jurors = [v.juror for v in verdicts]  # same jury, same scale as the original bids
        refined = scoring.score_bids(new_bids, new_verdicts, prices, cfg.weights, jurors)
        final = scoring.final_winner(provisional, refined, prices)
        scored = scored + refined
        verdicts = verdicts + new_verdicts

    # 8. execution: only the winner runs; if its actor dies, the next-ranked bid runs instead
    t = time.perf_counter()
    ranking = [final] + [s for s in scoring.rank(scored, prices) if s.bid.agent != final.bid.agent]
    execution, error = None, None
    for candidate in ranking[:2]:
        name = candidate.bid.agent
        try:
            execution = await asyncio.wait_for(
                agents[name].execute(task, candidate.bid.plan), cfg.execute_timeout_s
            )
            final = candidate
            break
        except TimeoutError:
            execution = Execution(agent=name, error=f"timeout after {cfg.execute_timeout_s:g}s")
            final = candidate
            break  # a slow model is not a dead one: do not pay for a second execution
        except Exception as e:  # actor died / unreachable: record and fall back once
            error = f"execution by {name} failed: {_describe(e)}"
    usage["execute"] = execution.usage if execution else Usage()

    # 8b. escalation: an answer its own examples do not confirm goes to a dearer agent, once
    if cfg.escalate_on_failed_check and execution is not None and not _confirmed(task, execution):
        bid, second, note = await _escalate(
            task, agents, cfg, final.bid.agent, reserve, scored, prices
        )
        notes.append(note)
        if bid is not None and bid not in scored:  # the reserve planned only now: pay its plan
            usage["bid"] = usage.get("bid", Usage()) + bid.bid.usage
            scored = scored + [bid]
        if bid is not None and second is not None:
            usage["execute"] = usage["execute"] + second.usage
            execution, final = second, bid
    seconds["execute"] = time.perf_counter() - t

    # 9. evaluation
    evaluation = Evaluation()
    if execution is not None and execution.error is None and evaluate is not None:
        t = time.perf_counter()
        evaluation = await evaluate(task, execution.answer)
        seconds["evaluate"] = time.perf_counter() - t
    elif _verifiable(task):
        evaluation = Evaluation(
            passed=False, detail=(execution.error if execution else error) or ""
        )

    return AuctionRecord(
        **rec,
        bids=scored,
        verdicts=verdicts,
        provisional_winner=provisional.bid.agent,
        winner=final.bid.agent if execution else None,
        execution=execution,
        evaluation=evaluation,
        phase_usage=usage,
        phase_seconds=seconds,
        error=error if execution is None else None,
        failure="retriable" if execution is None else None,  # no agent could execute: rerun
        notes=notes + ([error] if error and execution is not None else []),
    )


def _bid_failure(bids: Sequence[Bid]) -> str:
    """An auction without a valid bid: final when every model answered and its answer was
    unusable (it would be again), retriable when a call failed (timeout, quota, a dead actor)."""
    own = ("empty plan", "malformed")
    return "final" if all((b.rejected or "").startswith(own) for b in bids) else "retriable"


async def _reserve_bid(
    task: Task, agents: Mapping[str, AgentHandle], reserve: str, score: float, timeout_s: float
) -> ScoredBid:
    """The reserve agent's plan, made only now that it is needed, scored at its constant."""
    bid = (await collect_bids(task, {reserve: agents[reserve]}, timeout_s))[0]
    return ScoredBid(bid=bid, score=score if bid.valid else None)


async def _escalate(
    task: Task,
    agents: Mapping[str, AgentHandle],
    cfg: AuctionConfig,
    winner: str,
    reserve: str | None,
    scored: Sequence[ScoredBid],
    prices: Mapping[str, float],
) -> tuple[ScoredBid | None, Execution | None, str]:
    """(the escalation target's bid, its execution, a note for the record). The bid is a new
    one when the reserve had not planned yet; the execution is None when nobody could take
    over or the takeover failed (the first answer then stands)."""
    target = _escalation_target(winner, reserve, scored, prices)
    if target is None:
        return (
            None,
            None,
            f"{winner}'s answer failed the prompt's own examples; nobody dearer to ask",
        )
    bid = next((s for s in scored if s.bid.agent == target and s.score is not None), None)
    if bid is None:
        bid = await _reserve_bid(task, agents, target, cfg.reserve_score, cfg.bid_timeout_s)
    if bid.score is None:
        return bid, None, f"escalation to {target} failed: {bid.bid.rejected}"
    try:
        second = await asyncio.wait_for(
            agents[target].execute(task, bid.bid.plan), cfg.execute_timeout_s
        )
    except Exception as e:  # noqa: BLE001 - keep the first answer, say why
        return bid, None, f"escalation to {target} failed: {_describe(e)}"
    return (
        bid,
        second,
        f"escalated from {winner} to {target}: its answer failed the prompt's own examples",
    )


def _confirmed(task: Task, execution: Execution) -> bool:
    """Did the answer pass its own run of the prompt's examples? Non-code tasks have no such
    check, so they are never escalated."""
    if task.kind != "code":
        return True
    checks = execution.self_checks_passed
    return execution.error is None and bool(checks) and checks[-1]


def _escalation_target(
    winner: str, reserve: str | None, scored: Sequence[ScoredBid], prices: Mapping[str, float]
) -> str | None:
    """The reserve if there is one (and it did not just fail), else the best-ranked valid bid
    of a dearer agent."""
    if reserve is not None:
        return reserve if reserve != winner else None
    dearer = [s for s in scoring.rank(scored, prices) if prices[s.bid.agent] > prices[winner]]
    return dearer[0].bid.agent if dearer else None


def _verifiable(task: Task) -> bool:
    return bool(task.tests) if task.kind == "code" else task.expected is not None
