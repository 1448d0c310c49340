"""The auction's decisions (``auction/policy.py``): each decision point on its own, then the
promise the evaluation rests on — replaying a policy on recorded cells decides exactly what the
live auction decided, task by task, for every built-in policy."""

import asyncio
import zlib

import pytest

from sale_ray.agents.scripted import ScriptedAgent, scripted_evaluate
from sale_ray.auction import policy
from sale_ray.auction.policy import Policy
from sale_ray.auction.protocol import run_auction
from sale_ray.config import AgentSpec, AuctionConfig, PoolSpec, SaleConfig, ScriptedSpec, Weights
from sale_ray.evaluation.baselines import RouterContext, make_router
from sale_ray.evaluation.matrix import build_row
from sale_ray.evaluation.weights import simulate
from sale_ray.serve.policies import build as build_policies
from sale_ray.types import Bid, Execution, JuryVerdict, ScoredBid, Task

PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}
POOL = list(PRICES)
W = Weights()


def draw(*parts):
    """A stable number in [0, 1) from its arguments: which tasks a scripted fault hits."""
    return zlib.crc32("/".join(map(str, parts)).encode()) / 2**32


def sb(agent, score):
    """A scored bid (``score=None``: rejected)."""
    bid = Bid(agent=agent, plan=f"{agent} plan", rejected=None if score is not None else "timeout")
    return ScoredBid(bid=bid, score=score)


def ex(checks, error=None):
    return Execution(agent="a", answer="x", self_checks_passed=checks, error=error)


# --- who bids, who judges ----------------------------------------------------------------------
def test_the_reserve_does_not_bid_and_a_reserve_outside_the_pool_is_ignored():
    assert policy.bidders(Policy(W, reserve="large"), POOL) == ["small", "mid"]
    assert policy.bidders(Policy(W, reserve="gpt-9"), POOL) == POOL
    assert policy.reserve_of(Policy(W, reserve="gpt-9"), POOL) is None


def test_the_jury_is_every_agent_or_the_listed_ones_in_the_pool():
    assert policy.jury_panel(Policy(W), POOL) == POOL  # the reserve judges too
    assert policy.jury_panel(Policy(W, jurors=("mid", "gone", "small")), POOL) == ["mid", "small"]


def test_the_jury_sits_only_when_two_bids_compete_and_someone_is_on_it():
    assert policy.jury_sits(Policy(W), POOL, valid_bids=2)
    assert not policy.jury_sits(Policy(W), POOL, valid_bids=1)
    assert not policy.jury_sits(Policy(W), [], valid_bids=3)
    assert not policy.jury_sits(Policy(W, jury=False), POOL, valid_bids=3)


# --- the provisional winner and the reserve ----------------------------------------------------
def test_the_lowest_c_minus_v_wins_and_a_tie_goes_to_the_cheaper_agent():
    pick = policy.pick_provisional([sb("large", -1.0), sb("mid", -1.0)], PRICES, Policy(W))
    assert pick.agent == "mid" and pick.reason == "lowest C - V"
    assert policy.pick_provisional([sb("small", None)], PRICES, Policy(W)).agent is None


def test_the_reserve_is_called_only_when_no_bid_scores_at_or_below_its_constant():
    lean = Policy(W, reserve="large", reserve_score=-1.0)
    assert not policy.calls_reserve(sb("mid", -1.0), lean, "large")  # at the constant: the bid
    assert policy.calls_reserve(sb("mid", -0.9), lean, "large")
    assert policy.calls_reserve(None, lean, "large")  # nobody bid: the reserve answers
    assert not policy.calls_reserve(None, Policy(W), None)


def test_a_called_reserve_wins_unless_its_plan_was_rejected():
    lean = Policy(W, reserve="large", reserve_score=-1.0)
    bids = [sb("mid", -0.5)]
    ok = policy.score_reserve(Bid(agent="large", plan="p"), lean)
    assert ok.score == -1.0
    assert policy.pick_provisional(bids, PRICES, lean, ok).agent == "large"
    bad = policy.score_reserve(Bid(agent="large", rejected="timeout"), lean)
    pick = policy.pick_provisional(bids, PRICES, lean, bad)
    assert pick.agent == "mid" and "rejected" in pick.reason


# --- refinement and the final winner -----------------------------------------------------------
def test_only_strictly_cheaper_agents_refine_cheapest_first():
    assert policy.refiners("large", PRICES) == ["small", "mid"]
    assert policy.refiners("small", PRICES) == []  # a cheap winner: no refinement, no tokens


def test_a_refined_bid_wins_only_by_beating_the_provisional_score():
    prov = sb("mid", -1.0)
    assert policy.pick_final(prov, [sb("small", -1.5)], PRICES).agent == "small"
    stands = policy.pick_final(prov, [sb("small", -1.0)], PRICES)
    assert stands.bid is prov and stands.reason == "the provisional winner stands"


def test_if_the_winner_dies_the_next_ranked_bid_runs_once():
    order = policy.execution_order(
        sb("mid", -1), [sb("mid", -1), sb("large", 0), sb("small", 2)], PRICES
    )
    assert [s.bid.agent for s in order] == ["mid", "large"]


# --- escalation on a failed example check ------------------------------------------------------
def test_only_a_code_answer_its_examples_do_not_confirm_escalates_and_only_when_verifying():
    verify = Policy(W, verify=True)
    assert policy.escalates(verify, "code", ex([True, False]))  # the last run counts
    assert not policy.escalates(verify, "code", ex([False, True]))
    assert policy.escalates(verify, "code", ex([]))  # no check ran: nothing confirms it
    assert policy.escalates(verify, "code", ex([True], error="crashed"))
    assert not policy.escalates(verify, "answer", ex([]))  # answer tasks have no examples
    assert not policy.escalates(Policy(W), "code", ex([False]))
    assert not policy.escalates(verify, "code", None)


def test_escalation_goes_to_the_reserve_else_to_the_best_dearer_bidder():
    scored = [sb("small", -2.0), sb("large", -1.0), sb("mid", 0.5)]
    assert policy.escalation_target("small", "large", scored, PRICES) == "large"
    assert policy.escalation_target("large", "large", scored, PRICES) is None  # it just failed
    assert policy.escalation_target("small", None, scored, PRICES) == "large"  # ranks above mid
    assert policy.escalation_target("large", None, scored, PRICES) is None  # nobody dearer
    assert policy.escalation_note("small", "large").startswith("escalated from small to large")


# --- the policy as configured ------------------------------------------------------------------
def test_a_policy_is_the_configs_policy_fields_and_zero_weight_jurors_are_not_asked():
    cfg = AuctionConfig(
        weights=Weights(w_jury={"small": 0.0, "mid": 0.4}),
        reserve_agent="large",
        reserve_score=-0.5,
        jurors=["small", "mid"],
        escalate_on_failed_check=True,
        jury=True,
    )
    p = Policy.from_config(cfg)
    assert (p.reserve, p.reserve_score, p.jurors, p.verify) == (
        "large",
        -0.5,
        ("small", "mid"),
        True,
    )
    assert p.asked().jurors == ("mid",)
    assert Policy(W).asked() == Policy(W)  # everyone judges: nothing to leave out


def test_replay_with_one_valid_bidder_counts_no_jury_as_live():
    # the matrix's jury sat (two valid plans with the reserve's); the lean auction's would not
    bids = {
        "small": Bid(agent="small", rejected="timeout"),
        "mid": Bid(agent="mid", plan="m", plan_tokens=10, entropy=0.0),
        "large": Bid(agent="large", plan="l", plan_tokens=10, entropy=0.0),
    }
    verdicts = [JuryVerdict(juror=j, scores={"mid": 5.0, "large": 5.0}) for j in POOL]
    lean = Policy(W, jurors=("small", "mid"), reserve="large", reserve_score=-0.5)
    out = policy.replay(lean, "code", bids, verdicts, PRICES, {})
    assert out.jurors == () and out.provisional == "large"  # mid's C - V is 0.01: no praise
    assert policy.replay(Policy(W), "code", bids, verdicts, PRICES, {}).jurors == tuple(POOL)


# --- THE agreement: live auctions and their offline replay decide alike ------------------------
class CheckedAgent(ScriptedAgent):
    """The scripted backend plus what the policies read: a bid that fails on some tasks, and an
    own example check that agrees with the hidden verdict except on some tasks (a cheap check
    is not a perfect one). Deterministic in (seed, agent, task), so live and matrix agree."""

    REJECT = 0.15
    LIES = 0.2

    async def bid(self, task):
        unlucky = draw(self.s.seed, "reject", self.name, task.id) < self.REJECT
        if unlucky or "nobody can plan" in task.prompt:
            raise RuntimeError("scripted bid failure")
        return await super().bid(task)

    async def execute(self, task, plan):
        out = await super().execute(task, plan)
        if task.kind != "code":
            return out
        lie = draw(self.s.seed, "lie", self.name, task.id) < self.LIES
        return out.model_copy(update={"self_checks_passed": [(out.answer == "PASS") != lie]})


SPECS = {"small": (0.3, 30), "mid": (0.6, 60), "large": (0.9, 90)}  # quality, plan tokens
TASKS = [
    Task(id=f"A/{i}", prompt=f"task {i}", bin=i % 5, entry_point="f", tests="pass")
    if i % 4
    else Task(id=f"A/{i}", kind="answer", prompt=f"question {i}", expected="PASS", bin=i % 5)
    for i in range(40)
] + [Task(id="A/none", prompt="nobody can plan this", entry_point="f", tests="pass")]
POLICIES = [
    "sale",
    "sale:published",
    "sale:lean",
    "sale:lean_verify",
    "sale:verify",
    "sale:bare",
    "sale:fast",
]


def _config():
    agents = [
        AgentSpec(
            name=n,
            backend="scripted",
            model="scripted",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            scripted=ScriptedSpec(quality=SPECS[n][0], plan_tokens=SPECS[n][1], seed=7),
        )
        for n, p in PRICES.items()
    ]
    base = SaleConfig(
        pool=PoolSpec(agents=agents),
        # a reserve score mid-way in the bids' C - V, so the reserve answers some tasks only
        auction=AuctionConfig(reserve_score=-0.2),
        serve={
            "policies": {  # beside the built-ins: verifying without a reserve, and no jury
                "verify": {"auction": {"escalate_on_failed_check": True}},
                "bare": {"auction": {"reserve_agent": "large", "jury": False}},
                "fast": {"auction": {"escalate_on_failed_check": True, "speculate": True}},
            }
        },
    )
    return {m: p.config for m, p in build_policies(base, PRICES).items()}


def _pool(config):
    return {s.name: CheckedAgent(s, config) for s in config.pool.agents}


@pytest.fixture(scope="module")
def recorded():
    """Every policy's live auction per task, and the matrix row of the same task."""
    configs = _config()
    any_cfg = configs["sale"]
    rows, live = [], {m: [] for m in POLICIES}
    for t in TASKS:
        rows.append(
            asyncio.run(
                build_row(
                    t,
                    _pool(any_cfg),
                    {a: (p, p) for a, p in PRICES.items()},
                    scripted_evaluate,
                    bid_timeout_s=5,
                    jury_timeout_s=5,
                    execute_timeout_s=5,
                )
            )
        )
        for m in POLICIES:
            cfg = configs[m]
            rec = run_auction(t, _pool(cfg), PRICES, cfg, evaluate=scripted_evaluate)
            live[m].append(asyncio.run(rec))
    return configs, rows, live


def _escalated(rec):
    return any(n.startswith("escalated from") for n in rec.notes)


@pytest.mark.parametrize("model", POLICIES)
def test_the_replayed_decision_is_the_live_one_on_every_recorded_task(recorded, model):
    configs, rows, live = recorded
    pol = Policy.from_config(configs[model].auction)
    for row, rec in zip(rows, live[model], strict=True):
        out = simulate(row, pol)
        seen = (out.provisional, out.winner, out.escalated)
        assert seen == (rec.provisional_winner, rec.winner, _escalated(rec)), (row.task_id, out)
        assert bool(out.winner and row.cells[out.winner].passed) == bool(rec.passed), row.task_id


@pytest.mark.parametrize("model", POLICIES)
def test_the_replay_counts_every_execution_the_live_auction_paid_for(recorded, model):
    """A speculating policy pays for its favourite's execution when the favourite loses; the
    offline cost (``executed``) must see it, or the evaluation would flatter speculation."""
    configs, rows, live = recorded
    pol = Policy.from_config(configs[model].auction)
    for row, rec in zip(rows, live[model], strict=True):
        paid = (rec.execution is not None) + (rec.speculation is not None) + _escalated(rec)
        assert len(simulate(row, pol).executed) == paid, (row.task_id, rec.notes)


@pytest.mark.parametrize(
    ("method", "model"),
    [("sale_default", "sale:published"), ("sale_lean_verify", "sale:lean_verify")],
)
def test_the_evaluations_routers_decide_what_the_live_auction_decided(recorded, method, model):
    configs, rows, live = recorded
    auction = configs[model].auction
    router = make_router(method, RouterContext(default_weights=auction.weights))
    router.policy = Policy.from_config(auction)  # sale_lean_*: the live policy, not a fitted one
    for row, rec in zip(rows, live[model], strict=True):
        d = router.route(row)
        assert (d.provisional, d.agent, d.passed) == (
            rec.provisional_winner,
            rec.winner,
            bool(rec.passed),
        ), row.task_id
        assert (len(d.executed) == 2) == _escalated(rec), row.task_id


def test_the_recorded_tasks_exercise_every_decision(recorded):
    """The agreement above is only worth what its tasks cover: each branch happens."""
    _, rows, live = recorded
    lean, verify, bare = live["sale:lean"], live["sale:lean_verify"], live["sale:bare"]

    def notes(model):
        return [n for r in live[model] for n in r.notes]

    def reserve_rejected(r):
        return any(not b.bid.valid for b in r.bids if b.bid.agent == "large")

    assert {r.winner for r in lean} >= {"large", "small", "mid"}  # the reserve answers some
    assert any(r.winner != "large" and reserve_rejected(r) for r in bare)  # called, no plan
    assert any(_escalated(r) for r in verify)  # to the reserve
    fast = live["sale:fast"]
    assert any(r.speculation is not None for r in fast)  # a favourite that lost, paid
    assert any("speculative execution by small kept" in r.notes for r in fast)
    assert any(n.startswith("escalation to large failed") for n in notes("sale:lean_verify"))
    assert any(n.startswith("escalated from small to mid") for n in notes("sale:verify"))
    assert any("nobody dearer" in n for n in notes("sale:verify"))
    assert any(
        r.verdicts == [] and sum(c.bid.valid for c in row.cells.values()) > 1
        for r, row in zip(lean, rows, strict=True)
    )  # the lean jury did not sit where the matrix's did
    assert all(r.winner is None for m in POLICIES for r in live[m] if r.task_id == "A/none")
