"""One auction over scripted agents: who wins, what is recorded, and how faults are absorbed."""

import asyncio
import time

import pytest

from sale_ray.auction.protocol import run_auction
from sale_ray.config import AgentSpec, AuctionConfig, PoolSpec, SaleConfig
from sale_ray.types import Bid, Evaluation, Execution, JuryVerdict, Task, Usage

TASK = Task(id="t1", prompt="add two numbers", entry_point="add", tests="assert add(1, 2) == 3")
PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}


class ScriptedAgent:
    """A fake agent: fixed plan, fixed jury scores, optional faults."""

    def __init__(
        self,
        name,
        *,
        entropy=0.3,
        tokens=40,
        scores=None,
        bid_fault=None,
        judge_fault=None,
        execute_fault=None,
        delay=0.0,
        checks=None,
    ):
        self.name, self.entropy, self.tokens = name, entropy, tokens
        self.scores = scores or {}
        self.bid_fault, self.judge_fault, self.execute_fault = bid_fault, judge_fault, execute_fault
        self.delay = delay
        self.checks = list(checks) if checks is not None else [True]
        self.bids = 0
        self.executed = 0
        self.judged = 0

    async def bid(self, task):
        self.bids += 1
        await asyncio.sleep(self.delay)
        if self.bid_fault == "raise":
            raise RuntimeError("server exploded")
        if self.bid_fault == "malformed":
            return {"plan": "not a Bid"}
        usage = Usage(prompt_tokens=20, completion_tokens=self.tokens, cost_usd=1e-6, calls=1)
        return Bid(
            agent=self.name,
            plan=f"{self.name} plan",
            plan_tokens=self.tokens,
            entropy=self.entropy,
            usage=usage,
        )

    async def judge(self, task, plans):
        self.judged += 1
        if self.judge_fault:
            raise ValueError("juror crashed")
        return JuryVerdict(
            juror=self.name,
            scores={a: self.scores.get(a, 3) for a, _ in plans},
            usage=Usage(prompt_tokens=50, completion_tokens=10, calls=1),
        )

    async def execute(self, task, plan):
        self.executed += 1
        if self.execute_fault:
            raise ConnectionError("actor died")
        return Execution(
            agent=self.name,
            answer="def add(a, b):\n    return a + b",
            turns=1,
            self_checks_passed=self.checks,
            usage=Usage(completion_tokens=30, cost_usd=2e-6, calls=1),
        )


async def passes(task, answer):
    return Evaluation(passed="return a + b" in answer, detail="")


def _pool(**overrides):
    jury_scores = {"small": 2, "mid": 5, "large": 4}
    agents = {n: ScriptedAgent(n, scores=jury_scores) for n in PRICES}
    agents.update(overrides)
    return agents


def _cfg(**kw):
    pool = PoolSpec(agents=[AgentSpec(name=n, model=n, backend="scripted") for n in PRICES])
    return SaleConfig(pool=pool, auction=AuctionConfig(**kw))


def run(agents, cfg=None, **kw):
    return asyncio.run(run_auction(TASK, agents, PRICES, cfg or _cfg(), evaluate=passes, **kw))


def test_the_best_value_for_money_wins_and_only_the_winner_executes():
    agents = _pool()
    rec = run(agents)
    assert rec.winner == rec.provisional_winner == "mid"
    assert [a.executed for a in agents.values()] == [0, 1, 0]
    assert rec.passed is True
    assert {s.bid.agent for s in rec.bids} == set(PRICES)
    assert all(len(s.jury) == 3 for s in rec.bids)  # every agent is a juror, self included


def test_the_record_carries_tokens_money_and_seconds_per_phase():
    rec = run(_pool())
    assert rec.phase_usage["bid"].completion_tokens == 120
    assert rec.phase_usage["jury"].calls == 3
    assert rec.phase_usage["execute"].cost_usd == pytest.approx(2e-6)
    assert rec.cost_usd == pytest.approx(3e-6 + 2e-6)
    assert {"bid", "jury", "execute", "evaluate"} <= set(rec.phase_seconds)


@pytest.mark.parametrize("fault", ["raise", "malformed"])
def test_a_failing_bid_is_recorded_as_rejected_and_the_auction_goes_on(fault):
    rec = run(_pool(mid=ScriptedAgent("mid", bid_fault=fault)))
    mid = next(s for s in rec.bids if s.bid.agent == "mid")
    assert mid.bid.rejected and mid.score is None
    assert rec.winner in {"small", "large"} and rec.passed


def test_a_bid_slower_than_the_deadline_is_dropped_and_the_auction_finishes_on_time():
    slow = ScriptedAgent("large", delay=5.0)
    t = time.perf_counter()
    rec = run(_pool(large=slow), cfg=_cfg(bid_timeout_s=0.2))
    assert time.perf_counter() - t < 2.0
    large = next(s for s in rec.bids if s.bid.agent == "large")
    assert large.bid.rejected.startswith("timeout")
    assert rec.winner is not None


def test_a_crashing_juror_abstains_without_ending_the_auction():
    rec = run(_pool(large=ScriptedAgent("large", judge_fault=True, scores={"mid": 5})))
    bad = next(v for v in rec.verdicts if v.juror == "large")
    assert bad.error and rec.winner is not None


def test_with_one_valid_bid_the_jury_is_skipped():
    agents = _pool(
        small=ScriptedAgent("small", bid_fault="raise"),
        large=ScriptedAgent("large", bid_fault="raise"),
    )
    rec = run(agents)
    assert rec.winner == "mid" and rec.verdicts == []
    assert all(a.judged == 0 for a in agents.values())


def test_no_valid_bid_gives_an_explicit_failed_record():
    agents = {n: ScriptedAgent(n, bid_fault="raise") for n in PRICES}
    rec = run(agents)
    assert rec.winner is None and rec.error == "no valid bids" and rec.passed is False


def test_if_the_winner_dies_during_execution_the_next_ranked_bid_runs():
    agents = _pool(
        mid=ScriptedAgent("mid", execute_fault=True, scores={"small": 2, "mid": 5, "large": 4})
    )
    rec = run(agents)
    assert rec.provisional_winner == "mid" and rec.winner == "large"
    assert rec.passed is True


def test_refinement_is_offered_only_to_strictly_cheaper_agents():
    seen = {}

    async def refine(task, provisional, scored, eligible):
        seen["eligible"] = list(eligible)
        better = Bid(agent="small", plan="refined", plan_tokens=10, entropy=0.0, refined=True)
        return [better], [JuryVerdict(juror="mid", scores={"small": 5})]

    rec = run(_pool(), refine=refine)
    assert seen["eligible"] == ["small"]
    assert rec.winner == "small"
    assert any(s.bid.refined for s in rec.bids)
    assert "refine" in rec.phase_usage


# --- the lean policy: a reserve agent, a smaller jury, escalation on a failed example check ----
def test_a_reserve_agent_does_not_bid_and_plans_only_when_no_bid_scores_low_enough():
    agents = _pool()
    cheap_wins = run(agents, cfg=_cfg(reserve_agent="large", reserve_score=10.0))
    assert agents["large"].bids == 0 and agents["large"].executed == 0
    assert "large" not in {s.bid.agent for s in cheap_wins.bids}
    assert cheap_wins.winner == "mid"

    agents = _pool()
    reserve_wins = run(agents, cfg=_cfg(reserve_agent="large", reserve_score=-10.0))
    assert agents["large"].bids == 1 and agents["large"].executed == 1
    assert reserve_wins.winner == reserve_wins.provisional_winner == "large"
    assert reserve_wins.phase_usage["bid"].completion_tokens == 3 * 40  # its plan is paid too


def test_only_the_listed_jurors_are_asked():
    agents = _pool()
    rec = run(agents, cfg=_cfg(jurors=["small", "mid"]))
    assert [v.juror for v in rec.verdicts] == ["small", "mid"]
    assert agents["large"].judged == 0


def test_a_winner_whose_examples_fail_hands_the_task_to_the_reserve():
    agents = _pool(mid=ScriptedAgent("mid", scores={"mid": 5}, checks=[False]))
    cfg = _cfg(reserve_agent="large", reserve_score=10.0, escalate_on_failed_check=True)
    rec = run(agents, cfg=cfg)
    assert rec.provisional_winner == "mid" and rec.winner == "large"
    assert agents["mid"].executed == 1 and agents["large"].executed == 1
    assert rec.phase_usage["execute"].completion_tokens == 60  # both executions are paid
    assert any(n.startswith("escalated from mid to large") for n in rec.notes)


def test_a_confirmed_answer_is_never_escalated():
    agents = _pool()
    cfg = _cfg(reserve_agent="large", reserve_score=10.0, escalate_on_failed_check=True)
    rec = run(agents, cfg=cfg)
    assert rec.winner == "mid" and agents["large"].bids == 0 and not rec.notes


def test_without_a_reserve_escalation_goes_to_the_best_dearer_bidder():
    agents = _pool(small=ScriptedAgent("small", scores={"small": 5}, checks=[False]))
    agents["mid"].scores = agents["large"].scores = {"small": 5, "mid": 1, "large": 4}
    rec = run(agents, cfg=_cfg(escalate_on_failed_check=True, weights={"w_c": 0.0}))
    assert rec.provisional_winner == "small"
    assert rec.winner == "large"  # the best-ranked bid of an agent dearer than 'small'


def test_answer_tasks_have_no_example_check_and_are_not_escalated():
    task = Task(id="q1", kind="answer", prompt="2+2?", expected="4")
    agents = _pool(mid=ScriptedAgent("mid", scores={"mid": 5}, checks=[]))
    cfg = _cfg(reserve_agent="large", reserve_score=10.0, escalate_on_failed_check=True)
    rec = asyncio.run(run_auction(task, agents, PRICES, cfg))
    assert rec.winner == "mid" and agents["large"].executed == 0


def test_reserve_and_jurors_must_name_agents_of_the_pool():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not in the pool"):
        SaleConfig(auction=AuctionConfig(reserve_agent="gpt-9"))


# --- speculation: the favourite executes while the jury decides ----------------------------------
class Timeline(ScriptedAgent):
    """A scripted agent that logs when its calls start and end, on a log shared by the pool."""

    def __init__(self, name, log, *, judge_s=0.05, execute_s=0.0, **kw):
        super().__init__(name, **kw)
        self.log, self.judge_s, self.execute_s = log, judge_s, execute_s
        self.cancelled = 0

    async def judge(self, task, plans):
        self.log.append(("judge", self.name))
        await asyncio.sleep(self.judge_s)
        self.log.append(("judged", self.name))
        return await super().judge(task, plans)

    async def execute(self, task, plan):
        self.log.append(("execute", self.name))
        try:
            await asyncio.sleep(self.execute_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().execute(task, plan)


def _timeline(scores, **kw):
    log = []
    return log, {n: Timeline(n, log, scores=scores, **kw) for n in PRICES}


FAVOURS_SMALL = {"small": 5, "mid": 2, "large": 2}  # small is also the favourite on bids alone


def test_with_speculation_the_favourite_executes_while_the_jury_sits_and_is_kept():
    log, agents = _timeline(FAVOURS_SMALL)
    rec = run(agents, cfg=_cfg(speculate=True))
    assert rec.winner == "small" and rec.passed and rec.speculation is None
    assert log.index(("execute", "small")) < log.index(("judged", "large"))  # before the verdicts
    assert [a.executed for a in agents.values()] == [1, 0, 0]  # kept, not run twice
    assert rec.phase_usage["execute"].cost_usd == pytest.approx(2e-6)
    assert "speculative execution by small kept" in rec.notes


def test_without_speculation_execution_waits_for_every_verdict():
    log, agents = _timeline(FAVOURS_SMALL)
    rec = run(agents)
    assert rec.winner == "small"
    assert log.index(("execute", "small")) > max(i for i, e in enumerate(log) if e[0] == "judged")


def test_a_favourite_that_loses_has_its_execution_paid_and_recorded_not_used():
    log, agents = _timeline({"small": 2, "mid": 5, "large": 4})  # the jury prefers mid
    rec = run(agents, cfg=_cfg(speculate=True))
    assert rec.winner == "mid" and rec.execution.agent == "mid"
    assert rec.speculation is not None and rec.speculation.agent == "small"
    assert [a.executed for a in agents.values()] == [1, 1, 0]
    assert rec.phase_usage["execute"].cost_usd == pytest.approx(2 * 2e-6)  # both are paid
    assert rec.cost_usd == pytest.approx(3e-6 + 2 * 2e-6)
    assert any("speculative execution by small discarded" in n for n in rec.notes)


@pytest.mark.parametrize(
    "scores",
    [FAVOURS_SMALL, {"small": 2, "mid": 5, "large": 4}, {"small": 1, "mid": 1, "large": 5}],
)
def test_speculation_never_changes_who_wins(scores):
    plain = run(_timeline(scores)[1])
    fast = run(_timeline(scores)[1], cfg=_cfg(speculate=True))
    assert (fast.winner, fast.provisional_winner) == (plain.winner, plain.provisional_winner)
    assert fast.execution.answer == plain.execution.answer


def test_an_auction_cancelled_mid_jury_cancels_its_speculative_execution():
    log, agents = _timeline(FAVOURS_SMALL, judge_s=10.0, execute_s=10.0)

    async def main():
        auction = asyncio.ensure_future(
            run_auction(TASK, agents, PRICES, _cfg(speculate=True), evaluate=passes)
        )
        while ("execute", "small") not in log:
            await asyncio.sleep(0.01)
        auction.cancel()
        with pytest.raises(asyncio.CancelledError):
            await auction
        await asyncio.sleep(0.01)

    asyncio.run(main())
    assert agents["small"].cancelled == 1
