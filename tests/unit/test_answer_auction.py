"""``bid: answer``: the bid is the agent's direct answer, asked cheapest first, and the first one
worth ``accept_value`` wins without being redone."""

import asyncio
import itertools

import pytest

from sale_ray.auction import policy
from sale_ray.auction.protocol import run_auction
from sale_ray.config import AgentSpec, AnswerTrust, AuctionConfig, PoolSpec, SaleConfig
from sale_ray.types import Evaluation, Execution, Task, Usage

WITH_EXAMPLES = Task(
    id="t1",
    prompt='def add(a, b):\n    """Add.\n    >>> add(1, 2)\n    3\n    """\n',
    entry_point="add",
    tests="assert add(1, 2) == 3",
)
WITHOUT_EXAMPLES = Task(
    id="t2", prompt="def add(a, b):\n    '''Add.'''\n", entry_point="add", tests="assert 1"
)
PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}


class Answerer:
    """A fake agent: its direct answer is right or wrong, and its check says so or not."""

    def __init__(self, name, *, right=True, check=True, runs=True, fault=None):
        self.name, self.right, self.check, self.fault = name, right, check, fault
        self.runs = runs
        self.asked = 0

    async def execute_direct(self, task):
        self.asked += 1
        if self.fault:
            raise ConnectionError("actor died")
        # with examples the check runs them; without, it can only see whether the code runs
        checks = [self.check] if ">>>" in task.prompt else [self.runs]
        return Execution(
            agent=self.name,
            answer="RIGHT" if self.right else "WRONG",
            turns=1,
            self_checks_passed=checks,
            usage=Usage(prompt_tokens=50, completion_tokens=20, cost_usd=PRICES[self.name] * 1e-6),
        )

    async def bid(self, task):  # never called in answer mode
        raise AssertionError("a plan was asked for")

    judge = execute = bid


async def right(task, answer):
    return Evaluation(passed=answer == "RIGHT")


TRUST = {
    "small": AnswerTrust(passed=0.6, failed=0.0, unchecked=0.3),
    "mid": AnswerTrust(passed=0.95, failed=0.05, unchecked=0.7),
    "large": AnswerTrust(passed=0.95, failed=0.1, unchecked=0.85),
}


def _cfg(**kw):
    pool = PoolSpec(agents=[AgentSpec(name=n, model=n, backend="scripted") for n in PRICES])
    auction = {"bid": "answer", "answer_trust": TRUST, "accept_value": 0.8, **kw}
    return SaleConfig(pool=pool, auction=AuctionConfig(**auction))


def run(agents, task=WITH_EXAMPLES, **kw):
    return asyncio.run(run_auction(task, agents, PRICES, _cfg(**kw), evaluate=right))


def test_the_cheapest_answer_worth_the_threshold_wins_and_nobody_dearer_is_asked():
    agents = {n: Answerer(n) for n in PRICES}
    rec = run(agents)
    # small's passed check is worth 0.6 < 0.8, so it is never worth asking: mid is first
    assert rec.winner == "mid" and rec.evaluation.passed
    assert [agents[n].asked for n in PRICES] == [0, 1, 0]
    assert rec.phase_usage["bid"].calls == 0  # the winner's bid is its execution: not redone
    assert rec.execution.answer == "RIGHT"
    assert [b.bid.agent for b in rec.bids] == ["mid"]


def test_an_answer_its_check_rejects_is_paid_as_a_lost_bid_and_the_next_agent_answers():
    agents = {
        "small": Answerer("small"),
        "mid": Answerer("mid", right=False, check=False),
        "large": Answerer("large"),
    }
    rec = run(agents)
    assert rec.winner == "large" and rec.evaluation.passed
    assert rec.phase_usage["bid"].cost_usd == pytest.approx(0.1e-6)  # mid's answer
    assert rec.phase_usage["execute"].cost_usd == pytest.approx(0.3e-6)  # large's
    assert [b.value for b in rec.bids] == [0.05, 0.95]


def test_without_examples_to_check_against_only_agents_trusted_unchecked_are_asked():
    agents = {n: Answerer(n) for n in PRICES}
    rec = run(agents, task=WITHOUT_EXAMPLES)
    # nobody cheaper is trusted at 0.8 without a check: the user's own call, and nothing else
    assert rec.winner == "large"
    assert [agents[n].asked for n in PRICES] == [0, 0, 1]


def test_an_agent_trusted_without_a_check_answers_unchecked_tasks_alone():
    trust = {**TRUST, "mid": AnswerTrust(passed=0.95, failed=0.05, unchecked=0.9)}
    agents = {n: Answerer(n) for n in PRICES}
    rec = run(agents, task=WITHOUT_EXAMPLES, answer_trust=trust)
    assert rec.winner == "mid" and [agents[n].asked for n in PRICES] == [0, 1, 0]


def test_without_examples_code_that_runs_is_unchecked_and_code_that_does_not_run_failed():
    trust = {**TRUST, "mid": AnswerTrust(passed=0.95, failed=0.05, unchecked=0.9)}
    agents = {n: Answerer(n) for n in PRICES}
    agents["mid"] = Answerer("mid", runs=False)
    rec = run(agents, task=WITHOUT_EXAMPLES, answer_trust=trust)
    assert [b.value for b in rec.bids] == [0.05, 0.85]  # mid failed; large's runs: unchecked
    assert rec.winner == "large"


def test_when_nobody_is_accepted_the_most_trusted_answer_wins():
    agents = {
        "small": Answerer("small"),
        "mid": Answerer("mid", right=False, check=False),
        "large": Answerer("large", right=False, check=False),
    }
    rec = run(agents)
    assert rec.winner == "large"  # 0.1 beats mid's 0.05
    assert not rec.evaluation.passed


def test_a_dying_agent_is_a_failed_answer_and_the_auction_goes_on():
    agents = {
        "small": Answerer("small"),
        "mid": Answerer("mid", fault=True),
        "large": Answerer("large"),
    }
    rec = run(agents)
    assert rec.winner == "large" and rec.evaluation.passed
    assert rec.bids[0].bid.rejected.startswith("ConnectionError")
    assert rec.bids[0].score is None


def test_answer_agents_limits_the_ladder_and_must_name_agents_of_the_pool():
    agents = {n: Answerer(n, check=False) for n in PRICES}
    rec = run(agents, answer_agents=["small", "large"])
    assert rec.winner == "large" and [agents[n].asked for n in PRICES] == [0, 0, 1]
    with pytest.raises(ValueError, match="answer_agents / answer_trust name agents not in"):
        _cfg(answer_agents=["ghost"])
    with pytest.raises(ValueError, match="at least 1 item"):
        _cfg(answer_agents=[])


@pytest.mark.parametrize(
    "rights,checks,task",
    [
        (r, c, t)
        for r in itertools.product([True, False], repeat=3)
        for c in itertools.product([True, False], repeat=3)
        for t in (WITH_EXAMPLES, WITHOUT_EXAMPLES)
    ][::5],
)
def test_the_evaluation_replays_the_live_decision_exactly(rights, checks, task):
    agents = {
        n: Answerer(n, right=r, check=c) for n, r, c in zip(PRICES, rights, checks, strict=True)
    }
    rec = run(agents, task=task)
    answers = {
        n: asyncio.run(Answerer(n, right=r, check=c).execute_direct(task))
        for n, r, c in zip(PRICES, rights, checks, strict=True)
    }
    pol = policy.Policy.from_config(_cfg().auction)
    out = policy.replay_answers(pol, "code", ">>>" in task.prompt, PRICES, answers)
    assert out.winner == rec.winner
    assert list(out.executed) == [b.bid.agent for b in rec.bids]


class Slow(Answerer):
    def __init__(self, name, seconds, **kw):
        super().__init__(name, **kw)
        self.seconds = seconds

    async def execute_direct(self, task):
        await asyncio.sleep(self.seconds)
        return await super().execute_direct(task)


def test_past_the_auction_deadline_the_best_answer_so_far_stands():
    agents = {
        "small": Answerer("small"),
        "mid": Answerer("mid", right=False, check=False),
        "large": Slow("large", 5.0),
    }
    rec = run(agents, deadline_s=0.3)
    # large got only what was left of 0.3 s and timed out: mid's (failed) answer stands,
    # because a call that errored has no answer to give
    assert rec.winner == "mid" and not rec.evaluation.passed
    assert rec.bids[-1].bid.rejected.startswith("timeout after")
    assert rec.phase_seconds["execute"] < 2.0


def test_the_first_call_gets_the_whole_deadline_and_nobody_is_asked_after_it():
    agents = {
        "small": Answerer("small"),
        "mid": Slow("mid", 0.5),
        "large": Answerer("large"),
    }
    rec = run(agents, deadline_s=0.1)
    assert rec.bids[0].bid.rejected == "timeout after 0.1s"
    assert agents["large"].asked == 0 and any("deadline" in n for n in rec.notes)
    assert not rec.evaluation.passed  # nobody answered in time


def test_trust_may_differ_by_task_kind():
    # mid is trusted unchecked on answer tasks only: it answers those alone, not code
    answer_kind = AnswerTrust(passed=0.9, failed=0.1, unchecked=0.9)
    trust = {**TRUST, "mid": TRUST["mid"].model_copy(update={"kinds": {"answer": answer_kind}})}
    question = Task(id="q", prompt="2+2?", kind="answer", expected="RIGHT")
    agents = {n: Answerer(n) for n in PRICES}
    rec = asyncio.run(
        run_auction(question, agents, PRICES, _cfg(answer_trust=trust), evaluate=right)
    )
    assert rec.winner == "mid" and [agents[n].asked for n in PRICES] == [0, 1, 0]
    agents = {n: Answerer(n) for n in PRICES}
    assert run(agents, task=WITHOUT_EXAMPLES, answer_trust=trust).winner == "large"
