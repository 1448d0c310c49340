"""The response cache: stable keys, hits and misses, Parquet persistence, and the agent seam."""

import asyncio

import pytest

from sale_ray.agents.agent import Agent
from sale_ray.agents.llm import ChatResult, TokenLogprob
from sale_ray.cache import (
    CachedChatClient,
    ResponseCache,
    canonical_request,
    is_hit,
    model_identity,
    open_cache,
    request_key,
)
from sale_ray.config import AgentSpec, CacheConfig, SaleConfig
from sale_ray.errors import ModelTimeout
from sale_ray.types import Task

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "add 1 and 2"}]


class FakeClient:
    """Answers deterministically from the messages; counts real calls; can fail on demand."""

    model = "fake"

    def __init__(self, fail: bool = False, latency_s: float = 0.25):
        self.calls = 0
        self.fail = fail
        self.latency_s = latency_s

    async def chat(
        self,
        messages,
        *,
        max_tokens,
        temperature=0.0,
        top_logprobs=None,
        response_format=None,
        timeout_s=None,
    ):
        self.calls += 1
        if self.fail:
            raise ModelTimeout("fake: too slow")
        text = f"answer to {messages[-1]['content']} ({max_tokens})"
        toks = [TokenLogprob("answer", -0.1, {"answer": -0.1, "reply": -2.5})]
        return ChatResult(
            text=text,
            finish_reason="stop",
            prompt_tokens=17,
            completion_tokens=5,
            latency_s=self.latency_s,
            tokens=toks,
        )

    async def close(self):
        return None


def run(coro):
    return asyncio.run(coro)


def test_key_is_stable_and_covers_model_params_and_messages():
    params = {"max_tokens": 64, "temperature": 0.0, "top_logprobs": 5, "response_format": None}
    k = request_key("m", MSGS, params)
    assert k == request_key("m", [dict(m) for m in MSGS], dict(reversed(params.items())))
    assert len(k) == 64
    assert k != request_key("m2", MSGS, params)
    assert k != request_key("m", MSGS, {**params, "max_tokens": 65})
    assert k != request_key("m", MSGS[:1], params)
    # a None parameter is the same request as an absent one
    assert k == request_key("m", MSGS, {k2: v for k2, v in params.items() if v is not None})
    assert '"v":1' in canonical_request("m", MSGS, params)


def test_model_identity_uses_pinned_weights_not_the_agent_name():
    a = AgentSpec(name="a", model="qwen2.5-coder-0.5b")
    b = AgentSpec(name="b", model="qwen2.5-coder-0.5b")
    assert model_identity(a) == model_identity(b)
    assert "1d9614638d" in model_identity(a)
    api = AgentSpec(name="c", backend="openai", model="gpt", base_url="http://x/v1")
    assert model_identity(api) == "openai:http://x/v1:gpt"


def test_miss_then_hit_returns_the_same_numbers_with_zero_latency(tmp_path):
    inner = FakeClient()
    client = CachedChatClient(inner, ResponseCache(tmp_path), "m")
    live = run(client.chat(MSGS, max_tokens=32, top_logprobs=5))
    again = run(client.chat(MSGS, max_tokens=32, top_logprobs=5))
    assert inner.calls == 1
    assert (
        again.text,
        again.prompt_tokens,
        again.completion_tokens,
        again.tokens,
        again.finish_reason,
    ) == (live.text, live.prompt_tokens, live.completion_tokens, live.tokens, live.finish_reason)
    assert not is_hit(live) and is_hit(again)
    assert again.latency_s == 0.0 < live.latency_s
    assert client.cache.stats.hits == 1 and client.cache.stats.misses == 1
    assert client.cache.stats.saved_tokens == 22
    run(client.chat(MSGS, max_tokens=33))  # another parameter: another entry
    assert inner.calls == 2


def test_a_hit_is_the_caches_own_mark_not_a_zero_latency(tmp_path):
    instant = FakeClient(latency_s=0.0)  # a fast fake or a scripted backend: no time, no cache
    client = CachedChatClient(instant, ResponseCache(tmp_path), "m")
    live = run(client.chat(MSGS, max_tokens=8))
    again = run(client.chat(MSGS, max_tokens=8))
    assert live.latency_s == again.latency_s == 0.0
    assert (live.cached, again.cached) == (False, True)
    assert not is_hit(live) and is_hit(again)


def test_entries_persist_as_parquet_and_reload_in_a_new_process_view(tmp_path):
    client = CachedChatClient(FakeClient(), ResponseCache(tmp_path, flush_every=100), "m")
    run(client.chat(MSGS, max_tokens=8))
    assert not list(tmp_path.glob("*.parquet"))  # buffered until the flush
    run(client.close())
    segs = list(tmp_path.glob("*.parquet"))
    assert len(segs) == 1
    fresh_inner = FakeClient()
    fresh = CachedChatClient(fresh_inner, ResponseCache(tmp_path), "m")
    r = run(fresh.chat(MSGS, max_tokens=8))
    assert fresh_inner.calls == 0 and is_hit(r) and r.tokens[0].top["reply"] == -2.5


def test_compaction_merges_segments_without_losing_entries(tmp_path):
    cache = ResponseCache(tmp_path, flush_every=1)
    client = CachedChatClient(FakeClient(), cache, "m")
    for n in range(3):
        run(client.chat(MSGS, max_tokens=n + 1))
    assert len(list(tmp_path.glob("*.parquet"))) == 3
    cache.compact()
    assert len(list(tmp_path.glob("*.parquet"))) == 1
    assert len(ResponseCache(tmp_path)) == 3


def test_sampled_calls_bypass_the_cache_and_errors_are_never_cached(tmp_path):
    inner = FakeClient()
    client = CachedChatClient(inner, ResponseCache(tmp_path), "m")
    run(client.chat(MSGS, max_tokens=8, temperature=0.7))
    run(client.chat(MSGS, max_tokens=8, temperature=0.7))
    assert inner.calls == 2 and client.cache.stats.bypassed == 2
    failing = CachedChatClient(FakeClient(fail=True), ResponseCache(tmp_path / "f"), "m")
    with pytest.raises(ModelTimeout):
        run(failing.chat(MSGS, max_tokens=8))
    assert len(failing.cache) == 0


def test_open_cache_shares_one_index_per_folder(tmp_path):
    cfg = CacheConfig(enabled=True, path=str(tmp_path))
    assert open_cache(cfg) is open_cache(cfg.model_copy())


def test_agent_uses_the_cache_when_configured_and_live_equals_cached(tmp_path):
    cfg = SaleConfig(cache=CacheConfig(enabled=True, path=str(tmp_path / "agent")))
    spec = AgentSpec(name="qwen-0.5b", model="qwen2.5-coder-0.5b")
    task = Task(id="t", prompt="def add(a, b):\n    'add'\n", entry_point="add")

    def bid_with(inner):
        agent = Agent(spec, cfg, client=inner)
        run(agent.start())
        assert isinstance(agent._client, CachedChatClient)
        return run(agent.bid(task))

    first_inner, second_inner = FakeClient(), FakeClient()
    live = bid_with(first_inner)
    cached = bid_with(second_inner)
    assert first_inner.calls == 1 and second_inner.calls == 0
    assert live.plan == cached.plan and live.entropy == cached.entropy
    assert live.usage.cost_usd == cached.usage.cost_usd > 0
    assert live.usage.total_tokens == cached.usage.total_tokens
    assert cached.usage.latency_s == 0.0 < live.usage.latency_s
    # the hit travels in the usage: what the matrix's cache marks and cache_hit_share read
    assert (live.usage.cached_calls, cached.usage.cached_calls) == (0, 1)
    assert cached.usage.cached and not live.usage.cached
    both = live.usage + cached.usage
    assert (both.calls, both.cached_calls, both.cached) == (2, 1, False)
