"""RELIABILITY row 5: a model server that answers 429 + Retry-After, 5xx, hangs, cuts its answer
mid-body, returns non-JSON or a truncated completion. A real HTTP server on 127.0.0.1 drives the
real ChatClient (openai's client and its retries): retries are bounded in count and in time, and
no broken answer ever comes back as a success."""

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sale_ray.agents.agent import Agent
from sale_ray.agents.llm import ChatClient
from sale_ray.config import AgentSpec, AuctionConfig, ExecutionConfig, SaleConfig
from sale_ray.errors import ModelError, ModelHTTPError, ModelTimeout
from sale_ray.types import Task

pytestmark = pytest.mark.integration


def completion(text="ok", finish="stop"):
    return json.dumps(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
    ).encode()


class Script:
    """What the server does with each request, in order (the last action repeats)."""

    def __init__(self):
        self.actions, self.seen = ["ok"], []

    def next(self):
        self.seen.append(time.monotonic())
        return self.actions.pop(0) if len(self.actions) > 1 else self.actions[0]


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *a):
        pass

    def _send(self, code, body, headers=()):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        action = self.script.next()
        if action == "ok":
            self._send(200, completion("def f():\n    return 1"))
        elif action == "length":
            self._send(200, completion("def f():\n    ret", finish="length"))
        elif action.startswith("429"):
            self._send(
                429, b'{"error": {"message": "slow down"}}', [("Retry-After", action.split(":")[1])]
            )
        elif action == "500":
            self._send(500, b'{"error": {"message": "boom"}}')
        elif action == "hang":
            time.sleep(5)
        elif action == "cut":  # promise 2000 bytes, send 40, close
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2000")
            self.end_headers()
            self.wfile.write(completion()[:40])
            self.wfile.flush()
            self.connection.close()
        elif action == "nonjson":
            self._send(200, b"<html>upstream proxy error</html>")


@pytest.fixture()
def server():
    script = Script()
    handler = type("H", (Handler,), {"script": script})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


def chat(url, timeout_s=2.0, max_retries=2):
    async def go():
        c = ChatClient(url, "m", timeout_s=timeout_s, max_retries=max_retries)
        try:
            return await c.chat([{"role": "user", "content": "hi"}], max_tokens=8)
        finally:
            await c.close()

    t0 = time.monotonic()
    try:
        return asyncio.run(go()), time.monotonic() - t0
    except Exception as e:
        return e, time.monotonic() - t0


def test_429_with_retry_after_is_honoured_then_succeeds(server):
    url, script = server
    script.actions = ["429:1", "ok"]
    r, took = chat(url)
    assert r.text.startswith("def f") and len(script.seen) == 2
    assert script.seen[1] - script.seen[0] >= 0.9  # waited as told


@pytest.mark.parametrize("action", ["429:1", "500"])
def test_persistent_429_or_5xx_gives_up_after_a_bounded_count_and_time(server, action):
    url, script = server
    script.actions = [action]
    r, took = chat(url, max_retries=2)
    assert isinstance(r, ModelHTTPError) and action[:3] in str(r)
    assert len(script.seen) == 3 and took < 8


def test_a_huge_retry_after_does_not_park_the_caller(server):
    url, script = server
    script.actions = ["429:3600"]
    r, took = chat(url, max_retries=1)
    assert isinstance(r, ModelHTTPError) and took < 10  # openai ignores Retry-After > 60 s


def test_a_hanging_server_times_out_within_retries_times_timeout(server):
    url, script = server
    script.actions = ["hang"]
    r, took = chat(url, timeout_s=0.5, max_retries=1)
    assert isinstance(r, ModelTimeout)
    # the client retries a timeout too: the bound is (1 + max_retries) x timeout + backoff
    assert len(script.seen) == 2 and took < 2 * 0.5 + 3


@pytest.mark.parametrize("action", ["cut", "nonjson"])
def test_a_cut_or_non_json_answer_is_an_error_never_a_success(server, action):
    url, script = server
    script.actions = [action]
    r, took = chat(url, max_retries=1)
    assert isinstance(r, ModelError), repr(r)  # the model's fault, typed: never our own bug
    assert took < 8


def test_a_non_json_answer_is_a_typed_model_error(server):
    url, script = server
    script.actions = ["nonjson"]
    r, _ = chat(url, max_retries=0)
    assert isinstance(r, ModelError), repr(r)


def test_a_truncated_execution_is_an_error_not_a_success(server):
    url, script = server
    script.actions = ["length"]
    spec = AgentSpec(
        name="api",
        backend="openai",
        base_url=url,
        model="m",
        price_in_per_mtok=1,
        price_out_per_mtok=1,
    )
    cfg = SaleConfig(
        auction=AuctionConfig(execute_timeout_s=10), execution=ExecutionConfig(self_check_turns=0)
    )
    task = Task(id="t", prompt="write f", kind="answer", expected="1")

    async def go():
        a = Agent(spec, cfg)
        await a.start()
        try:
            return await a.execute(task, "plan")
        finally:
            await a.stop()

    ex = asyncio.run(go())
    assert ex.error and "Truncated" in ex.error
    assert ex.usage.completion_tokens == 2  # what was spent is still counted
