"""The auction's decisions, pure: the one module the live auction and the evaluation both call.

A policy is the settings of ``config.POLICY_FIELDS`` (weights, jury, reserve agent and score,
jurors, escalation on a failed check). Each decision point of an auction is one function here,
given only what is known at that point:

* who bids (SALE.md step 1; the reserve does not): :func:`bidders`, :func:`reserve_of`;
* who judges, and whether the jury sits (step 3): :func:`jury_panel`, :func:`jury_sits`;
* is the reserve called (lean policies): :func:`calls_reserve`, :func:`score_reserve`;
* the provisional winner (step 5): :func:`pick_provisional`;
* whose execution starts before the jury has spoken (``speculate``): :func:`favourite`,
  :func:`speculation_holds`;
* who may refine (step 6): :func:`refiners`;
* the final winner (step 7): :func:`pick_final`;
* who runs if the winner's actor dies (step 8, a fault: live only): :func:`execution_order`;
* escalation after the answer's own example check (lean_verify): :func:`escalates`,
  :func:`escalation_target`, :func:`escalation_note`;
* ``bid: answer`` — the bid is the agent's direct answer: who is asked, in which order
  (:func:`answer_ladder`), what an answer is worth (:func:`check_state`, :func:`answer_value`),
  whether it wins at once (:func:`accepts`), and who wins when nobody did (:func:`pick_answer`);
  outcome memory of the most similar past tasks moves that value (:func:`memory_evidence`);
  :func:`replay_answers` replays them on recorded direct answers.

The live auction (:mod:`.protocol`) calls them between its model calls; the evaluation replays
them on recorded cells with :func:`replay` (every bid, every verdict and every agent's own
execution already known), so a simulated decision is the live one by construction. The C - V
arithmetic itself is :mod:`.scoring`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..config import AnswerTrust, AuctionConfig, Weights
from ..types import Bid, Execution, JuryVerdict, ScoredBid
from . import scoring


@dataclass(frozen=True)
class Policy:
    """How an auction decides: the ``AuctionConfig`` fields of ``config.POLICY_FIELDS``."""

    weights: Weights
    jurors: tuple[str, ...] | None = None  # None: every agent judges
    reserve: str | None = None  # an agent that does not bid and wins when no bid beats...
    reserve_score: float = 0.0  # ...this C - V
    verify: bool = False  # a winner whose own example check fails escalates (to the reserve)
    jury: bool = True  # False: nobody judges, value is entropy only
    speculate: bool = False  # the favourite executes while the jury and refinement decide
    bid: str = "plan"  # "answer": bids are direct answers, asked cheapest first
    answer_agents: tuple[str, ...] | None = None  # the ladder (None: every agent)
    answer_trust: Mapping[str, AnswerTrust] | None = None
    accept_value: float = 0.8
    memory_k: int = 0  # bid: answer: past auctions whose outcomes move an answer's value

    @classmethod
    def from_config(cls, auction: AuctionConfig) -> Policy:
        """The policy an ``auction:`` config section runs."""
        return cls(
            weights=auction.weights,
            jurors=None if auction.jurors is None else tuple(auction.jurors),
            reserve=auction.reserve_agent,
            reserve_score=auction.reserve_score,
            verify=auction.escalate_on_failed_check,
            jury=auction.jury,
            speculate=auction.speculate,
            bid=auction.bid,
            answer_agents=None if auction.answer_agents is None else tuple(auction.answer_agents),
            answer_trust=dict(auction.answer_trust),
            accept_value=auction.accept_value,
            memory_k=auction.answer_memory_k,
        )

    def trust(self, agent: str, kind: str) -> AnswerTrust:
        """How far ``agent``'s direct answer to a ``kind`` task is trusted (the defaults when
        not fitted)."""
        return ((self.answer_trust or {}).get(agent) or _UNFITTED).for_kind(kind)

    def asked(self) -> Policy:
        """The same decisions without the jurors whose weight is 0: they earn nothing (their
        score adds 0 to C - V either way), so the live config leaves them out and saves their
        tokens."""
        if self.jurors is None:
            return self
        keep = tuple(j for j in self.jurors if abs(self.weights.juror_weight(j)) > 1e-12)
        return replace(self, jurors=keep)


_UNFITTED = AnswerTrust()


@dataclass(frozen=True)
class Pick:
    """A winner chosen at one decision point (``None``: nobody) and why, in a few words."""

    bid: ScoredBid | None
    reason: str

    @property
    def agent(self) -> str | None:
        return self.bid.bid.agent if self.bid is not None else None


# --- 1-3. who bids, who judges --------------------------------------------------------------
def reserve_of(policy: Policy, pool: Collection[str]) -> str | None:
    """The reserve agent, if the policy names one that is in the pool."""
    return policy.reserve if policy.reserve in pool else None


def bidders(policy: Policy, pool: Sequence[str]) -> list[str]:
    """Everyone in the pool bids except the reserve (it plans only if it wins), pool order."""
    reserve = reserve_of(policy, pool)
    return [n for n in pool if n != reserve]


def jury_panel(policy: Policy, pool: Sequence[str]) -> list[str]:
    """The jurors asked: the policy's list (those in the pool, its order), else every agent."""
    if policy.jurors is None:
        return list(pool)
    return [j for j in policy.jurors if j in pool]


def worth_judging(valid_bids: int) -> bool:
    """A jury compares plans: with one valid bid or none there is nothing to compare."""
    return valid_bids > 1


def jury_sits(policy: Policy, panel: Sequence[str], valid_bids: int) -> bool:
    """Whether the jury is called: it is on, someone is on it, and two or more bids compete."""
    return policy.jury and bool(panel) and worth_judging(valid_bids)


# --- 5. the provisional winner and the reserve ----------------------------------------------
def calls_reserve(best: ScoredBid | None, policy: Policy, reserve: str | None) -> bool:
    """The reserve is asked to plan when no bid scores at or below its constant C - V."""
    if reserve is None:
        return False
    return best is None or best.score is None or best.score > policy.reserve_score


def score_reserve(bid: Bid, policy: Policy) -> ScoredBid:
    """The reserve's plan, scored at the policy's constant (a rejected plan scores nothing)."""
    return ScoredBid(bid=bid, score=policy.reserve_score if bid.valid else None)


def pick_provisional(
    scored: Sequence[ScoredBid],
    prices: Mapping[str, float],
    policy: Policy,
    reserve_bid: ScoredBid | None = None,
) -> Pick:
    """SALE step 5: the lowest C - V among the bids; ``reserve_bid`` (given only when
    :func:`calls_reserve` said so) takes over unless its plan was rejected."""
    best = scoring.pick_winner(scored, prices)
    if reserve_bid is not None:
        if reserve_bid.score is not None:
            return Pick(reserve_bid, f"reserve: no bid scored at or below {policy.reserve_score:g}")
        if best is None:
            return Pick(None, "no valid bids (the reserve's plan was rejected too)")
        return Pick(best, "lowest C - V; the reserve's plan was rejected")
    if best is None:
        return Pick(None, "no valid bids")
    return Pick(best, "lowest C - V")


# --- speculation: the favourite executes while the jury decides ----------------------------
def favourite(bids: Sequence[Bid], prices: Mapping[str, float], policy: Policy) -> ScoredBid | None:
    """The bid that wins on what is known once the bids are in (entropy and price, no
    verdicts): the execution worth starting early. None when the policy does not speculate or
    no bid is valid."""
    if not policy.speculate:
        return None
    return scoring.pick_winner(scoring.score_bids(bids, [], prices, policy.weights), prices)


def speculation_holds(guess: ScoredBid, winner: ScoredBid) -> bool:
    """The early execution answers for the winner: same agent, same plan."""
    return guess.bid.agent == winner.bid.agent and guess.bid.plan == winner.bid.plan


# --- 6-7. refinement and the final winner ---------------------------------------------------
def refiners(provisional: str, prices: Mapping[str, float]) -> list[str]:
    """SALE step 6: who may refine — agents strictly cheaper than the provisional winner."""
    return scoring.refinement_eligible(provisional, prices)


def pick_final(
    provisional: ScoredBid, refined: Sequence[ScoredBid], prices: Mapping[str, float]
) -> Pick:
    """SALE step 7: the best refined bid if its C - V beats the provisional winner's."""
    final = scoring.final_winner(provisional, refined, prices)
    if final is provisional:
        return Pick(final, "the provisional winner stands")
    return Pick(final, f"a refined bid beats {provisional.bid.agent}'s")


def execution_order(
    final: ScoredBid, scored: Sequence[ScoredBid], prices: Mapping[str, float]
) -> list[ScoredBid]:
    """Who executes: the final winner, and once, if its actor dies, the next-ranked bid."""
    rest = [s for s in scoring.rank(scored, prices) if s.bid.agent != final.bid.agent]
    return [final, *rest[:1]]


# --- 8b. escalation on a failed example check -----------------------------------------------
def confirmed(kind: str, execution: Execution) -> bool:
    """Did the answer pass its own run of the prompt's examples? Non-code tasks have no such
    check, so they count as confirmed (never escalated)."""
    if kind != "code":
        return True
    checks = execution.self_checks_passed
    return execution.error is None and bool(checks) and checks[-1]


def escalates(policy: Policy, kind: str, execution: Execution | None) -> bool:
    """A policy that verifies hands on an answer its own examples do not confirm."""
    return policy.verify and execution is not None and not confirmed(kind, execution)


def escalation_note(winner: str, target: str | None, failure: str | None = None) -> str:
    """The record's note on an escalation: nobody to ask, a takeover that failed, or done."""
    if target is None:
        return f"{winner}'s answer failed the prompt's own examples; nobody dearer to ask"
    if failure is not None:
        return f"escalation to {target} failed: {failure}"
    return f"escalated from {winner} to {target}: its answer failed the prompt's own examples"


def escalation_target(
    winner: str, reserve: str | None, scored: Sequence[ScoredBid], prices: Mapping[str, float]
) -> str | None:
    """The reserve if there is one (and it did not just fail), else the best-ranked valid bid
    of a dearer agent; None: nobody dearer to ask."""
    if reserve is not None:
        return reserve if reserve != winner else None
    dearer = [s for s in scoring.rank(scored, prices) if prices[s.bid.agent] > prices[winner]]
    return dearer[0].bid.agent if dearer else None


# --- the whole decision on recorded cells ---------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What a policy decides on one recorded task (no refinement: no new plans offline)."""

    provisional: str | None
    winner: str | None  # whose answer stands
    executed: tuple[str, ...] = ()  # every agent that executed, in order
    bidders: tuple[str, ...] = ()
    jurors: tuple[str, ...] = ()  # the jurors whose verdicts counted; empty: the jury did not sit
    reserve: str | None = None  # the pool's reserve agent, if the policy has one
    reserve_planned: bool = False  # the reserve wrote its plan (so it is paid)
    escalated: bool = False
    reasons: tuple[str, ...] = ()


def replay(
    policy: Policy,
    kind: str,
    bids: Mapping[str, Bid],
    verdicts: Sequence[JuryVerdict],
    prices: Mapping[str, float],
    executions: Mapping[str, Execution | None],
) -> Outcome:
    """Replay the live auction's decisions on recorded cells.

    ``bids``: every agent's bid, the reserve's included, in pool order; ``verdicts``: every
    agent's verdict over all plans (none when at most one bid was valid, as live);
    ``executions``: each agent's execution of its own plan. The functions above decide in the
    order :func:`~.protocol.run_auction` calls them. Not replayable: refinement (it writes new
    plans) and a dying actor (a cell records its error instead). A speculating policy's
    favourite that did not answer first executed all the same: it leads ``executed``.
    """
    out = _replay(policy, kind, bids, verdicts, prices, executions)
    guess = favourite([bids[n] for n in bidders(policy, list(bids))], prices, policy)
    if guess is None or out.executed[:1] == (guess.bid.agent,):
        return out  # no speculation, or it was kept
    return replace(out, executed=(guess.bid.agent, *out.executed))


def _replay(
    policy: Policy,
    kind: str,
    bids: Mapping[str, Bid],
    verdicts: Sequence[JuryVerdict],
    prices: Mapping[str, float],
    executions: Mapping[str, Execution | None],
) -> Outcome:
    pool = list(bids)
    reserve = reserve_of(policy, pool)
    who = bidders(policy, pool)
    panel = jury_panel(policy, pool)
    by_juror = {v.juror: v for v in verdicts}
    sits = jury_sits(policy, panel, sum(bids[n].valid for n in who))
    used = [by_juror[j] for j in panel if j in by_juror] if sits else []
    scored = scoring.score_bids([bids[n] for n in who], used, prices, policy.weights)
    rbid = None
    if reserve is not None and calls_reserve(scoring.pick_winner(scored, prices), policy, reserve):
        rbid = score_reserve(bids[reserve], policy)
    pick = pick_provisional(scored, prices, policy, rbid)
    scored = scored + ([rbid] if rbid is not None else [])
    out = Outcome(
        provisional=pick.agent,
        winner=pick.agent,
        executed=(pick.agent,) if pick.agent else (),
        bidders=tuple(who),
        jurors=tuple(v.juror for v in used),
        reserve=reserve,
        reserve_planned=rbid is not None,
        reasons=(pick.reason,),
    )
    first = pick.agent
    if first is None or not escalates(policy, kind, executions.get(first)):
        return out
    target = escalation_target(first, reserve, scored, prices)
    if target is None:
        return replace(out, reasons=(*out.reasons, escalation_note(first, None)))
    tbid = next((s for s in scored if s.bid.agent == target and s.score is not None), None)
    planned = out.reserve_planned
    if tbid is None:  # the reserve plans only now
        tbid, planned = score_reserve(bids[target], policy), True
    if tbid.score is None:
        note = escalation_note(first, target, tbid.bid.rejected or "its plan was rejected")
        return replace(out, reserve_planned=planned, reasons=(*out.reasons, note))
    return replace(
        out,
        winner=target,
        executed=(first, target),
        reserve_planned=planned,
        escalated=True,
        reasons=(*out.reasons, escalation_note(first, target)),
    )


# --- bid: answer — the bid is the answer ----------------------------------------------------
CHECK_STATES = ("passed", "failed", "unchecked")


def checkable(policy: Policy, agent: str, kind: str, has_examples: bool) -> bool:
    """Can ``agent``'s answer be checked on this task before anyone else is asked? Code: the
    prompt shows examples to run; answers: the agent has a fitted entropy threshold."""
    if kind == "code":
        return has_examples
    return policy.trust(agent, kind).entropy_max is not None


#: agent -> (its answers that passed, its answers judged) on the most similar past tasks
Evidence = Mapping[str, tuple[int, int]]

#: pseudo-answers at the agent's overall rate behind the memory's local rate, so that one
#: similar task that went well does not read as certainty
MEMORY_PRIOR = 2.0


def memory_evidence(outcomes: Iterable[Mapping[str, bool]]) -> dict[str, tuple[int, int]]:
    """What outcome memory says of each agent, from the past tasks given (the most similar
    first, each ``agent -> whether its answer passed``; an agent not judged there is absent)."""
    out: dict[str, tuple[int, int]] = {}
    for task in outcomes:
        for agent, ok in task.items():
            s, n = out.get(agent, (0, 0))
            out[agent] = (s + bool(ok), n + 1)
    return out


def _logit(p: float) -> float:
    p = min(max(p, 0.01), 0.99)  # a figure of 0 or 1 must still be movable by evidence
    return math.log(p / (1 - p))


def answer_ladder(
    policy: Policy,
    pool: Sequence[str],
    prices: Mapping[str, float],
    kind: str,
    has_examples: bool,
    evidence: Evidence | None = None,
) -> list[str]:
    """Who may be asked, cheapest first (ties: pool order): the policy's agents, less every
    one but the last whose answer could not win at once on this task — its best case (its
    check passes, or nothing to check it with) stays under ``accept_value`` — since asking it
    would buy nothing the last agent does not give anyway. ``evidence``: as in
    :func:`answer_value`."""
    names = [n for n in (policy.answer_agents or pool) if n in prices]
    names = sorted(names, key=lambda n: (prices[n], names.index(n)))
    if not names:
        return []

    def could_win(n: str) -> bool:
        best = "passed" if checkable(policy, n, kind, has_examples) else "unchecked"
        return answer_value(policy, n, best, kind, evidence) >= policy.accept_value

    return [n for n in names[:-1] if could_win(n)] + names[-1:]


def check_state(policy: Policy, kind: str, execution: Execution, has_examples: bool) -> str:
    """What the answer's own check said: ``passed`` / ``failed`` / ``unchecked``. A call that
    failed or came back empty failed. Code: its run of the prompt's examples; a prompt without
    examples only shows whether the code runs at all, so code that does not run failed and
    code that runs is unchecked (running proves nothing more). Answers: the mean token entropy
    against the agent's ``entropy_max``."""
    if execution.error is not None or not execution.answer.strip():
        return "failed"
    if kind == "code":
        checks = execution.self_checks_passed
        if not checks:
            return "unchecked"
        if not checks[-1]:
            return "failed"
        return "passed" if has_examples else "unchecked"
    limit = policy.trust(execution.agent, kind).entropy_max
    if limit is None or execution.entropy is None:
        return "unchecked"
    return "passed" if execution.entropy <= limit else "failed"


def answer_value(
    policy: Policy, agent: str, state: str, kind: str, evidence: Evidence | None = None
) -> float:
    """V of an answer: the probability outcome memory gives an answer of ``agent`` whose check
    said ``state``.

    With ``policy.memory_k`` and ``evidence`` (:func:`memory_evidence` of the ``memory_k``
    most similar past tasks), the figure is moved by how the agent did there: its local rate
    (shrunk towards its ``overall`` rate by :data:`MEMORY_PRIOR` pseudo-answers) against that
    overall rate, added in log-odds — the check and the neighbourhood taken as independent
    evidence. No evidence for the agent, or no ``overall`` fitted: the figure alone."""
    trust = policy.trust(agent, kind)
    figure = float(getattr(trust, state))
    passed, judged = (evidence or {}).get(agent, (0, 0))
    if not policy.memory_k or not judged or trust.overall is None:
        return figure
    base = trust.overall
    local = (passed + MEMORY_PRIOR * base) / (judged + MEMORY_PRIOR)
    return 1 / (1 + math.exp(-(_logit(figure) + _logit(local) - _logit(base))))


def accepts(policy: Policy, value: float) -> bool:
    """An answer worth at least ``accept_value`` wins at once: nobody dearer is asked."""
    return value >= policy.accept_value


def pick_answer(
    values: Mapping[str, float], prices: Mapping[str, float], errored: Collection[str] = ()
) -> str | None:
    """Nobody was accepted: the answer of highest value wins, ties to the dearer agent (the
    one the user would have called). A call that errored has no answer to give: it wins only
    when every call errored."""
    usable = {n: v for n, v in values.items() if n not in errored} or values
    if not usable:
        return None
    return max(usable, key=lambda n: (usable[n], prices[n]))


def replay_answers(
    policy: Policy,
    kind: str,
    has_examples: bool,
    prices: Mapping[str, float],
    answers: Mapping[str, Execution],
    evidence: Evidence | None = None,
) -> Outcome:
    """Replay ``bid: answer`` on recorded direct answers (every agent's, in pool order): the
    same ladder, values and stops as :func:`~.protocol.run_auction`. ``executed`` lists every
    agent asked, in order; the winner's answer is its execution. ``evidence``: what memory
    held of the most similar past tasks (:func:`answer_value`). Not replayed: ``deadline_s``
    (recorded answers keep no wall clock of the auction they would be in)."""
    ladder = answer_ladder(policy, list(answers), prices, kind, has_examples, evidence)
    values: dict[str, float] = {}
    reason = "nobody accepted: highest value"
    for n in ladder:
        state = check_state(policy, kind, answers[n], has_examples)
        values[n] = answer_value(policy, n, state, kind, evidence)
        if accepts(policy, values[n]):
            reason = f"{n}'s answer accepted at {values[n]:.2f}"
            break
    winner = next((n for n in values if accepts(policy, values[n])), None)
    errored = [n for n in values if answers[n].error is not None]
    winner = winner or pick_answer(values, prices, errored)
    return Outcome(
        provisional=winner,
        winner=winner,
        executed=tuple(values),
        bidders=tuple(values),
        reasons=(reason,),
    )
