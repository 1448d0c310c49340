"""The MILP weight fit: it recovers weights that separate a constructed dataset, respects its
bounds, drops features for ablations, and writes a config file the auction reads."""

import pytest

from sale_ray.config import Weights, load_config
from sale_ray.evaluation.matrix import Cell, TaskRow
from sale_ray.evaluation.weights import fit_weights, sale_choice, write_weights
from sale_ray.types import Bid, Evaluation, Execution, JuryVerdict, Usage
from tests.fakes.synthetic import synthetic_matrix

PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}


def _row(i, passing, *, jury_good=4.5, jury_bad=1.0, entropy=None, bin_=0):
    """Agents in ``passing`` pass; every juror scores exactly those plans high."""
    cells = {}
    scores = {a: jury_good if a in passing else jury_bad for a in PRICES}
    for a, p in PRICES.items():
        h = entropy[a] if entropy else 0.4
        cells[a] = Cell(
            agent=a,
            price_in=p,
            price_out=p,
            bid=Bid(
                agent=a,
                plan=f"{a} plan",
                plan_tokens=60,
                entropy=h,
                usage=Usage(
                    prompt_tokens=100, completion_tokens=60, cost_usd=160 * p / 1e6, calls=1
                ),
            ),
            verdict=JuryVerdict(juror=a, scores=scores, usage=Usage(calls=1)),
            execution=Execution(
                agent=a,
                answer="x",
                usage=Usage(
                    prompt_tokens=200, completion_tokens=150, cost_usd=350 * p / 1e6, calls=1
                ),
            ),
            evaluation=Evaluation(passed=a in passing),
        )
    return TaskRow(
        task_id=f"t{i}", prompt=f"task {i}", bin=bin_, split="train", order=i, cells=cells
    )


def _dataset():
    """Half the tasks only the large agent solves, half every agent solves."""
    return [
        _row(i, {"large"} if i % 2 else {"small", "mid", "large"}, bin_=i % 5) for i in range(20)
    ]


@pytest.mark.parametrize("objective", ["bins", "mean"])
def test_fit_recovers_weights_that_send_each_task_to_the_cheapest_passing_agent(objective):
    rows = _dataset()
    res = fit_weights(rows, cost_lambda=0.2, objective=objective)
    assert "Optimal" in res.status
    for r in rows:
        assert sale_choice(r, res.weights) == r.passing()[0], r.task_id
    assert res.train["pass_at_1"] == 1.0
    assert res.train["milp_agreement"] == 1.0
    assert sum(res.weights.w_jury.values()) > 0  # the jury is the signal that separates


def test_fit_finds_the_one_honest_juror_where_equal_weights_fail():
    rows = []
    for i in range(20):
        passing = {"large"} if i % 2 else {"small", "mid", "large"}
        r = _row(i, passing, bin_=i % 5)
        cells = {}
        for a, c in r.cells.items():  # only "mid" tells the truth; the others score inverted
            honest = {b: (4.5 if b in passing else 1.0) for b in PRICES}
            liar = {b: (5.0 if b not in passing else 0.0) for b in PRICES}
            v = c.verdict.model_copy(update={"scores": honest if a == "mid" else liar})
            cells[a] = c.model_copy(update={"verdict": v})
        rows.append(r.model_copy(update={"cells": cells}))
    assert [sale_choice(r, Weights()) for r in rows] != [r.passing()[0] for r in rows]
    res = fit_weights(rows, cost_lambda=0.2)
    assert [sale_choice(r, res.weights) for r in rows] == [r.passing()[0] for r in rows]
    wj = res.weights.w_jury
    assert wj["mid"] > wj["small"] + wj["large"]


def test_bounds_are_respected():
    rows = synthetic_matrix(40, seed=3)
    res = fit_weights(rows, bound=0.5, cost_lambda=0.3)
    c_scale = res.settings["c_scale"]
    w = res.weights
    assert 0 <= w.w_c * c_scale <= 0.5 + 1e-9
    assert -0.5 - 1e-9 <= w.w_h <= 0.5 + 1e-9
    assert all(0 <= x <= 0.5 + 1e-9 for x in w.w_jury.values())


def test_feature_ablation_fixes_dropped_weights_at_zero():
    rows = synthetic_matrix(30, seed=4)
    res = fit_weights(rows, features=("entropy",))
    assert res.weights.w_c == 0 and all(x == 0 for x in res.weights.w_jury.values())


def test_entropy_alone_can_carry_the_decision():
    # jury uninformative, entropy low exactly for the passing agents
    rows = []
    for i in range(16):
        passing = {"large"} if i % 2 else {"small", "mid", "large"}
        ent = {a: 0.1 if a in passing else 0.9 for a in PRICES}
        rows.append(_row(i, passing, jury_good=3, jury_bad=3, entropy=ent))
    res = fit_weights(rows, cost_lambda=0.2)
    assert res.weights.w_h < 0
    assert res.train["pass_at_1"] == 1.0


def test_paper_min_max_over_tasks_runs_and_is_reported():
    res = fit_weights(synthetic_matrix(30, seed=5), objective="tasks")
    assert res.settings["objective"] == "tasks" and res.objective is not None


def test_written_weights_load_as_the_auction_config(tmp_path):
    res = fit_weights(_dataset(), cost_lambda=0.2)
    path = write_weights(res, tmp_path / "weights.yaml", provenance={"train_tasks": 20})
    cfg = load_config(path)
    assert cfg.auction.weights == res.weights
    text = path.read_text()
    assert text.startswith("# Auction weights fitted") and "train_tasks" in text


def test_a_fitted_lean_policy_is_written_as_the_live_auction_knobs(tmp_path):
    from sale_ray.config import AgentSpec, PoolSpec, SaleConfig

    res = fit_weights(
        _dataset(), cost_lambda=0.2, reserve="large", jurors=["small", "mid"], verify=True
    )
    pool = PoolSpec(agents=[AgentSpec(name=a, model=a, backend="scripted") for a in PRICES])
    path = write_weights(res, tmp_path / "lean.yaml", base=SaleConfig(pool=pool))
    a = load_config(path).auction
    assert a.reserve_agent == "large" and a.reserve_score == pytest.approx(res.policy.reserve_score)
    assert a.escalate_on_failed_check is True
    # only jurors whose fitted weight is not 0 are asked (the others would cost and add nothing)
    assert set(a.jurors) == {j for j in ("small", "mid") if res.weights.juror_weight(j) != 0}
