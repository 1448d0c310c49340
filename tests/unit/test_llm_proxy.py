"""One LLM pool route without Ray: the proxy app under plain uvicorn in front of the scripted
upstream, called by the openai backend's own client (``ChatClient``, what every ``backend:
openai`` agent uses) and by raw HTTP. Usage passes through as sent and is counted; streams
pass through as they come; faults are typed answers, never a short success."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx2 as httpx
import pytest

from sale_ray.agents.llm import ChatClient
from sale_ray.errors import ModelError, ModelHTTPError
from sale_ray.serve.llm_proxy import UsageLedger, _scan, create_proxy_app, usage_of
from tests.fakes.upstream import AppThread, ScriptedUpstream

MODEL = "m1"


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def upstream():
    up = ScriptedUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def route(upstream):
    ledger = UsageLedger()
    app = AppThread(
        create_proxy_app(upstream.base_url, MODEL, ledger=ledger, request_timeout_s=3)
    ).start()
    yield app.url + "/v1", ledger
    app.stop()


def _chat(base_url: str, **kw):
    async def go():
        client = ChatClient(base_url, MODEL, max_retries=0)
        try:
            return await client.chat(_user(kw.pop("text", "hello")), max_tokens=16, **kw)
        finally:
            await client.close()

    return asyncio.run(go())


def _stream(base_url: str, text: str):
    async def go():
        client = ChatClient(base_url, MODEL, max_retries=0, timeout_s=3)
        try:
            return [d async for d in client.chat_stream(_user(text), max_tokens=16)]
        finally:
            await client.close()

    return asyncio.run(go())


def test_a_completion_comes_back_as_the_upstream_sent_it_and_its_usage_is_counted(route):
    base, ledger = route
    r = _chat(base, text="what is two plus two")
    assert r.text == f"echo({MODEL}): what is two plus two" and r.finish_reason == "stop"
    assert ledger.snapshot() == {
        "requests": 1,
        "streams": 0,
        "errors": 0,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached_tokens": 0,
    }
    assert r.prompt_tokens == 5  # the scripted upstream counts words: it reached it unchanged


def test_logprobs_for_a_bid_pass_through_intact(route):
    base, _ = route
    r = _chat(base, top_logprobs=5)
    assert r.tokens and all(len(t.top) == 5 for t in r.tokens)


def test_a_stream_passes_through_and_its_usage_is_counted_once(route):
    base, ledger = route
    deltas = _stream(base, "one two three")
    text = "".join(d.text for d in deltas)
    assert text == f"echo({MODEL}): one two three" and len(deltas) > 2
    last = deltas[-1]
    assert last.finish_reason == "stop"
    snap = ledger.snapshot()
    assert (snap["requests"], snap["streams"], snap["errors"]) == (1, 1, 0)
    assert (snap["prompt_tokens"], snap["completion_tokens"]) == (
        last.prompt_tokens,
        last.completion_tokens,
    )


def test_a_request_for_another_model_is_a_404_that_never_reaches_the_upstream(route, upstream):
    base, ledger = route
    before = len(upstream.events)
    r = httpx.post(
        base + "/chat/completions",
        json={"model": "other", "messages": _user("[id:wrong] hi")},
        timeout=5,
    )
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert MODEL in err["message"] and "other" not in err["message"]  # input never echoed
    assert len(upstream.events) == before and ledger.requests == 0


def test_a_body_that_is_not_a_json_object_is_a_422(route):
    base, _ = route
    for body in (b"{nope", b"[1, 2]"):
        r = httpx.post(
            base + "/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
            timeout=5,
        )
        assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"


def test_the_models_route_lists_the_one_model_id(route):
    base, _ = route
    data = httpx.get(base + "/models", timeout=5).json()["data"]
    assert [m["id"] for m in data] == [MODEL]


def test_an_upstream_error_status_passes_through_and_is_counted(route):
    base, ledger = route
    with pytest.raises(ModelHTTPError, match="HTTP 503"):
        _chat(base, text="[status:503] hi")
    assert ledger.errors == 1 and ledger.prompt_tokens == 0


def test_a_stream_cut_by_the_upstream_ends_with_an_error_event_never_done(route):
    base, ledger = route
    with pytest.raises(ModelError, match="APIError"):  # the official client raises the event
        _stream(base, "[cut] a b c d e f")
    body = {"model": MODEL, "messages": _user("[cut] a b c d e f"), "stream": True}
    with httpx.stream("POST", base + "/chat/completions", json=body, timeout=5) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert '"content"' in events[1]  # what came before the cut was passed on
    assert json.loads(events[-1][6:])["error"]["type"] == "upstream_error"
    assert "data: [DONE]" not in events and ledger.errors == 2


def test_an_upstream_past_the_deadline_is_a_504_and_its_call_is_closed(route, upstream):
    base, ledger = route
    with pytest.raises(ModelHTTPError, match="HTTP 504"):
        _chat(base, text="[hang] [id:late]")
    assert ledger.errors == 1
    # the proxy closed its upstream request rather than leaving it to run on
    for _ in range(100):
        if ("disconnect", "late") in upstream.events:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert ("disconnect", "late") in upstream.events


def test_an_unreachable_upstream_is_a_502():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # bound, never listening
    app = AppThread(create_proxy_app(dead, MODEL, request_timeout_s=3)).start()
    try:
        r = httpx.post(
            app.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": _user("hi")},
            timeout=5,
        )
    finally:
        app.stop()
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"


def test_usage_is_read_with_llama_cpps_cached_tokens_and_malformed_usage_is_none():
    body = {
        "usage": {
            "prompt_tokens": 97,
            "completion_tokens": 8,
            "total_tokens": 105,
            "prompt_tokens_details": {"cached_tokens": 96},
        },
        "timings": {"cache_n": 96},
    }
    assert usage_of(body) == (97, 8, 96)
    assert usage_of({"usage": {"prompt_tokens": 3, "completion_tokens": 1}}) == (3, 1, 0)
    assert usage_of({"usage": None}) is None and usage_of([]) is None
    assert usage_of({"usage": {"prompt_tokens": "x"}}) is None


def test_a_stream_counts_its_last_usage_only_even_split_across_reads():
    def event(p, c):
        return b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": p,
                                                                 "completion_tokens": c}}).encode()  # fmt: skip

    # running totals on every chunk (vLLM's continuous usage): only the last one counts
    raw = event(10, 1) + b"\n\n" + event(10, 2) + b"\n\n" + event(10, 3) + b"\n\ndata: [DONE]\n\n"
    last: list = []
    buf = b""
    for i in range(0, len(raw), 7):  # arbitrary read boundaries
        buf = _scan(buf + raw[i : i + 7], last)
    assert last == [(10, 3, 0)] and buf == b""
