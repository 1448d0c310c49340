"""Auction policies chosen by model name, the way routers expose their thresholds.

``model: sale`` runs the deployment's own ``auction:`` settings (the embedded default: the
recommended configuration, ``bid: answer``, see ``config.embedded_default``). ``sale:<policy>`` runs the
same pool and the same agents with other policy settings (``config.POLICY_FIELDS``: weights,
jury, reserve agent and score, jurors, escalation) — nothing an agent itself reads, so one
pool serves every policy. Built in:

* ``published`` — SALE as published: every agent bids a plan and judges, the shipped default
  weights, no reserve, no escalation.
* ``lean`` — the dearest agent does not bid: it is the reserve, and plans and executes only when
  no cheaper bid scores C − V at or below ``reserve_score``; only the cheaper agents judge.
  Weights and ``reserve_score`` are the deployment's (fitted ones if its config is fitted).
* ``lean_verify`` — ``lean``, and a cheaper winner whose code fails the prompt's own examples
  hands the task to the reserve (``auction.escalate_on_failed_check``).

``serve.policies`` adds named ones (or replaces a built-in), inline or from a fitted config
such as the ``lean_verify.yaml`` that ``sale-ray eval`` writes. Every policy is built and
validated when the gateway starts, so a bad one fails the deployment, not a request.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import POLICY_FIELDS, AuctionConfig, SaleConfig, ServePolicy, Weights, load_config
from ..errors import ConfigError
from .errors import NotFound
from .wire import SALE_MODEL

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class Policy:
    """One way to run the auction: the model name that selects it and the config it runs."""

    model: str
    description: str
    config: SaleConfig


def _dearest(prices: Mapping[str, float]) -> str:
    return max(prices, key=lambda n: prices[n])  # first of equals: pool order decides ties


def builtin(prices: Mapping[str, float]) -> dict[str, ServePolicy]:
    """The built-in policies for a pool whose agents cost ``prices`` ($/Mtok out)."""
    out = {
        "published": ServePolicy(
            description="SALE as published: every agent bids and judges, shipped weights.",
            auction={
                "bid": "plan",
                "weights": Weights().model_dump(),
                "jury": True,
                "reserve_agent": None,
                "reserve_score": 0.0,
                "jurors": None,
                "escalate_on_failed_check": False,
            },
        )
    }
    if len(prices) > 1:
        reserve = _dearest(prices)
        lean = {
            "bid": "plan",
            "reserve_agent": reserve,
            "jurors": [n for n in prices if n != reserve],
            "escalate_on_failed_check": False,
        }
        out["lean"] = ServePolicy(
            description=f"{reserve} does not bid: it answers only when no cheaper bid scores "
            "at or below reserve_score; only cheaper agents judge.",
            auction=lean,
        )
        out["lean_verify"] = ServePolicy(
            description=f"lean, and code that fails the prompt's own examples goes to {reserve}.",
            auction={**lean, "escalate_on_failed_check": True},
        )
    return out


def _apply(base: SaleConfig, name: str, spec: ServePolicy) -> SaleConfig:
    settings: dict = {}
    if spec.config is not None:
        path = Path(spec.config).expanduser()
        if not path.is_absolute():
            raise ConfigError(f"serve.policies.{name}.config: must be an absolute path")
        fitted = load_config(path).auction.model_dump()
        settings.update({k: fitted[k] for k in POLICY_FIELDS})
    settings.update(spec.auction)
    try:
        auction = AuctionConfig.model_validate({**base.auction.model_dump(), **settings})
        return SaleConfig.model_validate({**base.model_dump(), "auction": auction.model_dump()})
    except ValidationError as e:
        raise ConfigError(f"serve.policies.{name}: {e}") from None


def build(config: SaleConfig, prices: Mapping[str, float]) -> dict[str, Policy]:
    """Every model name an auction answers to -> its policy (``sale`` first)."""
    out = {SALE_MODEL: Policy(SALE_MODEL, "The deployment's own auction settings.", config)}
    specs = {**builtin(prices), **config.serve.policies}
    for name, spec in specs.items():
        if not _NAME.match(name):
            raise ConfigError(
                f"serve.policies: {name!r} is not a policy name (lowercase letters, digits, "
                "_ . -; at most 64)"
            )
        model = f"{SALE_MODEL}:{name}"
        out[model] = Policy(model, spec.description, _apply(config, name, spec))
    return out


def install(core: Any, config: SaleConfig, prices: Mapping[str, float]) -> dict[str, Policy]:
    """Build the policies of ``config`` and give their configs to the auctioneer ``core``
    (``policy=`` submits resolve there); returns them (descriptions for listings)."""
    built = build(config, prices)
    core.policies = {m: p.config for m, p in built.items()}
    return built


def resolve(policies: Mapping[str, Policy], model: str) -> Policy:
    """The policy of ``model`` (``sale`` or ``sale:<name>``); 404 naming the known ones."""
    policy = policies.get(model)
    if policy is None:
        raise NotFound(
            f"model {model[:128]!r}: no such policy; known: {', '.join(policies)}",
            param="model",
            code="model_not_found",
        )
    return policy


def is_auction(model: str) -> bool:
    """Does ``model`` name an auction (``sale`` or ``sale:...``) rather than an agent?"""
    return model == SALE_MODEL or model.startswith(SALE_MODEL + ":")
