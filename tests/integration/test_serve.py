"""The endpoint on Ray Serve over real HTTP on 127.0.0.1: agent actors (``backend: openai``)
talking to a scripted upstream, the official ``openai`` client, Serve's backpressure.
RELIABILITY rows 8 (overload), 9 (disconnect), 10 (auth), 11 (no key in Ray's logs), 13."""

from __future__ import annotations

import asyncio
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from sale_ray.config import AgentSpec, AuctionConfig, PoolSpec, SaleConfig, ServeConfig
from sale_ray.serve.scripted import ScriptedUpstream

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
        config = SaleConfig(
            pool=PoolSpec(agents=[spec("cheap", 0.1), spec("dear", 1.0)]),
            auction=AuctionConfig(bid_timeout_s=5, jury_timeout_s=5),
            serve=ServeConfig(api_keys_env=None, api_keys_file=str(keys), **limits),
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
    assert [m.id for m in client.models.list()] == ["sale", "cheap", "dear"]
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
    assert 'sale_spend_usd_total{agent="cheap"}' in metrics
    assert 'status="401"' in metrics and 'status="403"' in metrics
    time.sleep(1.0)  # let Ray's log monitors flush
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    scanned = 0
    for f in logs.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            scanned += 1
            assert KEY.encode() not in data and WRONG.encode() not in data, f
    assert scanned > 5
