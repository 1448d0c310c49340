"""Happy path on a real local model: Serve, an agent actor running llama.cpp with SmolLM2-135M,
and the official ``openai`` client (an auction streamed, passthrough whole and streamed)."""

from __future__ import annotations

import socket

import openai
import pytest

from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    ExecutionConfig,
    PoolSpec,
    SaleConfig,
    ServeConfig,
)

pytestmark = [pytest.mark.integration, pytest.mark.models]

KEY = "serve-models-key-6a1f0e9d2c7b4a83"
MODEL = "smollm2-135m"
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer with one word."}]


@pytest.fixture(scope="module")
def client(ray_cluster, tmp_path_factory):
    from ray import serve

    from sale_ray.serve.deployment import build_app, start_serve
    from tests.conftest import own_service, require_models, stop_service

    require_models(MODEL)
    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(KEY + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    port = start_serve(ServeConfig(port=free))  # or the port of the Serve already running
    config = SaleConfig(
        pool=PoolSpec(agents=[AgentSpec(name=MODEL, model=MODEL, max_concurrency=1)]),
        auction=AuctionConfig(plan_max_tokens=32),
        execution=ExecutionConfig(max_tokens=64),
        serve=ServeConfig(api_keys_env=None, api_keys_file=str(keys), request_timeout_s=240),
    )
    config = own_service(config, "sale-models", tmp_path_factory.mktemp("service"))
    serve.run(build_app(config), name="sale-models", route_prefix="/local")
    yield openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/local/v1", api_key=KEY, max_retries=0, timeout=240
    )
    serve.delete("sale-models")
    stop_service("sale-models")


def test_a_streamed_auction_on_a_real_model_answers_and_explains(client):
    raw = client.chat.completions.with_raw_response.create(
        model="sale", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-sale-winner"] == MODEL and raw.headers["x-sale-auction-id"]
    chunks = list(raw.parse())
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1 and "".join(pieces).strip()  # streamed, not one blob
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert last.choices[0].finish_reason == "stop"
    sale = last.model_extra["sale"]
    assert sale["winner"] == MODEL and sale["cost_usd"] > 0
    assert sale["scores"][0]["score"] is not None and "won" in sale["reason"]
    assert chunks[-1].usage.completion_tokens > 0


def test_passthrough_to_a_real_model_whole_and_streamed(client):
    done = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    assert done.choices[0].message.content and done.usage.completion_tokens > 0
    assert done.choices[0].finish_reason in ("stop", "length")
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens > 0
