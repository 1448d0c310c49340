"""One auction, as an async function over agent handles (SALE.md steps 1-9).

bid (parallel, deadline) -> jury (one call per juror, deadline) -> provisional winner ->
refinement by strictly cheaper agents (when a refiner is given) -> final winner -> execution ->
evaluation -> :class:`AuctionRecord`. Every choice between those steps is made by
:mod:`.policy`, the same functions the offline evaluation replays on recorded cells.

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
from . import policy, scoring
from .jury import juror_order


class AgentHandle(Protocol):
    async def bid(self, task: Task) -> Bid: ...
    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict: ...
    async def execute(self, task: Task, plan: str) -> Execution: ...
    async def execute_direct(self, task: Task) -> Execution: ...  # ``bid: answer`` only


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
    pol = policy.Policy.from_config(cfg)  # every decision below is made by this policy
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

    if pol.bid == "answer":
        return await _answer_auction(task, agents, prices, cfg, pol, rec, evaluate, refine)

    # 1. bids (a reserve agent does not bid: it plans only if it wins, see step 5)
    reserve = policy.reserve_of(pol, list(agents))
    bidders = {n: agents[n] for n in policy.bidders(pol, list(agents))}
    t = time.perf_counter()
    bids = await collect_bids(task, bidders, cfg.bid_timeout_s)
    seconds["bid"], usage["bid"] = time.perf_counter() - t, _sum([b.usage for b in bids])

    # 1b. speculation: the favourite on bids alone executes while the jury and refinement
    # decide; the jury's wait then hides the execution's when the favourite wins
    guess = policy.favourite(bids, prices, pol)
    early = None
    if guess is not None:
        run = agents[guess.bid.agent].execute(task, guess.bid.plan)
        early = asyncio.ensure_future(_bounded(run, cfg.execute_timeout_s))
    try:
        # 2-3. jury, skipped when at most one valid bid remains (nothing to compare: save tokens)
        jury = {n: agents[n] for n in policy.jury_panel(pol, list(agents))}
        verdicts: list[JuryVerdict] = []
        if policy.jury_sits(pol, list(jury), sum(b.valid for b in bids)):
            t = time.perf_counter()
            verdicts = await collect_verdicts(task, jury, bids, cfg.jury_timeout_s)
            seconds["jury"], usage["jury"] = (
                time.perf_counter() - t,
                _sum([v.usage for v in verdicts]),
            )
        scored = scoring.score_bids(bids, verdicts, prices, pol.weights)

        # 5. provisional winner; the reserve wins when no bid scores at or below its constant
        rbid = None
        if policy.calls_reserve(scoring.pick_winner(scored, prices), pol, reserve):
            rbid = await _reserve_bid(task, agents, reserve, pol, cfg.bid_timeout_s)
            usage["bid"] = usage.get("bid", Usage()) + rbid.bid.usage
        provisional = policy.pick_provisional(scored, prices, pol, rbid).bid
        scored = scored + ([rbid] if rbid is not None else [])
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
        eligible = policy.refiners(provisional.bid.agent, prices)
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
            refined = scoring.score_bids(new_bids, new_verdicts, prices, pol.weights, jurors)
            final = policy.pick_final(provisional, refined, prices).bid or provisional
            scored = scored + refined
            verdicts = verdicts + new_verdicts

        # 8. execution: only the winner runs; if its actor dies, the next-ranked bid runs instead
        t = time.perf_counter()
        execution, error = None, None
        for candidate in policy.execution_order(final, scored, prices):
            name = candidate.bid.agent
            try:
                if early is not None and policy.speculation_holds(guess, candidate):
                    pending, early = early, None  # started while the jury sat
                    execution = await pending
                    notes.append(f"speculative execution by {name} kept")
                else:
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
        if policy.escalates(pol, task.kind, execution):
            bid, second, note = await _escalate(
                task, agents, pol, cfg, final.bid.agent, scored, prices
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
        evaluation = await _evaluate(task, execution, evaluate, seconds, error)

        # the favourite lost: its execution ran on beside the winner's, and is paid (settled
        # last, so it delays nobody's answer more than it must)
        speculation = None
        if early is not None:
            speculation, note = await _settle(early, guess.bid.agent)
            early = None
            notes.append(note)
            if speculation is not None:
                usage["execute"] = usage.get("execute", Usage()) + speculation.usage

        return AuctionRecord(
            **rec,
            bids=scored,
            verdicts=verdicts,
            provisional_winner=provisional.bid.agent,
            winner=final.bid.agent if execution else None,
            execution=execution,
            speculation=speculation,
            evaluation=evaluation,
            phase_usage=usage,
            phase_seconds=seconds,
            error=error if execution is None else None,
            failure="retriable" if execution is None else None,  # no agent could execute: rerun
            notes=notes + ([error] if error and execution is not None else []),
        )
    finally:
        if early is not None:  # the auction ended before it settled (cancelled, crashed)
            early.cancel()


async def _settle(early: asyncio.Future, agent: str) -> tuple[Execution | None, str]:
    """Wait for a speculative execution that lost (its cost is real), and say so."""
    try:
        ex = await early
    except Exception as e:  # noqa: BLE001 - its failure is only a note: the winner's answer stands
        return None, f"speculative execution by {agent} failed: {_describe(e)}"
    return ex, f"speculative execution by {agent} discarded: another bid won"


def _bid_failure(bids: Sequence[Bid]) -> str:
    """An auction without a valid bid: final when every model answered and its answer was
    unusable (it would be again), retriable when a call failed (timeout, quota, a dead actor)."""
    own = ("empty plan", "malformed")
    return "final" if all((b.rejected or "").startswith(own) for b in bids) else "retriable"


async def _reserve_bid(
    task: Task,
    agents: Mapping[str, AgentHandle],
    reserve: str,
    pol: policy.Policy,
    timeout_s: float,
) -> ScoredBid:
    """The reserve agent's plan, made only now that it is needed, scored at its constant."""
    bid = (await collect_bids(task, {reserve: agents[reserve]}, timeout_s))[0]
    return policy.score_reserve(bid, pol)


async def _escalate(
    task: Task,
    agents: Mapping[str, AgentHandle],
    pol: policy.Policy,
    cfg: AuctionConfig,
    winner: str,
    scored: Sequence[ScoredBid],
    prices: Mapping[str, float],
) -> tuple[ScoredBid | None, Execution | None, str]:
    """(the escalation target's bid, its execution, a note for the record). The bid is a new
    one when the reserve had not planned yet; the execution is None when nobody could take
    over or the takeover failed (the first answer then stands)."""
    reserve = policy.reserve_of(pol, list(agents))
    target = policy.escalation_target(winner, reserve, scored, prices)
    if target is None:
        return None, None, policy.escalation_note(winner, None)
    bid = next((s for s in scored if s.bid.agent == target and s.score is not None), None)
    if bid is None:
        bid = await _reserve_bid(task, agents, target, pol, cfg.bid_timeout_s)
    if bid.score is None:
        return bid, None, policy.escalation_note(winner, target, bid.bid.rejected)
    try:
        second = await asyncio.wait_for(
            agents[target].execute(task, bid.bid.plan), cfg.execute_timeout_s
        )
    except Exception as e:  # noqa: BLE001 - keep the first answer, say why
        return bid, None, policy.escalation_note(winner, target, _describe(e))
    return bid, second, policy.escalation_note(winner, target)


async def _answer_auction(
    task: Task,
    agents: Mapping[str, AgentHandle],
    prices: Mapping[str, float],
    cfg: AuctionConfig,
    pol: policy.Policy,
    rec: dict[str, Any],
    evaluate: Evaluator | None,
    refine: Refiner | None = None,
) -> AuctionRecord:
    """``bid: answer``: each bid is the agent's direct answer, asked cheapest first; the first
    answer worth ``accept_value`` wins and stands as the execution (it is not redone), so a
    dearer agent is paid only while the outcome is open. No jury, no refinement, no plan.
    With ``answer_memory_k``, outcome memory of similar past auctions (``refine.recall``)
    moves each answer's value, and the verifier judges every answer so memory learns each
    agent's outcome."""
    from ..evaluators.code import prompt_examples

    has_examples = task.kind == "code" and prompt_examples(task) is not None
    notes: list[str] = []
    evidence = await _recall(task, pol, refine, notes)
    ladder = policy.answer_ladder(pol, list(agents), prices, task.kind, has_examples, evidence)
    answers: dict[str, Execution] = {}
    values: dict[str, float] = {}
    bids: list[ScoredBid] = []
    t = time.perf_counter()
    for name in ladder:
        limit = cfg.execute_timeout_s
        if cfg.deadline_s is not None:  # the auction as a whole: the first call gets it all
            left = cfg.deadline_s - (time.perf_counter() - t)
            if answers and left <= 0:
                notes.append(f"deadline of {cfg.deadline_s:g}s passed: {name} not asked")
                break
            limit = min(limit, max(left, 0.0) if answers else cfg.deadline_s)
        try:
            ex = await asyncio.wait_for(agents[name].execute_direct(task), limit)
        except TimeoutError:
            ex = Execution(agent=name, error=f"timeout after {limit:g}s")
        except Exception as e:  # noqa: BLE001 - a dead or failing agent is a failed answer
            ex = Execution(agent=name, error=_describe(e))
        state = policy.check_state(pol, task.kind, ex, has_examples)
        value = policy.answer_value(pol, name, state, task.kind, evidence)
        answers[name], values[name] = ex, value
        bid = Bid(
            agent=name,
            plan=ex.answer,
            entropy=ex.entropy,
            usage=ex.usage,
            rejected=ex.error,
        )
        score = None if ex.error else -values[name]  # lower wins, as C - V does
        bids.append(ScoredBid(bid=bid, cost=ex.usage.cost_usd, value=values[name], score=score))
        if policy.accepts(pol, values[name]):
            break
    winner = next((n for n in values if policy.accepts(pol, values[n])), None)
    errored = [n for n, a in answers.items() if a.error is not None]
    winner = winner or policy.pick_answer(values, prices, errored)
    seconds = {"execute": time.perf_counter() - t}
    execution = answers[winner] if winner is not None else None
    # every answer but the winner's was a bid that lost; the winner's is the execution
    usage = {
        "bid": _sum([a.usage for n, a in answers.items() if n != winner]),
        "execute": execution.usage if execution is not None else Usage(),
    }
    evaluation = await _evaluate(task, execution, evaluate, seconds)
    if pol.memory_k and evaluate is not None:  # memory learns every agent's outcome
        bids = await _judge_all(task, bids, winner, evaluation, evaluate, seconds)
    notes = [f"{n}: answer worth {v:.2f}" for n, v in values.items()] + notes
    return AuctionRecord(
        **rec,
        bids=bids,
        provisional_winner=winner,
        winner=winner if execution is not None else None,
        execution=execution,
        evaluation=evaluation,
        phase_usage=usage,
        phase_seconds=seconds,
        error="no agent answered" if execution is None else None,
        failure="retriable" if execution is None else None,  # nobody was asked: rerun
        notes=notes,
    )


async def _recall(
    task: Task, pol: policy.Policy, refine: Refiner | None, notes: list[str]
) -> policy.Evidence | None:
    """Outcome memory for ``bid: answer``: what the ``memory_k`` most similar past auctions
    say of each agent. Memory off, absent, or failing: None (the trust figures alone), with a
    note when it failed — a memory fault must not fail the auction."""
    recall = getattr(refine, "recall", None)
    if not pol.memory_k or recall is None:
        return None
    try:
        return policy.memory_evidence(await recall(task, pol.memory_k))
    except Exception as e:  # noqa: BLE001 - without memory the auction still decides
        notes.append(f"outcome memory unavailable: {_describe(e)}")
        return None


async def _judge_all(
    task: Task,
    bids: list[ScoredBid],
    winner: str | None,
    evaluation: Evaluation,
    evaluate: Evaluator,
    seconds: dict[str, float],
) -> list[ScoredBid]:
    """Every answer's verdict on its bid (the winner's is ``evaluation``), so memory records
    how each agent did; a verifier that fails on a lost answer leaves it unjudged."""
    t = time.perf_counter()
    lost = [b for b in bids if b.bid.agent != winner and b.bid.rejected is None]
    got = await asyncio.gather(*(evaluate(task, b.bid.plan) for b in lost), return_exceptions=True)
    verdict = {
        b.bid.agent: r.passed for b, r in zip(lost, got, strict=True) if isinstance(r, Evaluation)
    }
    if winner is not None:
        verdict[winner] = evaluation.passed
    seconds["evaluate"] = seconds.get("evaluate", 0.0) + time.perf_counter() - t
    return [b.model_copy(update={"passed": verdict.get(b.bid.agent)}) for b in bids]


async def _evaluate(
    task: Task,
    execution: Execution | None,
    evaluate: Evaluator | None,
    seconds: dict[str, float],
    error: str | None = None,
) -> Evaluation:
    """SALE step 9: the task's verifier on the answer (its seconds into ``seconds``); an
    answer that never came fails a verifiable task, with why."""
    if execution is not None and execution.error is None and evaluate is not None:
        t = time.perf_counter()
        evaluation = await evaluate(task, execution.answer)
        seconds["evaluate"] = time.perf_counter() - t
        return evaluation
    if _verifiable(task):
        return Evaluation(passed=False, detail=(execution.error if execution else error) or "")
    return Evaluation()


def _verifiable(task: Task) -> bool:
    return bool(task.tests) if task.kind == "code" else task.expected is not None
