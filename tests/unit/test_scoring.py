"""The auction arithmetic: entropy, C - V, winners, refinement eligibility."""

import math

import pytest

from sale_ray.auction import scoring
from sale_ray.config import Weights
from sale_ray.types import Bid, JuryVerdict

PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}


def test_a_certain_token_has_zero_entropy_and_an_even_split_has_one():
    assert scoring.token_entropy([0.0, -50.0, -50.0]) == pytest.approx(0.0, abs=1e-12)
    assert scoring.token_entropy([math.log(0.25)] * 4) == pytest.approx(1.0)


def test_entropy_renormalises_the_top_k_so_missing_tail_mass_does_not_matter():
    # two equally likely alternatives covering only 20 % of the mass: still an even split
    assert scoring.token_entropy([math.log(0.1), math.log(0.1)]) == pytest.approx(1.0)


def test_single_alternative_and_empty_plans():
    assert scoring.token_entropy([-0.3]) == 0.0
    assert scoring.mean_entropy([]) is None
    assert scoring.mean_entropy([[0.0, -100.0], [math.log(0.5)] * 2]) == pytest.approx(0.5)


def test_cost_is_weight_times_price_times_plan_length():
    assert scoring.bid_cost(0.3, 100, Weights(w_c=0.01)) == pytest.approx(0.3)


def test_value_adds_weighted_jury_scores_and_penalises_entropy():
    w = Weights(w_h=-1.0, w_jury_default=0.5)
    v = scoring.bid_value(0.2, {"a": 4.0, "b": 2.0}, ["a", "b"], w)
    assert v == pytest.approx(-0.2 + 0.5 * 4 + 0.5 * 2)


def test_an_abstaining_juror_is_replaced_by_the_mean_of_the_others():
    w = Weights(w_h=0.0, w_jury_default=0.5)
    full = scoring.bid_value(0.0, {"a": 4.0, "b": 4.0}, ["a", "b"], w)
    missing = scoring.bid_value(0.0, {"a": 4.0}, ["a", "b"], w)
    assert missing == pytest.approx(full)


def test_per_juror_weights_override_the_default():
    w = Weights(w_h=0.0, w_jury={"a": 2.0}, w_jury_default=0.0)
    assert scoring.bid_value(None, {"a": 3.0, "b": 5.0}, ["a", "b"], w) == pytest.approx(6.0)


def _bids():
    return [
        Bid(agent="small", plan="p", plan_tokens=50, entropy=0.4),
        Bid(agent="mid", plan="p", plan_tokens=50, entropy=0.2),
        Bid(agent="large", plan="p", plan_tokens=50, entropy=0.1),
    ]


def test_lowest_c_minus_v_wins_and_rejected_bids_are_not_scored():
    bids = _bids() + [Bid(agent="x", rejected="timeout")]
    prices = PRICES | {"x": 0.0}
    verdicts = [
        JuryVerdict(juror="large", scores={"small": 2, "mid": 5, "large": 4}),
        JuryVerdict(juror="mid", scores={"small": 2, "mid": 4, "large": 4}),
    ]
    scored = scoring.score_bids(bids, verdicts, prices, Weights())
    assert scored[-1].score is None and scored[-1].bid.rejected == "timeout"
    assert scoring.pick_winner(scored, prices).bid.agent == "mid"


def test_ties_go_to_the_cheaper_agent():
    bids = [
        Bid(agent="large", plan="p", plan_tokens=0, entropy=0.0),
        Bid(agent="small", plan="p", plan_tokens=0, entropy=0.0),
    ]
    scored = scoring.score_bids(bids, [], PRICES, Weights())
    assert scoring.pick_winner(scored, PRICES).bid.agent == "small"


def test_no_valid_bid_means_no_winner():
    assert scoring.pick_winner([], PRICES) is None


def test_only_strictly_cheaper_agents_may_refine():
    assert scoring.refinement_eligible("large", PRICES) == ["small", "mid"]
    assert scoring.refinement_eligible("small", PRICES) == []


def test_a_refined_bid_wins_only_if_it_beats_the_provisional_winner():
    w = Weights()
    prov = scoring.score_bids(
        [Bid(agent="large", plan="p", plan_tokens=10, entropy=0.1)], [], PRICES, w
    )[0]
    worse = scoring.score_bids(
        [Bid(agent="small", plan="p", plan_tokens=10, entropy=0.9, refined=True)], [], PRICES, w
    )
    better = scoring.score_bids(
        [Bid(agent="small", plan="p", plan_tokens=10, entropy=0.0, refined=True)], [], PRICES, w
    )
    assert scoring.final_winner(prov, worse, PRICES).bid.agent == "large"
    assert scoring.final_winner(prov, better, PRICES).bid.agent == "small"


def test_expected_digit_reads_a_score_as_a_distribution():
    top = {"4": math.log(0.6), "3": math.log(0.3), "x": math.log(0.1)}
    assert scoring.expected_digit(top) == pytest.approx((4 * 0.6 + 3 * 0.3) / 0.9)
    assert scoring.expected_digit({"9": 0.0, "a": -1.0}) is None
