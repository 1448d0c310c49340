"""A conversation keeps its context on a real local model: Serve, an agent actor running
llama.cpp with Qwen2.5-Coder-0.5B, the official ``openai`` client (issue 16's reproduction:
asked for the name given two turns earlier, the endpoint used to answer ``Name``)."""

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

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.slow]

KEY = "serve-conv-key-0d7e3b9a4c2f6e15"
MODEL = "qwen2.5-coder-0.5b"
ADA = [
    {"role": "user", "content": "My name is Ada. Remember it."},
    {"role": "assistant", "content": "OK, Ada."},
    {"role": "user", "content": "What is my name? Answer with one word."},
]


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
        pool=PoolSpec(agents=[AgentSpec(name="qwen-0.5b", model=MODEL, max_concurrency=1)]),
        auction=AuctionConfig(plan_max_tokens=32),
        execution=ExecutionConfig(max_tokens=64),
        serve=ServeConfig(api_keys_env=None, api_keys_file=str(keys), request_timeout_s=400),
    )
    config = own_service(config, "sale-conversation", tmp_path_factory.mktemp("service"))
    serve.run(build_app(config), name="sale-conversation", route_prefix="/conversation")
    yield openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/conversation/v1",
        api_key=KEY,
        max_retries=0,
        timeout=400,
    )
    serve.delete("sale-conversation")
    stop_service("sale-conversation")


def test_an_auction_remembers_a_name_given_earlier_in_the_conversation(client):
    done = client.chat.completions.create(model="sale", messages=ADA)
    answer = done.choices[0].message.content
    assert done.model_extra["sale"]["winner"] == "qwen-0.5b"
    assert answer.strip().strip(".!\"'").lower() == "ada", answer
