"""The policy in the model name: ``sale`` runs the deployment's auction settings,
``sale:<name>`` a named policy over the same pool; an unknown one is a 404 naming the known."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from sale_ray.config import AgentSpec, PoolSpec, SaleConfig, ServeConfig, ServePolicy, Weights
from sale_ray.errors import ConfigError
from sale_ray.serve import policies
from sale_ray.serve.errors import NotFound, to_http

PRICES = {"small": 0.1, "big": 3.0, "mid": 1.0}


def _config(**serve: object) -> SaleConfig:
    agents = [AgentSpec(name=n, backend="scripted", model=n) for n in PRICES]
    return SaleConfig(pool=PoolSpec(agents=agents), serve=ServeConfig(**serve))


def test_the_built_in_policies_change_only_the_auction_policy():
    config = _config()
    built = policies.build(config, PRICES)
    assert list(built) == ["sale", "sale:published", "sale:lean", "sale:lean_verify"]
    assert built["sale"].config is config
    lean = built["sale:lean"].config.auction
    assert lean.reserve_agent == "big" and lean.jurors == ["small", "mid"]
    assert not lean.escalate_on_failed_check
    assert built["sale:lean_verify"].config.auction.escalate_on_failed_check
    published = built["sale:published"].config.auction
    assert published.reserve_agent is None and published.jurors is None and published.jury
    for p in built.values():  # what the agents themselves read stays the deployment's
        assert p.config.pool == config.pool and p.config.execution == config.execution
        assert p.config.auction.plan_max_tokens == config.auction.plan_max_tokens
        assert p.description


def test_published_restores_the_shipped_weights_of_a_fitted_deployment():
    fitted = _config().model_copy(
        update={"auction": _config().auction.model_copy(update={"weights": Weights(w_c=0.5)})}
    )
    built = policies.build(fitted, PRICES)
    assert built["sale:published"].config.auction.weights == Weights()
    assert built["sale:lean"].config.auction.weights.w_c == 0.5  # lean keeps the fitted ones


def test_named_policies_come_inline_or_from_a_fitted_config(tmp_path):
    fitted = tmp_path / "lean_verify.yaml"
    fitted.write_text(
        yaml.safe_dump(
            {
                "pool": {"agents": [{"name": n, "model": n} for n in PRICES]},
                "auction": {
                    "reserve_agent": "big",
                    "reserve_score": -0.25,
                    "jurors": ["mid"],
                    "escalate_on_failed_check": True,
                },
            }
        )
    )
    config = _config(
        policies={
            "fitted": ServePolicy(description="from eval", config=str(fitted)),
            "nojury": ServePolicy(description="no jury", auction={"jury": False}),
        }
    )
    built = policies.build(config, PRICES)
    a = built["sale:fitted"].config.auction
    assert (a.reserve_agent, a.reserve_score, a.jurors) == ("big", -0.25, ["mid"])
    assert built["sale:nojury"].config.auction.jury is False
    assert built["sale:nojury"].description == "no jury"


def test_a_bad_policy_fails_at_start_not_at_a_request(tmp_path):
    with pytest.raises(ValidationError, match="not policy settings"):
        ServePolicy(auction={"plan_max_tokens": 10})
    bad_agent = _config(policies={"x": ServePolicy(auction={"reserve_agent": "ghost"})})
    with pytest.raises(ConfigError, match="ghost"):
        policies.build(bad_agent, PRICES)
    with pytest.raises(ConfigError, match="not a policy name"):
        policies.build(_config(policies={"Bad Name": ServePolicy()}), PRICES)
    with pytest.raises(ConfigError, match="absolute"):
        policies.build(_config(policies={"rel": ServePolicy(config="x.yaml")}), PRICES)


def test_an_unknown_policy_is_a_404_naming_the_known_ones():
    built = policies.build(_config(), PRICES)
    with pytest.raises(NotFound) as e:
        policies.resolve(built, "sale:xyz")
    status, body, _ = to_http(e.value)
    assert status == 404 and body["error"]["code"] == "model_not_found"
    for known in built:
        assert known in body["error"]["message"]


def test_a_pool_of_one_has_no_lean_policy():
    one = SaleConfig(pool=PoolSpec(agents=[AgentSpec(name="solo", backend="scripted", model="s")]))
    assert list(policies.build(one, {"solo": 1.0})) == ["sale", "sale:published"]
