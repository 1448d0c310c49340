"""Every router of the registry on hand-made and synthetic matrices (no Ray, no models)."""

import pytest

from sale_ray.config import EvalConfig, Weights
from sale_ray.errors import ConfigError
from sale_ray.evaluation.baselines import (
    DIRECT_METHODS,
    NO_MEMORY_NOTE,
    REQUIRED_METHODS,
    ROUTERS,
    RouterContext,
    make_router,
)
from sale_ray.evaluation.direct import DirectCell, MissingDirectCells
from sale_ray.evaluation.matrix import Cell, Decision, TaskRow
from sale_ray.types import Bid, Evaluation, Execution, JuryVerdict, Usage
from tests.fakes.synthetic import synthetic_matrix

PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}


def usage(tokens, price):
    return Usage(
        prompt_tokens=tokens, completion_tokens=tokens, cost_usd=2 * tokens * price / 1e6, calls=1
    )


def row(
    i,
    passing,
    *,
    checks=None,
    prompt=None,
    kind="code",
    scores=None,
    split="test",
    rejected=(),
    direct=None,
    direct_checks=None,
):
    """One task: ``passing`` agents pass the hidden tests; ``checks`` their self-check results.

    Direct calls (150 + 150 tokens each): ``direct`` agents pass (default: ``passing``), with
    ``direct_checks`` (default: agreeing with the outcome)."""
    checks = checks if checks is not None else {a: a in passing for a in PRICES}
    scores = scores or {a: 3.0 for a in PRICES}
    direct = passing if direct is None else direct
    direct_checks = direct_checks or {a: a in direct for a in PRICES}
    cells = {}
    for a, p in PRICES.items():
        bid = Bid(
            agent=a,
            plan=f"{a} plan",
            plan_tokens=50,
            entropy=0.3,
            usage=usage(50, p),
            rejected="timeout" if a in rejected else None,
        )
        cells[a] = Cell(
            agent=a,
            price_in=p,
            price_out=p,
            bid=bid,
            verdict=JuryVerdict(juror=a, scores=scores, usage=usage(100, p)),
            execution=Execution(
                agent=a, answer="x", self_checks_passed=[checks[a]], usage=usage(200, p)
            ),
            evaluation=Evaluation(passed=a in passing),
        )
    return TaskRow(
        task_id=f"t{i}",
        prompt=prompt or f"task {i}",
        kind=kind,
        bin=i % 5,
        split=split,
        order=i,
        cells=cells,
        direct={
            a: DirectCell(
                agent=a,
                price_in=p,
                price_out=p,
                execution=Execution(
                    agent=a, answer="y", self_checks_passed=[direct_checks[a]], usage=usage(150, p)
                ),
                evaluation=Evaluation(passed=a in direct),
            )
            for a, p in PRICES.items()
        },
    )


def route(name, r, train=(), **ctx):
    router = make_router(name, RouterContext(eval=EvalConfig(embedder="hashing"), **ctx))
    router.fit(list(train))
    return router.route(r)


def test_the_registry_has_every_method_the_summary_promises():
    assert set(REQUIRED_METHODS) <= set(ROUTERS)
    with pytest.raises(ConfigError, match="unknown method"):
        make_router("gpt-router", RouterContext())


def test_largest_and_smallest_read_their_agent_cell_and_pay_plan_plus_execution():
    r = row(0, {"large"})
    d = route("largest", r)
    assert (d.agent, d.passed, d.executed) == ("large", True, ["large"])
    assert d.tokens == {"bid": 0, "jury": 0, "refine": 0, "execute": 100 + 400}
    assert d.total_cost == pytest.approx((100 + 400) * 0.3 / 1e6)
    s = route("smallest", r)
    assert (s.agent, s.passed) == ("small", False)


def test_random_is_seeded_per_task_and_stays_in_the_pool():
    rows = [row(i, set()) for i in range(30)]
    a = [route("random", r).agent for r in rows]
    assert a == [route("random", r).agent for r in rows]
    assert set(a) == set(PRICES)


def test_oracle_is_the_cheapest_passing_agent_or_the_cheapest_when_none_passes():
    assert route("oracle", row(0, {"mid", "large"})).agent == "mid"
    d = route("oracle", row(1, set()))
    assert (d.agent, d.passed, d.note) == ("small", False, "no agent passes")


def test_cascade_escalates_until_the_cheap_verifier_accepts():
    # small's self-check fails -> mid; mid's passes -> stop (although mid fails the hidden tests)
    r = row(0, {"large"}, checks={"small": False, "mid": True, "large": True})
    d = route("cascade", r)
    assert d.executed == ["small", "mid"] and d.agent == "mid" and not d.passed
    assert d.total_cost == pytest.approx(sum(2 * 250 * PRICES[a] / 1e6 for a in ("small", "mid")))
    # nobody's check passes: the largest answers, everyone was paid
    d = route("cascade", row(1, {"large"}, checks={a: False for a in PRICES}))
    assert d.executed == ["small", "mid", "large"] and d.passed
    # the verifier is the agent's own check, never the hidden tests
    d = route("cascade", row(2, {"small"}, checks={"small": False, "mid": False, "large": False}))
    assert d.agent == "large" and not d.passed


def test_cascade_uses_fitted_entropy_thresholds_on_answer_tasks():
    train = []
    for i in range(10):
        r = row(
            i,
            {"mid", "large"} if i % 2 else {"small", "mid", "large"},
            kind="answer",
            split="train",
        )
        cells = dict(r.cells)
        h = 0.8 if i % 2 else 0.2  # small is unsure exactly when it fails
        cells["small"] = cells["small"].model_copy(
            update={"bid": cells["small"].bid.model_copy(update={"entropy": h})}
        )
        train.append(r.model_copy(update={"cells": cells}))
    router = make_router("cascade", RouterContext())
    router.fit(train)
    assert router.tau["small"] == pytest.approx(0.2)
    assert router.route(train[0]).agent == "small"
    assert router.route(train[1]).agent == "mid"


def test_knn_routes_like_the_most_similar_training_tasks():
    train = []
    for i in range(12):
        if i % 2:  # string tasks: only the large agent passes
            train.append(
                row(
                    i,
                    {"large"},
                    prompt=f"reverse the words of a sentence string {i}",
                    split="train",
                )
            )
        else:  # arithmetic: everybody passes
            train.append(
                row(
                    i, set(PRICES), prompt=f"add two integers and return the sum {i}", split="train"
                )
            )
    test_str = row(100, {"large"}, prompt="reverse the words of a sentence string please")
    test_add = row(101, set(PRICES), prompt="add two integers and return the sum please")
    assert route("knn", test_str, train).agent == "large"
    assert route("knn", test_add, train).agent == "small"


def test_sale_no_memory_pays_every_bid_and_the_jury_and_executes_the_c_minus_v_winner():
    r = row(0, {"mid"}, scores={"small": 1.0, "mid": 5.0, "large": 2.0})
    d = route("sale_no_memory", r, weights=Weights(w_c=0.0, w_h=0.0, w_jury_default=1.0))
    assert d.agent == "mid" and d.passed and d.executed == ["mid"]
    assert d.tokens == {"bid": 3 * 100, "jury": 3 * 200, "refine": 0, "execute": 400}
    expected = sum(2 * (50 + 100) * p / 1e6 for p in PRICES.values()) + 2 * 200 * 0.1 / 1e6
    assert d.total_cost == pytest.approx(expected)


def test_sale_without_fitted_weights_uses_the_shipped_defaults_and_skips_rejected_bids():
    r = row(0, {"mid"}, scores={"small": 5.0, "mid": 4.0, "large": 0.0}, rejected=("small",))
    d = route("sale_default", r)
    assert d.agent == "mid"


def test_sale_published_is_sale_no_memory_marked_as_such_until_live_decisions_exist():
    r = row(0, {"large"})
    w = Weights()
    plain = route("sale_no_memory", r, weights=w)
    marked = route("sale_published", r, weights=w)
    assert marked.agent == plain.agent and marked.total_cost == plain.total_cost
    assert NO_MEMORY_NOTE in marked.note
    live = Decision(method="x", task_id="t0", agent="small", executed=["small"], passed=True)
    replay = route("sale_published", r, weights=w, live={"t0": live})
    assert (replay.method, replay.agent, replay.passed) == ("sale_published", "small", True)


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_every_router_runs_on_a_synthetic_matrix(name):
    rows = synthetic_matrix(40, seed=7)
    train = [r for r in rows if r.split == "train"]
    router = make_router(
        name, RouterContext(eval=EvalConfig(embedder="hashing"), weights=Weights())
    )
    router.fit(train)
    for r in (r for r in rows if r.split == "test"):
        d = router.route(r)
        cells = r.direct if name in DIRECT_METHODS else r.cells
        assert d.agent in cells and d.task_id == r.task_id and d.total_cost > 0
        assert d.passed == cells[d.agent].passed


def test_lean_sale_never_pays_the_largest_bid_and_verify_escalates_on_a_failed_check():
    train = [
        row(
            i,
            {"large"} if i % 2 else set(PRICES),
            split="train",
            scores={"small": 1.0 if i % 2 else 4.5, "mid": 1.0 if i % 2 else 4.5, "large": 4.0},
        )
        for i in range(20)
    ]
    ctx = RouterContext(eval=EvalConfig(embedder="hashing", cost_lambda=0.2))
    lean = make_router("sale_lean", ctx)
    lean.fit(train)
    assert lean.policy.reserve == "large" and set(lean.policy.jurors) == {"small", "mid"}
    easy, hard = train[0], train[1]
    d = lean.route(easy)
    assert d.agent == "small" and d.passed
    assert d.tokens["bid"] == 2 * 100  # small and mid bid; the reserve does not
    d = lean.route(hard)
    assert d.agent == "large" and d.passed and d.note == "reserve"
    assert d.tokens["execute"] == 100 + 400  # the reserve plans, then executes
    verify = make_router("sale_lean_verify", ctx)
    verify.fit(train)
    tricky = row(
        99,
        {"large"},
        checks={"small": False, "mid": False, "large": True},
        scores={"small": 4.5, "mid": 4.5, "large": 4.0},
    )
    d = verify.route(tricky)
    # cheap plans score like the easy tasks': small wins, fails its own check, large takes over
    assert (d.provisional, d.executed, d.agent, d.passed) == (
        "small",
        ["small", "large"],
        "large",
        True,
    )
    assert d.tokens["execute"] == 400 + (100 + 400)  # small's execution, then large plans and runs
    # the same auction with small's check passing: no escalation, and small's wrong answer stands
    confident = row(
        99,
        {"large"},
        checks={"small": True, "mid": False, "large": True},
        scores={"small": 4.5, "mid": 4.5, "large": 4.0},
    )
    d = verify.route(confident)
    assert (d.provisional, d.executed, d.passed) == ("small", ["small"], False)


# --- direct baselines: each agent called once with the task alone -------------------------------
def test_largest_direct_pays_one_call_and_reads_the_direct_answer_not_the_planned_one():
    r = row(0, {"small"}, direct={"large"})  # planning first cost large the task
    d = route("largest_direct", r)
    assert (d.agent, d.executed, d.passed) == ("large", ["large"], True)
    assert d.tokens == {"bid": 0, "jury": 0, "refine": 0, "execute": 300}  # no plan paid for
    assert d.total_cost == pytest.approx(300 * 0.3 / 1e6)
    assert not route("largest", r).passed
    s = route("smallest_direct", r)
    assert (s.agent, s.passed) == ("small", False)


def test_oracle_direct_is_the_cheapest_direct_call_that_passes():
    r = row(0, {"small"}, direct={"mid", "large"})
    assert route("oracle", r).agent == "small"
    d = route("oracle_direct", r)
    assert (d.agent, d.passed) == ("mid", True)
    none = route("oracle_direct", row(1, set(PRICES), direct=set()))
    assert (none.agent, none.passed, none.note) == ("small", False, "no agent passes")


def test_cascade_direct_escalates_on_the_direct_answers_own_example_check():
    r = row(
        0,
        set(),
        checks={a: True for a in PRICES},  # the plan-conditioned checks would stop at small
        direct={"large"},
        direct_checks={"small": False, "mid": True, "large": True},
    )
    d = route("cascade_direct", r)
    assert (
        d.executed == ["small", "mid"] and d.agent == "mid" and not d.passed
    )  # a check, not the tests
    assert d.total_cost == pytest.approx(sum(300 * PRICES[a] / 1e6 for a in ("small", "mid")))
    assert route("cascade", r).executed == ["small"]


def test_knn_direct_learns_from_the_training_splits_direct_outcomes():
    train = []
    for i in range(12):
        prompt = f"reverse the words of a sentence string {i}"
        # planned, only large passes; called directly, small passes too
        train.append(row(i, {"large"}, direct={"small", "large"}, prompt=prompt, split="train"))
    test = row(100, {"large"}, direct={"small", "large"}, prompt="reverse the words of a string")
    assert route("knn", test, train).agent == "large"
    d = route("knn_direct", test, train)
    assert (d.agent, d.passed, d.tokens["execute"]) == ("small", True, 300)


def test_a_direct_method_on_a_row_without_direct_cells_says_how_to_fill_them():
    r = row(0, {"large"}).model_copy(update={"direct": {}})
    with pytest.raises(MissingDirectCells, match="--methods direct"):
        route("largest_direct", r)
