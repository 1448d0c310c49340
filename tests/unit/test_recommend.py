"""The recommended configuration: fitted on training direct calls, written as a config the live
auction runs, and replayed on held-out rows with the live decision functions."""

import pytest

from sale_ray.auction.policy import Policy
from sale_ray.config import (
    AgentSpec,
    EvalConfig,
    PoolSpec,
    SaleConfig,
    embedded_default,
    load_config,
)
from sale_ray.evaluation.baselines import RouterContext, make_router
from sale_ray.evaluation.direct import DirectCell
from sale_ray.evaluation.intervals import method_intervals
from sale_ray.evaluation.matrix import TaskRow
from sale_ray.evaluation.neighbours import Neighbours
from sale_ray.evaluation.recommend import (
    answer_decision,
    fit_recommended,
    fit_trust,
    memory_for,
    write_recommended,
)
from sale_ray.evaluation.row import direct_view
from sale_ray.types import Evaluation, Execution, Usage
from tests.fakes.synthetic import synthetic_matrix

PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}
PROMPT = 'def f(x):\n    """\n    >>> f({i})\n    {i}\n    """\n'


def row(i, passing, checks, *, split="train"):
    """A task with direct calls only: ``passing`` agents pass the hidden tests, ``checks``
    say what each answer's run of the prompt's examples said (None: no examples)."""
    examples = all(c is not None for c in checks.values())
    prompt = PROMPT.format(i=i) if examples else f"task {i}"
    direct = {}
    for a, p in PRICES.items():
        ran = [True] if checks[a] is None else [checks[a]]  # no examples: the code runs
        direct[a] = DirectCell(
            agent=a,
            price_in=p,
            price_out=p,
            execution=Execution(
                agent=a,
                answer="y",
                self_checks_passed=ran,
                usage=Usage(prompt_tokens=100, completion_tokens=100, cost_usd=200 * p / 1e6),
            ),
            evaluation=Evaluation(passed=a in passing),
        )
    return direct_view(TaskRow(task_id=f"t{i}", prompt=prompt, split=split, order=i, direct=direct))


def lying_small(n=12):
    """small's check always passes but its answer is right one time in four; mid's and
    large's checks tell the truth, mid is right two times in three, large always."""
    rows = []
    for i in range(n):
        mid_ok = i % 3 != 0
        passing = {"large"} | ({"mid"} if mid_ok else set()) | ({"small"} if i % 4 == 0 else set())
        rows.append(row(i, passing, {"small": True, "mid": mid_ok, "large": True}))
    return rows


def test_trust_is_the_pass_rate_of_each_check_outcome_shrunk_towards_the_agent_rate():
    trust = fit_trust(lying_small())
    assert trust["small"].passed == pytest.approx((3 + 2 * 0.25) / (12 + 2), abs=1e-4)
    assert trust["mid"].passed > 0.85 and trust["mid"].failed < 0.25
    # never seen unchecked: the agent's overall rate
    assert trust["mid"].unchecked == pytest.approx(8 / 12, abs=1e-4)


def test_the_fitter_asks_the_cheapest_agent_whose_check_can_be_believed():
    fit = fit_recommended(lying_small(), cost_lambda=0.1)
    assert fit.chosen.ladder[-1] == "large"
    assert (
        "small" not in fit.policy().answer_agents
        or fit.chosen.accept_value > fit.trust["small"].passed
    )  # small can never win at once: it is skipped either way
    d = answer_decision(
        "sale", row(99, {"mid", "large"}, dict.fromkeys(PRICES, True)), fit.policy()
    )
    assert (d.agent, d.executed) == ("mid", ["mid"])
    assert d.tokens["bid"] == 0  # the winner's answer is not redone
    wrong = row(98, {"large"}, {"small": True, "mid": False, "large": True})
    d = answer_decision("sale", wrong, fit.policy())
    assert (d.agent, d.executed, d.passed) == ("large", ["mid", "large"], True)
    assert d.tokens["bid"] == 200  # mid's answer, paid and discarded


def test_a_task_without_examples_goes_to_the_agent_trusted_unchecked():
    fit = fit_recommended(lying_small(), cost_lambda=0.1)
    d = answer_decision("sale", row(97, {"large"}, dict.fromkeys(PRICES)), fit.policy())
    assert d.executed == ["large"]  # mid unchecked is worth 2/3: not worth asking


def test_the_written_config_runs_the_decisions_the_evaluation_reports(tmp_path):
    rows = synthetic_matrix(40, seed=3)
    train = [direct_view(r) for r in rows if r.split == "train"]
    near = Neighbours(train, "hashing")
    fit = fit_recommended(train, cost_lambda=0.1, neighbours=near)
    pool = PoolSpec(agents=[AgentSpec(name=n, model=n, backend="scripted") for n in PRICES])
    base = SaleConfig(pool=pool)
    path = write_recommended(fit, base, tmp_path / "recommended.yaml", {"seed": 3})
    live = Policy.from_config(load_config(path).auction)
    assert live.memory_k == fit.chosen.memory_k
    router = make_router("sale", RouterContext(eval=EvalConfig(embedder="hashing")))
    router.fit([r for r in rows if r.split == "train"])
    for r in (r for r in rows if r.split == "test"):
        v = direct_view(r)
        ours = answer_decision("sale", v, live, None, memory_for(v, live, train, near))
        assert ours == router.route(r)


def test_the_embedded_default_is_the_recommended_auction_and_published_sale_one_flag_away():
    cfg = embedded_default()
    pool = {a.name for a in cfg.pool.agents}
    assert cfg.auction.bid == "answer" and set(cfg.auction.answer_agents) <= pool
    assert set(cfg.auction.answer_trust) <= pool
    assert load_config(None) == cfg
    assert SaleConfig().auction.bid == "plan"  # SALE as published: `auction: {bid: plan}`


def test_paired_intervals_are_exact_for_a_copy_and_cover_the_observed_difference():
    rows = []
    for i in range(30):
        rows.append(
            {
                "method": "largest_direct",
                "task_id": i,
                "passed": i % 5 != 0,
                "execute_cost_usd": 1.0,
            }
        )
        rows.append({"method": "copy", "task_id": i, "passed": i % 5 != 0, "execute_cost_usd": 1.0})
        rows.append(
            {"method": "cheap", "task_id": i, "passed": i % 3 != 0, "execute_cost_usd": 0.5}
        )
    ci = method_intervals(rows)
    assert ci["copy"]["pass_at_1_diff_ci"] == [0.0, 0.0]
    assert ci["copy"]["cost_ratio_ci"] == [1.0, 1.0] and ci["cheap"]["cost_ratio_ci"] == [0.5, 0.5]
    lo, hi = ci["cheap"]["pass_at_1_diff_ci"]
    assert lo < (20 - 24) / 30 < hi and hi - lo < 0.5
    assert method_intervals(rows) == ci  # seeded


def test_on_mixed_task_kinds_each_kind_gets_its_own_figures():
    code = lying_small()
    answers = [
        r.model_copy(update={"kind": "answer", "task_id": f"a{r.task_id}"})
        for r in [row(i, {"large"}, dict.fromkeys(PRICES)) for i in range(12)]
    ]
    trust = fit_trust(code + answers)
    mid = trust["mid"]
    assert set(mid.kinds) == {"code", "answer"}
    assert mid.kinds["answer"].unchecked < 0.2 < mid.kinds["code"].passed  # never right on answers
    assert mid.for_kind("answer") == mid.kinds["answer"] and mid.for_kind("other") == mid


def test_a_replayed_check_can_say_it_tested_behaviour_on_prompts_without_examples():
    """``examples=True``: a check of another kind (tests the agent wrote) read as one that
    tests behaviour, where the prompt itself shows nothing to run."""
    rows = []
    for i in range(12):
        mid_ok = i % 3 != 0
        passing = {"large"} | ({"mid"} if mid_ok else set())
        rows.append(row(i, passing, {"small": None, "mid": None, "large": None}))
        # the recorded check now says what mid's own tests said
        cells = dict(rows[-1].cells)
        ex = cells["mid"].execution.model_copy(update={"self_checks_passed": [mid_ok]})
        cells["mid"] = cells["mid"].model_copy(update={"execution": ex})
        rows[-1] = rows[-1].model_copy(update={"cells": cells})
    plain = fit_trust(rows)
    # read as "the code runs": a passing check is only unchecked, "passed" never seen
    assert plain["mid"].passed == pytest.approx(8 / 12, abs=1e-4)
    assert plain["mid"].unchecked > 0.85
    told = fit_trust(rows, examples=True)
    assert told["mid"].passed > 0.85 and told["mid"].failed < 0.25
    fit = fit_recommended(rows, cost_lambda=0.1, examples=True)
    out = [answer_decision("x", r, fit.policy(), examples=True) for r in rows]
    assert all(d.passed for d in out)
    assert sum(d.agent == "mid" for d in out) == 8  # mid's tested answers are kept
