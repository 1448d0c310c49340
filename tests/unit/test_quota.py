"""Quotas without Ray: token buckets, budgets (reserve, then settle) and the per-agent gate."""

import asyncio

import pytest

from sale_ray.agents.quota import (
    AgentGate,
    Budget,
    BudgetExhausted,
    Estimate,
    RateLimited,
    TokenBucket,
    estimate_call,
)
from sale_ray.agents.scripted import ScriptedAgent
from sale_ray.config import AgentSpec, QuotaSpec, SaleConfig
from sale_ray.types import Task, Usage


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_token_bucket_bursts_one_minute_then_queues_callers_in_order():
    clock = FakeClock()
    b = TokenBucket(60, clock=clock)  # 1 per second, burst 60
    assert all(b.reserve(1, 0) == 0 for _ in range(60))
    assert b.reserve(1, 0.5) is None  # would wait 1 s > 0.5 s: refused, nothing debited
    assert b.reserve(1, 5) == pytest.approx(1.0)
    assert b.reserve(1, 5) == pytest.approx(2.0)  # the next caller queues behind
    clock.t = 10
    assert b.level == pytest.approx(8.0)


def test_token_bucket_adjust_charges_an_underestimate():
    clock = FakeClock()
    b = TokenBucket(600, clock=clock)
    b.reserve(100, 0)
    b.adjust(+300)  # used 400, reserved 100
    assert b.level == pytest.approx(200)


def test_budget_refuses_what_does_not_fit_and_settles_actuals():
    b = Budget(1.0, "run")
    assert b.refusal(0.6) is None
    b.reserve(0.6)
    assert "run budget" in b.refusal(0.6)
    assert b.refusal(0.6, hard=True) is None  # would fit once the reservation settles
    b.settle(0.6, 0.2)
    assert b.spent == pytest.approx(0.2) and b.reserved == 0
    assert b.refusal(0.6) is None and not b.exhausted


def _spec(**quota):
    return AgentSpec(
        name="a",
        backend="scripted",
        model="s",
        max_concurrency=3,
        price_in_per_mtok=1.0,
        price_out_per_mtok=1.0,
        quota=QuotaSpec(**quota),
    )


class Billed:
    def __init__(self, usd, delay=0.0):
        self.usage = Usage(cost_usd=usd, prompt_tokens=10, completion_tokens=10)
        self.delay = delay


def _call(usd, delay, counter=None):
    async def fn():
        if counter is not None:
            counter["now"] += 1
            counter["max"] = max(counter["max"], counter["now"])
        await asyncio.sleep(delay)
        if counter is not None:
            counter["now"] -= 1
        return Billed(usd)

    return fn


def test_gate_bounds_concurrency_across_callers():
    async def main():
        gate = AgentGate(_spec(), 1.0, 1.0, Budget(None, "run"))
        c = {"now": 0, "max": 0}
        await asyncio.gather(*(gate.call(Estimate(1, 1), 5, _call(0, 0.01, c)) for _ in range(20)))
        return c["max"]

    assert asyncio.run(main()) == 3


def test_gate_refuses_past_rpm_with_a_recorded_reason():
    async def main():
        gate = AgentGate(_spec(rpm=2), 1.0, 1.0, Budget(None, "run"))
        ok = [await gate.call(Estimate(1, 1), 0.1, _call(0, 0)) for _ in range(2)]
        with pytest.raises(RateLimited, match="rpm"):
            await gate.call(Estimate(1, 1), 0.1, _call(0, 0))
        return ok, gate.refused

    ok, refused = asyncio.run(main())
    assert len(ok) == 2 and refused == {"rpm": 1}


def test_gate_tpm_settles_on_actual_tokens():
    async def main():
        gate = AgentGate(_spec(tpm=1000), 1.0, 1.0, Budget(None, "run"))
        await gate.call(Estimate(400, 400), 1, _call(0, 0))  # reserved 800, used 20
        return gate.tpm.level

    assert asyncio.run(main()) == pytest.approx(980, abs=1)


@pytest.mark.parametrize("where", ["run", "agent"])
def test_budget_race_many_concurrent_calls_never_overspend(where):
    """RELIABILITY row 7: N concurrent calls against a budget for a few."""
    limit = 0.001
    est = Estimate(100, 100)  # $0.0002 at $1/Mtok

    async def main():
        run = Budget(limit if where == "run" else None, "run")
        gate = AgentGate(
            _spec(**({"budget_usd": limit} if where == "agent" else {})), 1.0, 1.0, run
        )
        # every call really costs what was reserved, and they all arrive at once
        results = await asyncio.gather(
            *(gate.call(est, 0.05, _call(0.0002, 0.01)) for _ in range(200)), return_exceptions=True
        )
        return results, (run if where == "run" else gate.budget)

    results, budget = asyncio.run(main())
    ok = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, BudgetExhausted)]
    assert len(ok) + len(refused) == 200
    assert budget.spent <= limit + budget.largest_reservation + 1e-12
    assert len(ok) == 5 and budget.spent == pytest.approx(limit)
    assert "budget" in str(refused[0]) and budget.reserved == pytest.approx(0)


def test_a_failed_call_is_charged_its_reservation():
    async def main():
        b = Budget(1.0, "run")
        gate = AgentGate(_spec(), 1.0, 1.0, b)

        async def boom():
            raise ConnectionError("actor died after the model may have run")

        with pytest.raises(ConnectionError):
            await gate.call(Estimate(100, 100), 1, boom)
        return b

    b = asyncio.run(main())
    assert b.spent == pytest.approx(0.0002) and b.reserved == 0


def test_estimates_cover_what_scripted_agents_bill():
    cfg = SaleConfig()
    task = Task(id="t", prompt="x" * 2000, kind="code", tests="assert True")
    agent = ScriptedAgent(AgentSpec(name="s", backend="scripted", model="s"), cfg)

    async def main():
        b = await agent.bid(task)
        v = await agent.judge(task, [("s", "p"), ("t", "q")])
        e = await agent.execute(task, "p")
        return b, v, e

    b, v, e = asyncio.run(main())
    assert b.usage.total_tokens <= estimate_call("bid", task, cfg).tokens
    assert v.usage.total_tokens <= estimate_call("judge", task, cfg, 2).tokens
    assert e.usage.total_tokens <= estimate_call("execute", task, cfg).tokens


def test_a_call_given_up_before_it_reached_the_model_costs_nothing_and_frees_its_token():
    """Cancelled while waiting for RPM room (a deadline, a client gone): the model was never
    asked, so nothing is charged and the request token goes back to the bucket."""
    spec = AgentSpec(
        name="a", backend="scripted", model="s", quota=QuotaSpec(rpm=60, budget_usd=1.0)
    )
    run = Budget(None, "run")
    gate = AgentGate(spec, 1.0, 1.0, run)
    called = []

    async def fn():
        called.append(1)
        return None

    async def go():
        for _ in range(60):  # drain the minute's burst
            gate.rpm.reserve(1, 0)
        waiting = asyncio.ensure_future(gate.call(Estimate(100, 100), 5.0, fn, "bid"))
        await asyncio.sleep(0.05)  # it waits ~1 s for a token
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(go())
    assert not called
    assert gate.budget.spent == 0.0 and gate.budget.reserved == 0.0 and run.spent == 0.0
    assert gate.rpm.level == pytest.approx(0.0, abs=0.2)  # its token was given back
