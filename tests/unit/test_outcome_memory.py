"""Outcome memory as a term of V (``bid: answer``, ``answer_memory_k``): how each agent's
answers did on the most similar past tasks moves what its answer is worth — in the pure
decision functions, in the fitter that chooses whether to use it, and in the live auction."""

import asyncio

import pytest

from sale_ray.auction import policy
from sale_ray.auction.protocol import run_auction
from sale_ray.config import AgentSpec, AnswerTrust, AuctionConfig, PoolSpec, SaleConfig
from sale_ray.evaluation import recommend
from sale_ray.evaluation.direct import DirectCell
from sale_ray.evaluation.matrix import TaskRow
from sale_ray.evaluation.neighbours import Neighbours
from sale_ray.evaluation.recommend import fit_recommended
from sale_ray.evaluation.row import direct_view
from sale_ray.memory.entry import MemoryBid, MemoryEntry, bid_outcomes, entry_from_record
from sale_ray.types import Evaluation, Execution, Usage
from tests.unit.test_answer_auction import PRICES, WITHOUT_EXAMPLES, Answerer, right

TRUST = AnswerTrust(passed=0.9, failed=0.1, unchecked=0.5, overall=0.5)


def _pol(k=5, trust=TRUST):
    return policy.Policy(
        weights=AuctionConfig().weights, bid="answer", answer_trust={"a": trust}, memory_k=k
    )


# --- the value ------------------------------------------------------------------------------
def test_similar_tasks_the_agent_passed_raise_its_answer_value_and_failures_lower_it():
    passed = policy.memory_evidence([{"a": True}] * 4)
    failed = policy.memory_evidence([{"a": False}] * 4)
    assert passed == {"a": (4, 4)} and failed == {"a": (0, 4)}
    v = policy.answer_value(_pol(), "a", "unchecked", "code", passed)
    assert v == pytest.approx((4 + 2 * 0.5) / (4 + 2))  # at the base rate: the local rate
    assert policy.answer_value(_pol(), "a", "unchecked", "code", failed) < 0.5 < v
    # a passed check and good neighbours are independent evidence: both push up
    assert policy.answer_value(_pol(), "a", "passed", "code", passed) > max(v, 0.9)


def test_without_memory_evidence_or_a_base_rate_an_answer_is_worth_its_figure():
    good = policy.memory_evidence([{"a": True}] * 4)
    assert policy.answer_value(_pol(k=0), "a", "unchecked", "code", good) == 0.5
    assert policy.answer_value(_pol(), "a", "unchecked", "code", None) == 0.5
    assert policy.answer_value(_pol(), "a", "unchecked", "code", {"b": (4, 4)}) == 0.5
    no_base = AnswerTrust(passed=0.9, failed=0.1, unchecked=0.5)
    assert policy.answer_value(_pol(trust=no_base), "a", "unchecked", "code", good) == 0.5


# --- the fitter -----------------------------------------------------------------------------
FAMILIES = {"reverse": "reverse the words of a sentence", "primes": "count the primes below n"}


def family_row(i, family, *, split="train"):
    """No examples to check with: small is right on every 'reverse' task and wrong on every
    'primes' task, large is always right; only the task text tells the families apart."""
    direct = {}
    for a, p in PRICES.items():
        ok = a == "large" or (a == "small" and family == "reverse") or a == "mid" and i % 2 == 0
        direct[a] = DirectCell(
            agent=a,
            price_in=p,
            price_out=p,
            execution=Execution(
                agent=a,
                answer="y",
                self_checks_passed=[True],  # it runs: says nothing more
                usage=Usage(prompt_tokens=100, completion_tokens=100, cost_usd=200 * p / 1e6),
            ),
            evaluation=Evaluation(passed=ok),
        )
    prompt = f"{FAMILIES[family]} (task {i})"
    return direct_view(
        TaskRow(task_id=f"{family}{i}", prompt=prompt, split=split, order=i, direct=direct)
    )


def test_the_fitter_turns_memory_on_when_similar_tasks_tell_who_will_be_right():
    train = [family_row(i, f) for i in range(10) for f in FAMILIES]
    plain = fit_recommended(train, cost_lambda=0.1)
    fit = fit_recommended(train, cost_lambda=0.1, neighbours=Neighbours(train, "hashing"))
    assert fit.chosen.memory_k > 0 and fit.chosen.loss < plain.chosen.loss
    # ...and it wins on the folds the fit did not see, so the cross-validation lets it in
    cv = fit.memory_cv
    assert cv["memory_pays"] and cv["loss_with_memory"] < cv["loss_without_memory"]
    reverse, primes = (
        family_row(50, "reverse", split="test"),
        family_row(51, "primes", split="test"),
    )
    assert fit.decide("sale", reverse).agent == "small"  # its neighbours say small is right
    assert fit.decide("sale", primes).agent == "large"  # ...and here that it is wrong
    assert fit.decide("sale", primes).passed and fit.decide("sale", reverse).passed


def test_memory_that_wins_only_on_the_tasks_it_was_fitted_on_stays_off(monkeypatch):
    train = [family_row(i, f) for i in range(10) for f in FAMILIES]
    near = Neighbours(train, "hashing")
    by_loss = fit_recommended(train, cost_lambda=0.1, neighbours=near, memory_folds=0)
    assert by_loss.chosen.memory_k > 0 and by_loss.memory_cv is None
    # the cross-validation's verdict, scripted: memory lost on the folds it did not see
    lost = {"folds": 5, "loss_with_memory": 0.3, "loss_without_memory": 0.2, "memory_pays": False}
    monkeypatch.setattr(recommend, "memory_cv", lambda *a, **k: lost)
    monkeypatch.setattr(recommend, "_FITS", {})  # not the remembered fit of the real one
    fit = fit_recommended(train, cost_lambda=0.1, neighbours=near)
    best_plain = min((c for c in fit.candidates if not c.memory_k), key=lambda c: c.loss)
    assert fit.chosen.memory_k == 0 and fit.chosen.loss == best_plain.loss
    assert fit.summary()["memory_cv"] == lost
    assert fit.summary()["best_by_memory_k"]["8"]["memory_k"] == 8  # still reported


def test_a_fit_asked_for_twice_is_made_once_and_rows_that_changed_are_fitted_anew(monkeypatch):
    made = []
    real = recommend._fit
    monkeypatch.setattr(recommend, "_fit", lambda *a: made.append(a) or real(*a))
    monkeypatch.setattr(recommend, "_FITS", {})
    rows = [family_row(i, f) for i in range(4) for f in FAMILIES]
    first = fit_recommended(rows, cost_lambda=0.1)
    assert fit_recommended(list(rows), cost_lambda=0.1) is first and len(made) == 1
    fit_recommended(rows, cost_lambda=0.2)  # other arguments
    fit_recommended([r.model_copy(update={"prompt": "other"}) for r in rows], cost_lambda=0.1)
    assert len(made) == 3  # the same task ids with other content are other rows


def test_cross_validation_folds_depend_only_on_each_task_id():
    rows = [family_row(i, f) for i in range(10) for f in FAMILIES]
    folds = recommend._folds(rows, 5)
    ids = [sorted(r.task_id for r in f) for f in folds]
    assert sorted(i for f in ids for i in f) == sorted(r.task_id for r in rows)  # a partition
    assert ids == [sorted(r.task_id for r in f) for f in recommend._folds(rows[::-1], 5)]
    assert all(1 <= len(f) < len(rows) for f in folds)


def test_memory_stays_off_when_it_buys_nothing():
    rows = [family_row(i, "reverse") for i in range(12)]  # one family: the figure says it all
    fit = fit_recommended(rows, cost_lambda=0.1, neighbours=Neighbours(rows, "hashing"))
    assert fit.chosen.memory_k == 0


# --- the live auction -----------------------------------------------------------------------
class Recall:
    """The refiner's outcome-memory hook, scripted: what the similar past auctions said."""

    def __init__(self, outcomes=None, fault=None):
        self.outcomes, self.fault, self.asked = outcomes or [], fault, []

    async def recall(self, task, k):
        self.asked.append(k)
        if self.fault:
            raise self.fault
        return self.outcomes[:k]


def live(recall, agents, k=3):
    trust = {n: AnswerTrust(passed=0.9, failed=0.05, unchecked=0.5, overall=0.5) for n in PRICES}
    pool = PoolSpec(agents=[AgentSpec(name=n, model=n, backend="scripted") for n in PRICES])
    auction = AuctionConfig(bid="answer", answer_trust=trust, accept_value=0.8, answer_memory_k=k)
    cfg = SaleConfig(pool=pool, auction=auction)
    return asyncio.run(
        run_auction(WITHOUT_EXAMPLES, agents, PRICES, cfg, evaluate=right, refine=recall)
    )


def test_live_memory_that_small_was_right_lets_its_unchecked_answer_win():
    agents = {n: Answerer(n) for n in PRICES}
    rec = live(Recall([{"small": True}] * 6), agents, k=6)
    assert rec.winner == "small" and [agents[n].asked for n in PRICES] == [1, 0, 0]


def test_without_memory_the_same_unchecked_answers_go_to_the_dearest_agent():
    agents = {n: Answerer(n) for n in PRICES}
    rec = live(Recall([]), agents)
    assert rec.winner == "large" and [agents[n].asked for n in PRICES] == [0, 0, 1]


def test_every_answer_is_judged_so_memory_learns_each_agents_outcome():
    agents = {
        "small": Answerer("small", right=False, runs=False),  # its code does not run
        "mid": Answerer("mid"),
        "large": Answerer("large"),
    }
    rec = live(Recall([{"small": True, "mid": True}] * 3), agents)
    assert [b.bid.agent for b in rec.bids][:2] == ["small", "mid"]
    judged = {b.bid.agent: b.passed for b in rec.bids}
    assert judged["small"] is False and judged[rec.winner] is True
    entry = entry_from_record(rec, WITHOUT_EXAMPLES.prompt)
    assert bid_outcomes(entry) == judged


def test_a_failing_memory_leaves_a_note_and_the_auction_still_decides():
    agents = {n: Answerer(n) for n in PRICES}
    rec = live(Recall(fault=TimeoutError("shard down")), agents)
    assert rec.winner == "large" and rec.error is None
    assert any("outcome memory unavailable" in n for n in rec.notes)


def test_a_memory_entry_of_a_plan_auction_records_the_winners_outcome_only():
    e = MemoryEntry(
        auction_id="x",
        task_id="t",
        task_text="t",
        created_at=0.0,
        winner="mid",
        passed=True,
        bids=[
            MemoryBid(agent="small", plan="p"),
            MemoryBid(agent="mid", plan="q", won=True, passed=True),
        ],
    )
    assert bid_outcomes(e) == {"mid": True}


def test_memory_written_before_per_bid_outcomes_still_loads():
    import numpy as np
    import pyarrow as pa

    from sale_ray.memory.entry import BID_TYPE, ENTRY_SCHEMA
    from sale_ray.memory.shard import MemoryShard

    old_bid = pa.struct([f for f in BID_TYPE if f.name != "passed"])
    old = pa.schema(
        [pa.field("bids", pa.list_(old_bid)) if f.name == "bids" else f for f in ENTRY_SCHEMA]
    )
    bid = {"agent": "mid", "plan": "p", "refined": False, "won": True}
    row = {"auction_id": "a", "task_id": "t", "task_text": "t", "created_at": 0.0}
    table = pa.Table.from_pylist([{**row, "winner": "mid", "passed": True, "bids": [bid]}], old)
    shard = MemoryShard(dim=4)
    assert shard.write_table(table, np.ones((1, 4), dtype=np.float32)) == 1
    (hit,) = shard.search(np.ones((1, 4), dtype=np.float32), 1)[0]
    assert hit.entry.bids[0].passed is None
    assert bid_outcomes(hit.entry) == {"mid": True}  # the entry's outcome is its winner's
