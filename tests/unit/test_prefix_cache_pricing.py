"""Prompt tokens the model server's prefix cache served are billed at their own price, as
hosted APIs bill them, and a response-cache replay bills them exactly as the live call did."""

import asyncio
from types import SimpleNamespace

import pytest

from sale_ray.agents.agent import Agent
from sale_ray.agents.llm import ChatResult, prefix_cached
from sale_ray.cache import CachedChatClient, ResponseCache
from sale_ray.config import AgentSpec, SaleConfig
from sale_ray.serve.gateway import _wire_usage

MSGS = [{"role": "user", "content": "hi"}]


class CachingServer:
    """Answers like llama.cpp's server: 257 prompt tokens, 250 of them from its prefix cache."""

    model = "fake"

    async def chat(self, messages, **kw):
        return ChatResult("ok", "stop", 257, 3, 0.1, cached_prompt_tokens=250)

    async def close(self):
        return None


def _agent(**prices):
    spec = AgentSpec(
        name="a",
        model="m",
        backend="openai",
        base_url="http://127.0.0.1:9/v1",
        price_in_per_mtok=1.0,
        price_out_per_mtok=2.0,
        **prices,
    )
    return Agent(spec, SaleConfig())


@pytest.mark.parametrize(
    "usage,expected",
    [
        (SimpleNamespace(prompt_tokens_details=SimpleNamespace(cached_tokens=250)), 250),
        (SimpleNamespace(prompt_tokens_details={"cached_tokens": 12}), 12),
        (SimpleNamespace(prompt_tokens_details=None), 0),  # the server does not say
        (SimpleNamespace(), 0),
        (None, 0),
    ],
)
def test_the_cached_prompt_tokens_are_read_where_openai_llama_cpp_and_vllm_put_them(
    usage, expected
):
    assert prefix_cached(usage) == expected


def test_prefix_cached_tokens_cost_the_cached_price_and_the_rest_the_prompt_price():
    r = ChatResult("ok", "stop", 257, 3, 0.1, cached_prompt_tokens=250)
    u = _agent(price_cached_in_per_mtok=0.1)._usage(r)
    assert u.cached_prompt_tokens == 250
    assert u.cost_usd == pytest.approx((7 * 1.0 + 250 * 0.1 + 3 * 2.0) / 1e6)
    # no cached price set: no discount (what llama.cpp on your own machine bills)
    plain = _agent()._usage(r)
    assert plain.cost_usd == pytest.approx((257 * 1.0 + 3 * 2.0) / 1e6)
    assert (u + plain).cached_prompt_tokens == 500
    assert _wire_usage(u).prompt_tokens_details.cached_tokens == 250


def test_a_response_cache_replay_bills_the_prefix_cache_as_the_live_call_did(tmp_path):
    client = CachedChatClient(CachingServer(), ResponseCache(tmp_path), "m")
    live = asyncio.run(client.chat(MSGS, max_tokens=8))
    client.cache.flush()  # to a Parquet segment; a new cache reads it back from disk
    again = asyncio.run(
        CachedChatClient(CachingServer(), ResponseCache(tmp_path), "m").chat(MSGS, max_tokens=8)
    )
    assert again.cached and not live.cached
    assert again.cached_prompt_tokens == live.cached_prompt_tokens == 250
