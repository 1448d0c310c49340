"""The endpoint over real HTTP on 127.0.0.1, without Ray: the gateway's FastAPI app under plain
uvicorn, real :class:`Agent` objects (``backend: openai``) talking to a scripted upstream, and the
official ``openai`` client. RELIABILITY rows 9 (disconnect), 10 (auth), 11 (no key in logs),
13 (bad bodies), plus 408, upstream faults and cut streams."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import httpx2 as httpx
import openai
import pytest

from sale_ray.agents.agent import Agent
from sale_ray.config import AgentSpec, AuctionConfig, PoolSpec, SaleConfig, ServeConfig
from sale_ray.serve.app import create_app
from sale_ray.serve.auth import ApiKeys
from sale_ray.serve.gateway import Gateway
from sale_ray.serve.handles import InProcessAgent
from tests.fakes.upstream import AppThread, ScriptedUpstream

KEY = "unit-key-5f0c8a2e9b7d4c1a"
WRONG = "wrong-key-77e1d0c4b2a9f3e8"


def _config(base_url: str, **serve: object) -> SaleConfig:
    def spec(name: str, price: float) -> AgentSpec:
        return AgentSpec(
            name=name,
            backend="openai",
            base_url=base_url,
            model=f"{name}-m",
            price_in_per_mtok=price,
            price_out_per_mtok=2 * price,
        )

    return SaleConfig(
        pool=PoolSpec(agents=[spec("cheap", 0.1), spec("dear", 1.0)]),
        auction=AuctionConfig(bid_timeout_s=5, jury_timeout_s=5),
        serve=ServeConfig(**{"request_timeout_s": 5.0, **serve}),
    )


def _serve(config: SaleConfig, keys: ApiKeys | None = None) -> AppThread:
    agents = {s.name: Agent(s, config) for s in config.pool.agents}
    for a in agents.values():
        asyncio.run(a.start())  # builds the client only: no network, no loop binding
    gw = Gateway(
        {n: InProcessAgent(a) for n, a in agents.items()},
        {n: a.price_out for n, a in agents.items()},
        config,
    )
    return AppThread(create_app(gw, keys or ApiKeys.from_keys([KEY]))).start()


@pytest.fixture(scope="module")
def upstream():
    up = ScriptedUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def server(upstream):
    app = _serve(_config(upstream.base_url))
    yield app
    app.stop()


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_models_lists_the_auction_its_policies_and_every_agent(client):
    models = client.models.list().data
    assert [m.id for m in models] == [
        "sale",
        "sale:published",
        "sale:lean",
        "sale:lean_verify",
        "cheap",
        "dear",
    ]
    assert all(m.model_extra["description"] for m in models)


def _lowest_score(sale: dict) -> str:
    return min(sale["scores"], key=lambda s: s["score"])["agent"]


@pytest.mark.parametrize(
    "task, winner",
    [
        # the scripted jury rates dear's plan 5, cheap's 2 (a hash of the model names): the
        # dearer agent's better plan outweighs its 10x price
        ("2+2?", "dear"),
        ("2+2? [best:cheap-m]", "cheap"),  # cheap's plan best: it wins on value and on price
    ],
)
def test_an_auction_answers_in_openai_format_and_explains_itself(client, server, task, winner):
    raw = client.chat.completions.with_raw_response.create(model="sale", messages=_user(task))
    done = raw.parse()
    sale = done.model_extra["sale"]
    assert raw.headers["x-sale-winner"] == sale["winner"] == winner == _lowest_score(sale)
    assert done.choices[0].message.content.startswith(f"echo({winner}-m):")
    assert done.choices[0].finish_reason == "stop" and done.model == "sale"
    assert sale["cost_usd"] > 0
    assert float(raw.headers["x-sale-cost-usd"]) == pytest.approx(sale["cost_usd"])
    assert f"{winner}=-" in raw.headers["x-sale-scores"]
    assert {s["agent"] for s in sale["scores"]} == {"cheap", "dear"}
    assert f"{winner} won with the lowest C − V" in sale["reason"]
    assert done.usage.total_tokens > 0
    rec = httpx.get(
        f"{server.url}/v1/auctions/{raw.headers['x-sale-auction-id']}",
        headers={"authorization": f"Bearer {KEY}"},
    ).json()
    assert rec["winner"] == winner and len(rec["bids"]) == 2 and rec["verdicts"]
    plans = {b["bid"]["agent"]: b["bid"]["plan"] for b in rec["bids"]}
    assert plans["cheap"] != plans["dear"]


def test_a_model_named_after_an_agent_passes_straight_through(client, upstream):
    raw = client.chat.completions.with_raw_response.create(
        model="dear",
        messages=[{"role": "system", "content": "s"}, *_user("hi [id:pt]")],
        max_tokens=7,
        temperature=0.5,
    )
    done = raw.parse()
    assert done.choices[0].message.content == "echo(dear-m): hi [id:pt]"
    assert raw.headers["x-sale-winner"] == "dear" and "x-sale-auction-id" not in raw.headers
    assert done.model_extra["sale"]["cost_usd"] > 0
    assert ("answered", "pt") in upstream.events


@pytest.mark.parametrize("model", ["sale", "cheap"])
def test_streaming_works_with_the_official_client(client, model):
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=_user("stream me please [best:cheap-m]"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("echo(cheap-m):") and "stream me please" in text
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish[-1].choices[0].finish_reason == "stop"
    assert finish[-1].model_extra["sale"]["winner"] == "cheap"
    assert chunks[-1].usage.total_tokens > 0  # include_usage: a last chunk with the usage


def test_a_streamed_auction_runs_the_policy_its_model_names(client):
    raw = client.chat.completions.with_raw_response.create(
        model="sale:lean", messages=_user("stream a policy"), stream=True
    )
    assert raw.headers["x-sale-winner"] == "dear"  # the reserve: cheap's lone bid scores > 0
    chunks = list(raw.parse())
    assert {c.model for c in chunks} == {"sale:lean"}
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert last.model_extra["sale"]["policy"] == "sale:lean"


def test_an_answer_bid_policy_answers_with_the_first_trusted_answer_and_asks_nobody_dearer(
    upstream,
):
    trusted = {"bid": "answer", "answer_trust": {"cheap": {"unchecked": 0.9}}}
    app = _serve(_config(upstream.base_url, policies={"answers": {"auction": trusted}}))
    try:
        c = openai.OpenAI(base_url=app.url + "/v1", api_key=KEY, max_retries=0)
        dear_calls = upstream.calls["dear-m"]
        done = c.chat.completions.create(model="sale:answers", messages=_user("2+2? [id:a1]"))
        # a direct answer asks for logprobs (its entropy is its check on answer tasks): the
        # scripted upstream answers those with its "Plan of <model>" text
        assert done.choices[0].message.content.startswith("Plan of cheap-m")
        assert done.model_extra["sale"]["winner"] == "cheap"
        chunks = list(
            c.chat.completions.create(
                model="sale:answers", messages=_user("stream it [id:a2]"), stream=True
            )
        )
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text.startswith("Plan of cheap-m")
        assert upstream.calls["dear-m"] == dear_calls  # cheap was trusted: dear never asked
        # the deployment's own `sale` trusts nobody unchecked: the dearest answers alone
        done = c.chat.completions.create(model="sale", messages=_user("2+2? [id:a3]"))
        assert done.model_extra["sale"]["winner"] == "dear"
    finally:
        app.stop()


def test_in_answer_mode_the_whole_conversation_reaches_every_direct_answer(upstream):
    from sale_ray.serve.conversation import render
    from sale_ray.serve.wire import ChatCompletionRequest

    app = _serve(_config(upstream.base_url, policies={"answers": {"auction": {"bid": "answer"}}}))
    try:
        c = openai.OpenAI(base_url=app.url + "/v1", api_key=KEY, max_retries=0)
        tag = "conv-answer-7c1d"
        messages = [
            {"role": "system", "content": f"Rules {tag}: answer briefly."},
            {"role": "user", "content": "My name is Ada. Remember it."},
            {"role": "assistant", "content": "OK, Ada."},
            {"role": "user", "content": "What is my name? Answer with one word."},
        ]
        c.chat.completions.create(model="sale:answers", messages=messages)
        task = render(ChatCompletionRequest(model="sale", messages=messages).messages)
        asked = upstream.prompts("bid", tag)  # direct answers ask for logprobs
        assert len(asked) == 1  # nobody trusted unchecked: the dearest answers alone
        assert f"TASK:\n{task}" in asked[0]
        assert all(m["content"] in asked[0] for m in messages)
    finally:
        app.stop()


def test_a_task_returns_its_result_verdict_and_full_record(server):
    r = httpx.post(
        f"{server.url}/v1/tasks",
        headers={"authorization": f"Bearer {KEY}"},
        json={"prompt": "say hi [best:cheap-m]", "kind": "answer", "expected": "hi"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["winner"] == "cheap" and body["answer"].startswith("echo(")
    assert body["passed"] is False  # the echo is not "hi": verified, not assumed
    assert body["record"]["auction_id"] == body["auction_id"] == r.headers["x-sale-auction-id"]
    assert body["sale"]["scores"] and body["cost_usd"] > 0
    assert body["sale"]["policy"] == "sale"


def test_a_task_may_name_its_policy(server):
    url, h = f"{server.url}/v1/tasks", {"authorization": f"Bearer {KEY}"}
    body = {"prompt": "say hi", "kind": "answer", "model": "sale:lean"}
    r = httpx.post(url, headers=h, json=body, timeout=30)
    assert r.status_code == 200, r.text
    # lean: dear is the reserve; cheap's lone, unjudged bid scores above 0, so dear answers
    assert r.json()["sale"]["policy"] == "sale:lean" and r.json()["winner"] == "dear"
    assert r.json()["record"]["verdicts"] == []
    r = httpx.post(url, headers=h, json={**body, "model": "sale:nope"}, timeout=30)
    assert r.status_code == 404 and "sale:lean_verify" in r.json()["error"]["message"]


def test_caller_written_tests_need_a_key_allowed_to_send_them(upstream, tmp_path):
    """RELIABILITY: tests in POST /v1/tasks are code we would run; only trusted keys may."""
    trusted = "trusted-" + KEY
    f = tmp_path / "keys"
    f.write_text(f"{KEY}\n{trusted} tenant=ci allow=caller_tests\n")
    # a far deadline: two sandboxes judge the trusted key's task, and the box may be loaded
    config = _config(upstream.base_url, request_timeout_s=120.0)
    config.serve.api_keys_env, config.serve.api_keys_file = None, str(f)
    app = _serve(config, ApiKeys.load(config.serve))
    body = {
        "prompt": 'def f():\n    """Return 1."""\n [best:cheap-m]',
        "entry_point": "f",
        "tests": "def check(f):\n    assert f() == 1\n",
    }
    try:
        r = httpx.post(f"{app.url}/v1/tasks", headers=_auth(KEY), json=body, timeout=30)
        assert r.status_code == 403 and r.json()["error"]["param"] == "tests", r.text
        assert "allow=caller_tests" in r.json()["error"]["message"]
        r = httpx.post(f"{app.url}/v1/tasks", headers=_auth(trusted), json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["record"]["evaluation"] is not None  # its tests were run
        no_tests = {k: v for k, v in body.items() if k != "tests"}
        r = httpx.post(f"{app.url}/v1/tasks", headers=_auth(KEY), json=no_tests, timeout=30)
        assert r.status_code == 200, r.text  # without tests of its own, any key may
    finally:
        app.stop()


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_auth_401_without_key_403_with_wrong_key_and_the_key_is_never_echoed(server, caplog):
    caplog.set_level(logging.DEBUG)
    url = f"{server.url}/v1/chat/completions"
    body = {"model": "cheap", "messages": _user("x")}
    r = httpx.post(url, json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = httpx.post(url, json=body, headers={"authorization": f"Bearer {WRONG}"})
    assert r.status_code == 403
    assert WRONG not in r.text and WRONG not in str(r.headers)
    for path in ["/v1/models", "/metrics", "/v1/auctions/x"]:
        assert httpx.get(server.url + path).status_code == 401
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"  # for load balancers
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key=WRONG, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        bad.chat.completions.create(model="sale", messages=_user("x"))
    assert WRONG not in str(e.value)
    ok = httpx.post(url, json=body, headers={"authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and KEY not in ok.text
    assert WRONG not in caplog.text and KEY not in caplog.text


def test_bad_bodies_get_4xx_naming_the_field(upstream):
    app = _serve(_config(upstream.base_url, max_body_bytes=4096, max_prompt_chars=100))
    h = {"authorization": f"Bearer {KEY}"}
    url = f"{app.url}/v1/chat/completions"
    try:
        cases = [
            (json.dumps({"model": "sale", "messages": _user("x" * 5000)}), 413, None),
            (json.dumps({"model": "sale", "messages": _user("x" * 101)}), 422, "messages"),
            (json.dumps({"model": "sale", "messages": _user("x"), "tools": []}), 422, "tools"),
            (json.dumps({"model": "sale", "messages": _user("   ")}), 422, "messages"),
            (json.dumps({"model": "nope", "messages": _user("x")}), 404, "model"),
            (json.dumps({"model": "cheap", "messages": _user("x"), "sale": {}}), 422, "sale"),
            (
                json.dumps(
                    {"model": "sale", "messages": _user("x"), "sale": {"task_id": "bad id"}}
                ),
                422,
                "sale.task_id",
            ),
            ('{"model": "sale", "messages": ' + "[" * 1500 + "]" * 1500 + "}", 422, None),
            ("{oops", 422, None),
        ]
        for body, status, param in cases:
            r = httpx.post(url, content=body, headers={**h, "content-type": "application/json"})
            assert r.status_code == status, (body[:80], r.text)
            err = r.json()["error"]
            assert err["message"]
            if param:
                assert err["param"] == param, err
        for body, param in [
            ({"prompt": "x", "bin": 9}, "bin"),
            ({"prompt": " "}, "prompt"),
            ({"prompt": "x" * 101, "kind": "answer"}, "prompt"),
            ({"prompt": "x", "kind": "essay"}, "kind"),
        ]:
            r = httpx.post(f"{app.url}/v1/tasks", headers=h, json=body)
            assert r.status_code == 422 and r.json()["error"]["param"] == param, r.text
        nested = '{"prompt": "x", "metadata": ' + "[" * 1500 + "]" * 1500 + "}"
        r = httpx.post(f"{app.url}/v1/tasks", headers=h, content=nested)
        assert r.status_code == 422
        r = httpx.get(f"{app.url}/v1/auctions/no-such-auction", headers=h)
        assert r.status_code == 404 and r.json()["error"]["param"] == "auction_id"
        chunked = httpx.post(url, headers=h, content=iter([b"{" + b" " * 3000, b" " * 3000]))
        assert chunked.status_code == 413  # no content-length: counted as it arrives
    finally:
        app.stop()


@pytest.mark.parametrize(
    "mark, status",
    [("[status:500]", 502), ("[status:429]", 502), ("[garbage]", 502), ("[cut]", 502)],
)
def test_upstream_failures_are_502_never_a_success(client, mark, status):
    for model in ["cheap", "sale"]:
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model=model, messages=_user(f"x {mark}"))
        assert e.value.status_code == status


def test_a_length_cut_is_an_answer_for_passthrough_but_a_failure_for_an_auction(client):
    r = client.chat.completions.create(model="cheap", messages=_user("x [length]"))
    assert r.choices[0].finish_reason == "length"  # the caller chose max_tokens
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="sale", messages=_user("x [length]"))
    assert e.value.status_code == 502 and "TruncatedOutput" in str(e.value)


@pytest.mark.parametrize("model", ["cheap", "sale"])
def test_a_stream_cut_upstream_ends_in_an_error_not_a_finish(client, model):
    stream = client.chat.completions.create(
        model=model, messages=_user("one two three [cut]"), stream=True
    )
    got = []
    with pytest.raises(openai.APIError):
        for c in stream:
            got.append(c)
    assert not any(c.choices and c.choices[0].finish_reason for c in got)


def test_a_slow_request_answers_408_and_its_model_call_is_cancelled(upstream):
    app = _serve(_config(upstream.base_url, request_timeout_s=1.0))
    # the upstream never answers [hang]: only the 1 s deadline can answer before the client's
    # own 30 s timeout (which would raise APITimeoutError, not a status error)
    c = openai.OpenAI(base_url=app.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
    try:
        for model, tag in [("cheap", "t1"), ("sale", "t2")]:
            with pytest.raises(openai.APIStatusError) as e:
                c.chat.completions.create(model=model, messages=_user(f"x [hang][id:{tag}]"))
            assert e.value.status_code == 408
            assert upstream.wait_for("disconnect", tag, 15), upstream.events[-5:]
        stream = c.chat.completions.create(
            model="cheap", messages=_user("a b c [drip:0.4]"), stream=True
        )
        with pytest.raises(openai.APIError, match="not finished within"):
            list(stream)  # started in time, could not finish in time: an error event
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
            sock.sendall(  # a body that trickles: 10 of 100 bytes, then nothing
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
                + f"authorization: Bearer {KEY}\r\n".encode()
                + b'content-type: application/json\r\ncontent-length: 100\r\n\r\n{"model":'
            )
            assert sock.recv(4096).startswith(b"HTTP/1.1 408")
    finally:
        app.stop()


def test_a_client_that_disconnects_cancels_the_upstream_call(server, upstream):
    url = f"{server.url}/v1/chat/completions"
    h = {"authorization": f"Bearer {KEY}"}
    for model, tag in [("cheap", "d1"), ("sale", "d2")]:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                url,
                headers=h,
                timeout=0.5,
                json={"model": model, "messages": _user(f"x [hang][id:{tag}]")},
            )
        assert upstream.wait_for("disconnect", tag, 15), upstream.events[-5:]
    for model, tag in [("cheap", "d3"), ("sale", "d4")]:
        body = {
            "model": model,
            "stream": True,
            "messages": _user(f"w1 w2 w3 w4 w5 w6 w7 [drip:1][id:{tag}]"),
        }
        with httpx.stream("POST", url, headers=h, json=body, timeout=10) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        assert upstream.wait_for("disconnect", tag, 15), upstream.events[-5:]


def test_metrics_count_requests_spend_and_wins(client, server):
    client.chat.completions.create(model="sale", messages=_user("count me"))
    text = httpx.get(server.url + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    assert 'sale_requests_total{route="chat",status="200",tenant="default"}' in text
    assert 'sale_spend_dollars_total{agent="cheap",phase="bid",tenant="default"}' in text
    assert 'sale_auction_wins_total{agent="' in text
    assert "sale_request_duration_seconds_bucket" in text
    assert 'sale_auction_phase_duration_seconds_bucket{le="+Inf",phase="jury"}' in text
