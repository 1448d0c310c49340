"""The endpoint on Ray Serve over real HTTP on 127.0.0.1: agent actors (``backend: openai``)
talking to a scripted upstream, the official ``openai`` client, Serve's backpressure.
RELIABILITY rows 8 (overload), 9 (disconnect), 10 (auth), 11 (no key in Ray's logs), 13."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sale_ray.config import AgentSpec, AuctionConfig, PoolSpec, SaleConfig, ServeConfig
from sale_ray.memory.config import MemoryConfig
from sale_ray.serve.conversation import render
from sale_ray.serve.wire import ChatCompletionRequest
from sale_ray.service.config import ServiceConfig
from sale_ray.service.handle import down
from tests.fakes.upstream import ScriptedUpstream

pytestmark = pytest.mark.integration

KEY = "serve-it-key-3b9e5d7a1c0f4e62"
WRONG = "serve-it-wrong-8d2c6f0a9e1b7d35"
APP, PREFIX = "sale-it", "/it"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def upstream():
    up = ScriptedUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def serve_port(ray_cluster):
    from sale_ray.serve.deployment import start_serve

    return start_serve(ServeConfig(port=_free_port()))


@pytest.fixture(scope="module")
def deploy(serve_port, upstream, tmp_path_factory):
    """Deploys an app (two agents, ``cheap`` and ``dear``, over the scripted upstream) on the
    session's Serve; returns its base URL once every door has answered once."""
    from ray import serve

    from sale_ray.serve.deployment import build_app

    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"# test key\n{KEY}\n")  # a file: replicas read it, whatever their env
    apps = []

    def spec(name: str, price: float) -> AgentSpec:
        return AgentSpec(
            name=name,
            backend="openai",
            base_url=upstream.base_url,
            model=f"{name}-m",
            price_in_per_mtok=price,
            price_out_per_mtok=2 * price,
        )

    def make(name: str, prefix: str, **limits) -> str:
        state = tmp_path_factory.mktemp(name)
        config = SaleConfig(
            pool=PoolSpec(agents=[spec("cheap", 0.1), spec("dear", 1.0)]),
            auction=AuctionConfig(bid_timeout_s=5, jury_timeout_s=5),
            serve=ServeConfig(api_keys_env=None, api_keys_file=str(keys), **limits),
            # the memory's part online is tested in test_service.py; here every prompt is counted
            memory=MemoryConfig(enabled=False),
            # each app its own service (its own limits), its ledger and log in a temp folder
            service=ServiceConfig(
                name=name, log_uri=str(state / "log"), ledger_uri=str(state / "ledger.json")
            ),
        )
        serve.run(build_app(config), name=name, route_prefix=prefix)
        apps.append(name)
        url = f"http://127.0.0.1:{serve_port}{prefix}"
        warm = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=3)
        for model in ["cheap", "dear", "sale"]:  # first calls import and connect: no deadline
            warm.chat.completions.create(model=model, messages=_user("warm up"))
        return url

    yield make
    for name in apps:
        serve.delete(name)
        asyncio.run(down(name))


@pytest.fixture(scope="module")
def base(deploy):
    """The app most tests use: a tight queue and a 3 s deadline."""
    return deploy(
        APP,
        PREFIX,
        request_timeout_s=3.0,
        max_ongoing_requests=2,
        max_queued_requests=1,
        retry_after_s=2,
    )


@pytest.fixture(scope="module")
def long_base(deploy):
    """An app whose deadline (60 s) is far off: only a disconnect can end its calls early."""
    return deploy(APP + "-long", "/long", request_timeout_s=60.0)


@pytest.fixture
def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_the_official_client_works_unchanged_through_serve(client, base):
    assert [m.id for m in client.models.list()] == [
        "sale",
        "sale:published",
        "sale:lean",
        "sale:lean_verify",
        "cheap",
        "dear",
    ]
    raw = client.chat.completions.with_raw_response.create(model="sale", messages=_user("hi"))
    done = raw.parse()
    # the scripted jury rates dear's plan 5 and cheap's 2: worth dear's 10x price
    assert raw.headers["x-sale-winner"] == "dear" == done.model_extra["sale"]["winner"]
    assert done.choices[0].message.content.startswith("echo(dear-m):")
    rec = httpx.get(
        f"{base}/v1/auctions/{raw.headers['x-sale-auction-id']}",
        headers={"authorization": f"Bearer {KEY}"},
    ).json()
    assert {b["bid"]["agent"] for b in rec["bids"]} == {"cheap", "dear"}
    assert (
        client.chat.completions.create(model="dear", messages=_user("pass"))
        .choices[0]
        .message.content
        == "echo(dear-m): pass"
    )
    for model in ["sale", "dear"]:
        chunks = list(
            client.chat.completions.create(model=model, messages=_user("s t r"), stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith("echo(") and "s t r" in text
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert chunks[-1].model_extra["sale"]["cost_usd"] > 0


def test_overload_answers_fast_with_retry_after_and_admitted_requests_finish(base):
    def call(i: int) -> tuple[int, str | None, float]:
        t0 = time.monotonic()
        r = httpx.post(
            f"{base}/v1/chat/completions",
            timeout=30,
            headers={"authorization": f"Bearer {KEY}"},
            json={"model": "cheap", "messages": _user(f"[slow:1.5][id:o{i}]")},
        )
        return r.status_code, r.headers.get("retry-after"), time.monotonic() - t0

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(6)))
    shed = [r for r in results if r[0] == 503]
    done = [r for r in results if r[0] == 200]
    assert shed and done and len(shed) + len(done) == 6, results
    # shed at once (faster than any admitted request could be), with Retry-After
    assert all(ra == "2" and dt < min(d for *_, d in done) for _, ra, dt in shed), results
    # 2 run at once and at least 1 may wait; Serve's queue bound is per caller and best effort,
    # so the exact split varies, but nothing beyond shedding fails


def test_a_slow_request_answers_408_and_cancels_its_model_call(client, upstream):
    # [hang] is never answered: only the 3 s deadline can answer before the client's 30 s
    for model, tag in [("cheap", "st1"), ("sale", "st2")]:
        with pytest.raises(openai.APIStatusError) as e:
            client.with_options(timeout=30).chat.completions.create(
                model=model, messages=_user(f"[hang][id:{tag}]")
            )
        assert e.value.status_code == 408
        assert upstream.wait_for("disconnect", tag, 15), upstream.events[-6:]


def _gone_without_answer(upstream: ScriptedUpstream, tag: str) -> bool:
    """The upstream call ``tag`` was closed by our side before it answered."""
    return upstream.wait_for("disconnect", tag, 15) and ("answered", tag) not in upstream.events


def test_a_client_disconnect_cancels_the_model_call_through_serve(long_base, upstream):
    """The client leaves only once the upstream call is open, so the call must be closed by the
    disconnect: this app's deadline (60 s) and the scripted answer (30 s away, or a 1 s drip of
    12 chunks) are both far off, so nothing else could close it before ``wait_for`` gives up."""
    url, h = f"{long_base}/v1/chat/completions", {"authorization": f"Bearer {KEY}"}

    async def leave_once_upstream_is_called(model: str, tag: str) -> None:
        body = {"model": model, "messages": _user(f"[slow:30][id:{tag}]")}
        async with httpx.AsyncClient(timeout=60) as c:
            call = asyncio.ensure_future(c.post(url, headers=h, json=body))
            seen = await asyncio.to_thread(upstream.wait_for, "request", tag, 30)
            call.cancel()  # closes the connection: the client has left
            await asyncio.gather(call, return_exceptions=True)
        assert seen, upstream.events[-6:]

    for model, tag in [("cheap", "sd1"), ("sale", "sd2")]:
        asyncio.run(leave_once_upstream_is_called(model, tag))
        assert _gone_without_answer(upstream, tag), upstream.events[-6:]
    for model, tag in [("cheap", "sd3"), ("sale", "sd4")]:
        words = " ".join("abcdefghijkl")
        body = {"model": model, "stream": True, "messages": _user(f"{words} [drip:1][id:{tag}]")}
        with httpx.stream("POST", url, headers=h, json=body, timeout=60) as r:
            assert r.status_code == 200
            # leave at the first word: the winner's upstream stream is open by then (for an
            # auction the first event goes out when the winner starts, before it calls upstream)
            assert any('"a ' in line for line in r.iter_lines()), tag
        assert _gone_without_answer(upstream, tag), upstream.events[-6:]


def test_auth_limits_and_no_key_in_any_ray_log(base, client):
    import ray

    url = f"{base}/v1/chat/completions"
    body = {"model": "cheap", "messages": _user("x")}
    assert httpx.post(url, json=body).status_code == 401
    r = httpx.post(url, json=body, headers={"authorization": f"Bearer {WRONG}"})
    assert r.status_code == 403 and WRONG not in r.text
    h = {"authorization": f"Bearer {KEY}"}
    r = httpx.post(url, headers=h, json={"model": "cheap", "messages": _user("x" * 2_000_000)})
    assert r.status_code == 413
    r = httpx.post(url, headers=h, json={**body, "temperature": 9})
    assert r.status_code == 422 and r.json()["error"]["param"] == "temperature"
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="cheap", messages=_user("[status:500]"))
    assert e.value.status_code == 502
    metrics = httpx.get(f"{base}/metrics", headers=h).text
    samples = [s for f in text_string_to_metric_families(metrics) for s in f.samples]
    spend = {
        (s.labels["agent"], s.labels["phase"])
        for s in samples
        if s.name == "sale_spend_dollars_total" and s.value > 0
    }
    assert {("cheap", "bid"), ("dear", "jury"), ("cheap", "passthrough")} <= spend, spend
    assert 'status="401",tenant="none"' in metrics and 'status="403",tenant="none"' in metrics
    time.sleep(1.0)  # let Ray's log monitors flush
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    scanned = 0
    for f in logs.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            scanned += 1
            assert KEY.encode() not in data and WRONG.encode() not in data, f
    assert scanned > 5


# --- conversations and policies (issue 16) ------------------------------------------------------
def test_the_whole_conversation_reaches_every_bid_every_juror_and_the_execution(client, upstream):
    """System prompt, user and assistant turns, a tool call and its result: every prompt of the
    auction carries all of them, as the one rendered task (docs/serve.md, Conversations)."""
    tag = "conv-5e2a"
    call = {"id": "call_9", "type": "function", "function": {"name": "save", "arguments": "{}"}}
    messages = [
        {"role": "system", "content": f"Rules {tag}: answer briefly."},
        {"role": "user", "content": "My name is Ada. Remember it."},
        {"role": "assistant", "content": "Saving it.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": "saved: Ada"},
        {"role": "assistant", "content": "OK, Ada."},
        {"role": "user", "content": "What is my name? Answer with one word."},
    ]
    done = client.chat.completions.create(model="sale", messages=messages)
    task = render(ChatCompletionRequest(model="sale", messages=messages).messages)
    bids, jurors = upstream.prompts("bid", tag), upstream.prompts("jury", tag)
    executions = upstream.prompts("answer", tag)
    assert len(bids) == 2 and len(jurors) == 2 and len(executions) == 1, upstream.bodies
    for prompt in bids + jurors:  # as delimited data inside the prompt's <task> block
        assert f"<task>\n{task}\n</task>" in prompt
    assert f"TASK:\n{task}" in executions[0]
    for m in messages:
        assert m["content"] in task
    assert done.choices[0].message.content.startswith(f"echo({done.model_extra['sale']['winner']}")


def test_a_conversation_over_the_token_budget_is_a_400_naming_the_limit(client, upstream):
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"[id:budget] {'x' * 900}"}
        for i in range(9)
    ]
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="sale", messages=turns)
    err = e.value.body
    assert e.value.status_code == 400 and err["code"] == "context_length_exceeded"
    assert "serve.max_conversation_tokens = 2048" in err["message"]
    assert re.search(r"about \d{4} tokens", err["message"]), err
    assert not upstream.prompts("bid", "[id:budget]")  # refused before any model was asked


def test_the_policy_is_in_the_model_name(client, base):
    cards = {m.id: m.model_extra["description"] for m in client.models.list()}
    assert "dear does not bid" in cards["sale:lean"] and cards["sale:published"]
    h = {"authorization": f"Bearer {KEY}"}
    records = {}
    for model in ["sale", "sale:lean"]:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=_user(f"policy {model}")
        )
        done = raw.parse()
        assert done.model == model == done.model_extra["sale"]["policy"]
        aid = raw.headers["x-sale-auction-id"]
        records[model] = httpx.get(f"{base}/v1/auctions/{aid}", headers=h).json()
    # sale: both bid and both judge; sale:lean: dear is the reserve (bids only when cheap's bid
    # scores above reserve_score 0, which a lone unjudged bid does), nobody judges
    assert len(records["sale"]["verdicts"]) == 2
    lean = records["sale:lean"]
    assert [b["bid"]["agent"] for b in lean["bids"]] == ["cheap", "dear"]
    assert lean["verdicts"] == [] and lean["bids"][1]["score"] == 0.0
    assert lean["winner"] == "dear"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="sale:xyz", messages=_user("x"))
    assert e.value.body["code"] == "model_not_found"
    assert "sale:lean" in e.value.body["message"] and "sale:published" in e.value.body["message"]
