"""The endpoint's plain parts, without a server: wire types, error mapping, auth, record store,
metrics and explanations (RELIABILITY rows 10, 11, 13 at the unit level)."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from sale_ray.config import ServeConfig
from sale_ray.errors import ConfigError, ModelHTTPError, ModelTimeout, TruncatedOutput
from sale_ray.serve import explain
from sale_ray.serve.auth import ApiKeys
from sale_ray.serve.errors import (
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UpstreamFailed,
    to_http,
)
from sale_ray.serve.metrics import Metrics
from sale_ray.serve.wire import ChatCompletionRequest, TaskRequest
from sale_ray.types import AuctionRecord, Bid, Execution, ScoredBid, Usage

KEY = "test-key-0123456789abcdef"


def _record(aid: str = "a1", winner: str | None = "cheap") -> AuctionRecord:
    bids = [
        ScoredBid(bid=Bid(agent="cheap", plan="p", usage=Usage(cost_usd=0.001)), score=-1.0),
        ScoredBid(bid=Bid(agent="dear", plan="q", usage=Usage(cost_usd=0.01)), score=-0.5),
        ScoredBid(bid=Bid(agent="slow", rejected="timeout: no bid within 1s")),
    ]
    ex = Execution(agent="cheap", answer="42", usage=Usage(cost_usd=0.002)) if winner else None
    return AuctionRecord(
        auction_id=aid,
        task_id="t",
        kind="answer",
        bids=bids,
        winner=winner,
        provisional_winner=winner,
        execution=ex,
        phase_usage={"bid": Usage(cost_usd=0.011), "execute": Usage(cost_usd=0.002)},
    )


# --- wire -------------------------------------------------------------------------------------
def test_a_chat_request_accepts_openai_shapes_and_refuses_what_we_do_not_implement():
    ok = ChatCompletionRequest.model_validate_json(
        '{"model": "sale", "messages": [{"role": "system", "content": "be brief"},'
        '{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text",'
        ' "text": "there"}]}], "stream": true, "stream_options": {"include_usage": true}}'
    )
    assert ok.messages[-1].text() == "hi there"
    for body, field in [
        ('{"model": "sale", "messages": [], "tools": []}', "tools"),
        ('{"model": "sale", "messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
        (
            '{"model": "sale", "messages": [{"role": "function", "content": "x"}]}',
            "messages.0.role",
        ),
        ('{"model": "sale", "messages": [{"role": "tool", "content": "x"}]}', "tool_call_id"),
        (
            '{"model": "sale", "messages": [{"role": "user", "content": "x"}], "logprobs": true}',
            "logprobs",
        ),
    ]:
        with pytest.raises(ValidationError) as e:
            ChatCompletionRequest.model_validate_json(body)
        status, err, _ = to_http(e.value)
        assert status == 422 and field in err["error"]["message"], err


def test_deeply_nested_or_malformed_json_is_a_422_not_a_crash():
    nested = '{"model": "sale", "messages": ' + "[" * 5000 + "]" * 5000 + "}"
    for body in [nested, "{not json", ""]:
        with pytest.raises(ValidationError) as e:
            ChatCompletionRequest.model_validate_json(body)
        assert to_http(e.value)[0] == 422


def test_a_task_request_is_validated_by_task_and_gets_an_id():
    t = TaskRequest(prompt="add 2 and 2", kind="answer", expected="4").to_task()
    assert t.id.startswith("task-") and t.expected == "4"
    with pytest.raises(ValidationError) as e:
        TaskRequest(id="bad id with spaces", prompt="x").to_task()
    status, body, _ = to_http(e.value)
    assert status == 422 and body["error"]["param"] == "id"
    with pytest.raises(ValidationError) as e:
        TaskRequest(prompt="   ").to_task()
    assert to_http(e.value)[1]["error"]["param"] == "prompt"


# --- errors -> HTTP ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc, status",
    [
        (Unauthorized("x"), 401),
        (Forbidden("x"), 403),
        (NotFound("x"), 404),
        (PayloadTooLarge("x"), 413),
        (RequestTimeout("x"), 408),
        (UpstreamFailed("x"), 502),
        (ModelHTTPError("m: HTTP 500"), 502),
        (TruncatedOutput("cut"), 502),
        (ModelTimeout("slow"), 504),
        (ConfigError("bad"), 400),
        (RuntimeError("secret!"), 500),
    ],
)
def test_every_error_maps_to_one_status_with_an_openai_error_body(exc, status):
    code, body, headers = to_http(exc)
    assert code == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if status == 401:
        assert headers["www-authenticate"].startswith("Bearer")
    if status == 500:
        assert "secret" not in body["error"]["message"]  # foreign exception text is never sent


# --- auth -------------------------------------------------------------------------------------
def test_keys_come_from_an_env_var_or_a_file_and_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEYS", f"{KEY}, other-key-0123456789abcdef")
    f = tmp_path / "keys"
    f.write_text("# ops keys\nfile-key-0123456789abcdef  # rotated 2026\n\n")
    keys = ApiKeys.load(ServeConfig(api_keys_env="MY_KEYS", api_keys_file=str(f)))
    assert len(keys) == 3
    keys.check(f"Bearer {KEY}")
    keys.check("bearer file-key-0123456789abcdef")
    with pytest.raises(Unauthorized):
        keys.check(None)
    with pytest.raises(Unauthorized):
        keys.check(f"Basic {KEY}")
    wrong = "wrong-key-" + "0123456789abcdef"  # a made-up key (built so scanners see no literal)
    with pytest.raises(Forbidden) as e:
        keys.check(f"Bearer {wrong}")
    assert "wrong-key" not in str(e.value)


def test_a_key_file_line_names_the_tenant_and_permissions_of_a_key_or_its_digest(tmp_path):
    trusted = "trusted-key-" + "0123456789abcdef"
    plain = "plain-key-" + "0123456789abcdef"
    digest = hashlib.sha256(trusted.encode()).hexdigest()
    f = tmp_path / "keys"
    f.write_text(f"sha256:{digest} tenant=acme allow=caller_tests  # CI\n{plain}\n")
    keys = ApiKeys.load(ServeConfig(api_keys_env=None, api_keys_file=str(f)))
    acme = keys.check(f"Bearer {trusted}")
    assert acme.tenant == "acme" and acme.may("caller_tests")
    other = keys.check(f"Bearer {plain}")
    assert other.tenant == "default" and not other.may("caller_tests")
    assert trusted not in f.read_text()  # the file can hold digests only: no secret at rest


@pytest.mark.parametrize(
    "line, problem",
    [
        ("sha256:abc tenant=x", "64 hex digits"),
        ("a-key-0123456789abcdef allow=root", "unknown permission 'root'"),
        ("a-key-0123456789abcdef tenant=a/b", "tenant must be"),
        ("a-key-0123456789abcdef owner=me", "expected tenant=NAME"),
    ],
)
def test_a_bad_key_file_line_is_an_error_naming_file_and_line_but_not_the_key(
    tmp_path, line, problem
):
    f = tmp_path / "keys"
    f.write_text(f"# header\n{line}\n")
    with pytest.raises(ConfigError, match=problem) as e:
        ApiKeys.load(ServeConfig(api_keys_env=None, api_keys_file=str(f)))
    assert f"{f}:2" in str(e.value) and "0123456789abcdef" not in str(e.value)


def test_no_key_means_no_endpoint_and_weak_keys_are_refused(monkeypatch, tmp_path):
    monkeypatch.delenv("EMPTY_KEYS", raising=False)
    with pytest.raises(ConfigError, match="no API key"):
        ApiKeys.load(ServeConfig(api_keys_env="EMPTY_KEYS"))
    monkeypatch.setenv("EMPTY_KEYS", "short")
    with pytest.raises(ConfigError) as e:
        ApiKeys.load(ServeConfig(api_keys_env="EMPTY_KEYS"))
    assert "short" not in str(e.value)  # never echo a key, not even a bad one
    with pytest.raises(ConfigError, match="cannot read"):
        ApiKeys.load(ServeConfig(api_keys_env=None, api_keys_file=str(tmp_path / "nope")))
    open_keys = ApiKeys.load(ServeConfig(api_keys_env=None, require_auth=False))
    open_keys.check(None)  # explicitly open: everything passes


def test_keys_are_never_in_the_config():
    with pytest.raises(ValidationError):
        ServeConfig(api_keys=["x"])  # type: ignore[call-arg]


# --- store, metrics, explanations -------------------------------------------------------------
def test_metrics_count_requests_spend_per_phase_and_wins_per_policy():
    m = Metrics()
    m.observe_request("chat", 200, 0.01, "ci")
    m.observe_record(_record("a1"), policy="sale:lean", tenant="ci")
    m.observe_record(_record("a2", winner=None), policy="sale", tenant="ci")
    text = m.render().decode()
    assert 'sale_requests_total{route="chat",status="200",tenant="ci"} 1.0' in text
    assert 'sale_spend_dollars_total{agent="cheap",phase="bid",tenant="ci"} 0.002' in text
    assert 'sale_spend_dollars_total{agent="cheap",phase="execute",tenant="ci"} 0.002' in text
    assert 'sale_auction_wins_total{agent="cheap",policy="sale:lean",tenant="ci"} 1.0' in text
    assert 'sale_auctions_total{outcome="no_winner",policy="sale",tenant="ci"} 1.0' in text


def test_the_explanation_names_the_winner_the_runner_up_and_who_was_out():
    rec = _record()
    info = explain.sale_info(rec)
    assert info.winner == "cheap" and info.cost_usd == pytest.approx(0.013)
    assert "cheap won" in info.reason and "dear" in info.reason and "slow (timeout" in info.reason
    h = explain.headers(info)
    assert h["x-sale-winner"] == "cheap" and h["x-sale-auction-id"] == "a1"
    assert h["x-sale-scores"] == "cheap=-1.0000;dear=-0.5000;slow=rejected"
    assert float(h["x-sale-cost-usd"]) == pytest.approx(0.013)
    h["x-sale-scores"].encode("ascii")  # headers must be ASCII


def test_sale_ray_serve_refuses_to_start_without_a_key(tmp_path, monkeypatch, capsys):
    from sale_ray.cli import main

    monkeypatch.delenv("SALE_RAY_API_KEYS", raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "pool: {agents: [{name: a, backend: openai, model: m, "
        "base_url: 'http://127.0.0.1:9/v1'}]}\n"
    )
    assert main(["serve", "--config", str(cfg)]) == 2  # before Ray or Serve start
    assert "no API key" in capsys.readouterr().err


def test_a_streamed_execution_sends_the_same_prompt_as_execute():
    """execute_stream mirrors execute's prompt: this catches one changing without the other."""
    import asyncio

    from sale_ray.agents.agent import Agent
    from sale_ray.agents.llm import ChatDelta, ChatResult
    from sale_ray.config import AgentSpec, SaleConfig
    from sale_ray.types import Task

    seen: list[list[dict]] = []

    class Capture:  # the ChatClient seam, scripted
        async def chat(self, messages, **kw):
            seen.append(messages)
            return ChatResult("Paris", "stop", 10, 2, 0.01)

        async def chat_stream(self, messages, **kw):
            seen.append(messages)
            yield ChatDelta(text="Par")
            yield ChatDelta(text="is")
            yield ChatDelta(finish_reason="stop", prompt_tokens=10, completion_tokens=2)

    spec = AgentSpec(
        name="a",
        backend="openai",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        price_in_per_mtok=1.0,
        price_out_per_mtok=2.0,
    )
    agent = Agent(spec, SaleConfig(), client=Capture())
    task = Task(id="t", prompt="Capital of France?", kind="answer")

    async def both():
        ex = await agent.execute(task, "look it up")
        items = [x async for x in agent.execute_stream(task, "look it up")]
        return ex, items

    ex, items = asyncio.run(both())
    assert seen[0] == seen[1]
    assert items[:2] == ["Par", "is"]
    assert items[-1].answer == ex.answer == "Paris"
    assert items[-1].usage.cost_usd == ex.usage.cost_usd > 0
