"""The LLM pool on a real local Ray: SmolLM2-135M served by llama.cpp behind its Serve route
(``cluster/serve_llm.yaml``), and a real auction through the router whose pool is
``cluster/pools/serve_llm.yaml`` (``backend: openai``) pointed at that route. Every model call
goes through Serve (the replica's ledger counts it), and the tokens and dollars the record
carries are exactly the usage the server reported, priced at each agent's own rates."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import openai
import pytest

from sale_ray.agents.llm import ChatClient
from sale_ray.config import SaleConfig, ServeConfig, parse_yaml
from sale_ray.types import Task, Usage

pytestmark = [pytest.mark.integration, pytest.mark.models]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m"
# Only one llama.cpp server at a time fits this box, so the second agent is the same route
# under another name and price: the auction then has two bids and a jury, and pricing per agent
# is visible in the record.
TWIN, TWIN_PRICE = "smollm2-twin", 0.05


@pytest.fixture(scope="module")
def route(ray_cluster):
    from ray import serve

    from sale_ray.serve.deployment import start_serve
    from sale_ray.serve.llm_pool import deploy, load_llm_pool
    from tests.conftest import require_models

    require_models(MODEL)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    port = start_serve(ServeConfig(port=free))  # or the port of the Serve already running
    (app,) = load_llm_pool(ROOT / "cluster/serve_llm.yaml").select([MODEL])
    # one slot: the agents' concurrency, and a prompt cache that reuses the last prompt
    args = app.args.model_copy(update={"n_parallel": 1, "n_ctx": 2048, "threads": 1})
    app = app.model_copy(update={"args": args})
    routes = deploy([app])
    yield f"http://127.0.0.1:{port}{routes[MODEL]}/v1", serve.get_app_handle(app.name)
    serve.delete(app.name)


def _stats(handle) -> dict[str, int]:
    return handle.stats.remote().result(timeout_s=60)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def _pool(base_url: str) -> SaleConfig:
    """The shipped pool file with its SmolLM2 agent (and its twin) at the test's route."""
    data = parse_yaml((ROOT / "cluster/pools/serve_llm.yaml").read_text())
    (agent,) = [a for a in data["pool"]["agents"] if a["name"] == MODEL]
    agent = {**agent, "base_url": base_url, "max_concurrency": 1}
    twin = {
        **agent,
        "name": TWIN,
        "price_in_per_mtok": TWIN_PRICE,
        "price_out_per_mtok": TWIN_PRICE,
    }
    data["pool"]["agents"] = [agent, twin]
    data["auction"] = {**data["auction"], "plan_max_tokens": 32}
    data["execution"] = {"max_tokens": 48, "self_check_turns": 0}
    data["memory"] = {"enabled": False}  # this test is about the route, not refinement
    return SaleConfig.model_validate(data)


def test_an_auction_through_the_router_goes_through_serve_and_is_priced_from_its_usage(route):
    from sale_ray.batch import run_tasks

    base_url, handle = route
    config = _pool(base_url)
    prices = {a.name: (a.price_in_per_mtok, a.price_out_per_mtok) for a in config.pool.agents}
    task = Task(
        id="llm-pool-capital",
        prompt="What is the capital of France? Answer with one word.",
        kind="answer",
        expected="Paris",
    )
    before = _stats(handle)
    (rec,) = asyncio.run(run_tasks([task], config, concurrency=1, progress=False))
    sent = _delta(_stats(handle), before)

    assert rec.winner in prices and rec.execution is not None, (rec.error, rec.notes)
    assert len([b for b in rec.bids if b.bid.valid]) == 2 and rec.verdicts  # bids and a jury
    calls = [(b.bid.agent, b.bid.usage) for b in rec.bids]
    calls += [(v.juror, v.usage) for v in rec.verdicts]
    calls.append((rec.execution.agent, rec.execution.usage))
    spent = sum((u for _, u in calls), Usage())
    assert spent == sum(rec.phase_usage.values(), Usage())
    # every call the agents made reached the model through the Serve route, and only those
    assert sent["requests"] == spent.calls >= 5 and sent["errors"] == 0
    assert sent["prompt_tokens"] == spent.prompt_tokens > 0
    assert sent["completion_tokens"] == spent.completion_tokens > 0
    # dollars are the server's tokens at each agent's own prices
    for agent, u in calls:
        pin, pout = prices[agent]
        assert u.cost_usd == pytest.approx(
            (u.prompt_tokens * pin + u.completion_tokens * pout) / 1e6
        )
    assert rec.cost_usd == pytest.approx(spent.cost_usd) and rec.cost_usd > 0


def test_streams_and_cached_prompt_tokens_pass_through_serve(route):
    base_url, handle = route
    messages = [
        {"role": "system", "content": "You answer in one short sentence. " * 6},
        {"role": "user", "content": "Name one colour."},
    ]

    async def backend_stream():  # the openai backend's own streaming path (passthrough)
        client = ChatClient(base_url, MODEL, max_retries=0)
        try:
            return [d async for d in client.chat_stream(messages, max_tokens=8)]
        finally:
            await client.close()

    before = _stats(handle)
    deltas = asyncio.run(backend_stream())
    mid = _stats(handle)
    last = deltas[-1]
    assert len(deltas) > 2 and "".join(d.text for d in deltas).strip()  # pieces, not one blob
    assert last.finish_reason in ("stop", "length")
    d = _delta(mid, before)
    assert (d["requests"], d["streams"], d["errors"]) == (1, 1, 0)
    assert (d["prompt_tokens"], d["completion_tokens"]) == (
        last.prompt_tokens,
        last.completion_tokens,
    )

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    whole = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    sent = _delta(_stats(handle), mid)
    usages = [chunks[-1].usage, whole.usage]
    cached = [u.prompt_tokens_details.cached_tokens for u in usages]
    # the same prompt again on the one slot: llama.cpp served it from its cache, and said so
    assert all(c > 0 for c in cached)
    assert sent == {
        "requests": 2,
        "streams": 1,
        "errors": 0,
        "prompt_tokens": sum(u.prompt_tokens for u in usages),
        "completion_tokens": sum(u.completion_tokens for u in usages),
        "cached_tokens": sum(cached),
    }


def test_the_route_answers_for_its_model_only(route):
    base_url, handle = route
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list().data] == [MODEL]
    before = _stats(handle)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="qwen-1.5b", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
    assert _delta(_stats(handle), before)["requests"] == 0
