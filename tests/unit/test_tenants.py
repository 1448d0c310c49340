"""Tenants: an API key names a tenant with a rate and a budget; the service holds them (so they
apply across every replica), attributes spend per tenant, and shows a tenant only its own
auctions. No Ray: the auctioneer in process, the app over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib

import httpx2 as httpx
import openai
import pytest

from sale_ray.agents.agent import Agent
from sale_ray.agents.scripted import ScriptedAgent, scripted_evaluate
from sale_ray.auctioneer import Auctioneer
from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    PoolSpec,
    SaleConfig,
    ScriptedSpec,
    ServeConfig,
)
from sale_ray.errors import ConfigError
from sale_ray.serve.app import create_app
from sale_ray.serve.auth import ApiKeys, parse_key_line
from sale_ray.serve.gateway import Gateway
from sale_ray.serve.handles import InProcessAgent
from sale_ray.tenants import TenantBudgetExhausted, TenantLimits, TenantRateLimited
from sale_ray.types import Task
from tests.fakes.upstream import AppThread, ScriptedUpstream

ACME, BETA, ADMIN = "acme-key-0123456789abcdef", "beta-key-0123456789abcdef", "admin-key-0123456789"


def _digest(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


# --- the key file ---------------------------------------------------------------------------------
def test_a_key_line_carries_the_tenants_rate_budget_and_what_it_may_read():
    _, ident = parse_key_line(f"{_digest(ACME)} tenant=acme rpm=30 budget_usd=2.5", "f:1")
    assert ident.tenant == "acme"
    assert ident.limits == TenantLimits(rpm=30, budget_usd=2.5)
    assert ident.read == "own" and ident.may_read("acme") and not ident.may_read("beta")
    _, admin = parse_key_line(f"{_digest(ADMIN)} tenant=ops read=all", "f:2")
    assert admin.may_read("beta") and admin.limits == TenantLimits()


@pytest.mark.parametrize(
    "attrs, says",
    [
        ("rpm=0", "rpm must be a positive number"),
        ("budget_usd=lots", "budget_usd must be a positive number"),
        ("read=some", "read must be 'own' or 'all'"),
        ("quota=3", "expected tenant=NAME"),
    ],
)
def test_a_bad_limit_in_the_key_file_names_the_line(attrs, says):
    with pytest.raises(ConfigError, match=says) as e:
        parse_key_line(f"{_digest(ACME)} tenant=acme {attrs}", "keys:7")
    assert "keys:7" in str(e.value) and ACME not in str(e.value)


# --- limits held by the auctioneer ------------------------------------------------------------------
def _auctioneer() -> Auctioneer:
    specs = [
        AgentSpec(
            name=n,
            backend="scripted",
            model="s",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            scripted=ScriptedSpec(seed=i),
        )
        for i, (n, p) in enumerate({"a": 0.5, "b": 2.0}.items())
    ]
    cfg = SaleConfig(pool=PoolSpec(agents=specs))
    agents = {s.name: ScriptedAgent(s, cfg) for s in specs}
    prices = {s.name: (s.price_in_per_mtok, s.price_out_per_mtok) for s in specs}
    return Auctioneer(agents, prices, cfg, evaluate=scripted_evaluate)


def _task(i: int, tag: str = "t") -> Task:
    return Task(id=f"{tag}{i}", prompt=f"task {tag} {i}", kind="answer", expected="x")


def test_a_tenant_over_its_rate_is_refused_with_when_to_retry_and_others_go_on():
    auc = _auctioneer()
    slow = TenantLimits(rpm=2)

    async def run():
        for i in range(2):
            await auc.submit(_task(i), tenant="acme", limits=slow)
        with pytest.raises(TenantRateLimited) as e:
            await auc.submit(_task(2), tenant="acme", limits=slow)
        assert e.value.retry_after_s >= 1
        # a retry of an id already auctioned costs no token: it spends nothing
        assert (await auc.submit(_task(0), tenant="acme", limits=slow)).task_id == "t0"
        await auc.submit(_task(3), tenant="beta", limits=slow)  # another tenant's own bucket

    asyncio.run(run())
    assert auc.counts["admitted"] == 3


def test_a_tenants_spend_stays_within_its_budget_plus_one_auction():
    auc = _auctioneer()
    one = auc.auction_estimate(_task(0))
    budget = 2.5 * one  # room for a few auctions' real cost, then not for a reservation

    async def run() -> list:
        done, refused = [], 0
        for i in range(40):
            try:
                done.append(
                    await auc.submit(
                        _task(i), tenant="acme", limits=TenantLimits(budget_usd=budget)
                    )
                )
            except TenantBudgetExhausted:
                refused += 1
        return done, refused

    done, refused = asyncio.run(run())
    spent = auc.tenant_spent["acme"]
    assert refused > 0 and done
    assert spent == pytest.approx(sum(r.cost_usd for r in done))
    assert spent <= budget + one
    assert all(r.tenant == "acme" for r in done)  # the log attributes every record


def test_the_ledger_restores_a_tenants_spend_before_its_first_request():
    auc = _auctioneer()
    auc.restore_spent(0.0, {}, {"acme": 1.0})
    with pytest.raises(TenantBudgetExhausted):
        asyncio.run(auc.submit(_task(0), tenant="acme", limits=TenantLimits(budget_usd=1.0)))


# --- over HTTP ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    up = ScriptedUpstream().start()
    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(
        f"{_digest(ACME)} tenant=acme rpm=3\n{_digest(BETA)} tenant=beta\n"
        f"{_digest(ADMIN)} tenant=ops read=all\n"
    )

    def spec(name: str, price: float) -> AgentSpec:
        return AgentSpec(
            name=name,
            backend="openai",
            base_url=up.base_url,
            model=f"{name}-m",
            price_in_per_mtok=price,
            price_out_per_mtok=2 * price,
        )

    cfg = SaleConfig(
        pool=PoolSpec(agents=[spec("cheap", 0.1), spec("dear", 1.0)]),
        auction=AuctionConfig(bid_timeout_s=5, jury_timeout_s=5),
        serve=ServeConfig(api_keys_env=None, api_keys_file=str(keys)),
    )
    agents = {s.name: Agent(s, cfg) for s in cfg.pool.agents}
    for a in agents.values():
        asyncio.run(a.start())
    gw = Gateway(
        {n: InProcessAgent(a) for n, a in agents.items()},
        {n: (a.price_in, a.price_out) for n, a in agents.items()},
        cfg,
    )
    app = AppThread(create_app(gw, ApiKeys.load(cfg.serve))).start()
    yield app, gw
    app.stop()
    up.stop()


def test_over_http_a_tenant_over_its_rate_gets_429_with_retry_after(server):
    app, gw = server
    c = openai.OpenAI(base_url=app.url + "/v1", api_key=ACME, max_retries=0)
    for i in range(3):
        c.chat.completions.create(model="cheap", messages=[{"role": "user", "content": f"r{i}"}])
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="sale", messages=[{"role": "user", "content": "r3"}])
    assert int(e.value.response.headers["retry-after"]) >= 1
    beta = openai.OpenAI(base_url=app.url + "/v1", api_key=BETA, max_retries=0)
    beta.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "b"}])
    spent = gw.service.core.tenant_spent
    assert spent["acme"] > 0 and spent["beta"] > 0  # passthrough spend is the tenant's too


def test_a_tenant_reads_its_own_auctions_only_and_read_all_reads_every_one(server):
    app, _ = server
    beta = openai.OpenAI(base_url=app.url + "/v1", api_key=BETA, max_retries=0)
    raw = beta.chat.completions.with_raw_response.create(
        model="sale", messages=[{"role": "user", "content": "whose"}]
    )
    aid = raw.headers["x-sale-auction-id"]

    def get(key: str) -> httpx.Response:
        return httpx.get(f"{app.url}/v1/auctions/{aid}", headers={"authorization": f"Bearer {key}"})

    assert get(BETA).status_code == 200 and get(BETA).json()["tenant"] == "beta"
    assert get(ACME).status_code == 404  # as if it did not exist
    assert get(ADMIN).status_code == 200
