"""The HTTP face of one model route of the LLM pool: forward OpenAI-compatible chat requests to
one model server and count the usage it reports. A FastAPI app, no Ray (``llm_pool.py`` puts it
behind Serve; unit tests run it under plain uvicorn).

    POST /v1/chat/completions   forwarded to the upstream byte for byte, whole or streamed
    GET  /v1/models             the one model id this route serves
    GET  /health                the upstream's own health (llama.cpp: 503 while loading)

Why bytes, not parsed models: the router prices every call from the upstream's ``usage``, and
a re-serialised body would keep only the fields our wire types know (llama.cpp adds
``usage.prompt_tokens_details.cached_tokens`` and ``timings``; logprobs must arrive intact for
the bids' entropy). The request body is parsed once, to check its ``model`` and ``stream``; the
response is parsed only to add its usage to the :class:`UsageLedger`.

Nothing from the caller is forwarded but the body: no ``Authorization`` header (a caller's key
is not the model server's business) and nothing is logged of a body. A stream that breaks, or
runs past the deadline, ends with an ``{"error": ...}`` event and never ``[DONE]`` (the same
rule as the gateway's streams), so a cut answer never reads as a finished one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .app import read_body
from .errors import HTTPProblem, InvalidRequest, NotFound, UpstreamFailed, to_http

_PASSED_HEADERS = ("content-type", "retry-after")  # of the upstream's answer, to the caller
_CONNECT_TIMEOUT_S = 10.0


@dataclass
class UsageLedger:
    """What one replica forwarded, and the usage its upstream reported for it."""

    requests: int = 0  # chat requests sent upstream
    streams: int = 0  # of which streamed
    errors: int = 0  # upstream status >= 400, unreachable, broken stream, past the deadline
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens the upstream served from its cache (llama.cpp)

    def add(self, usage: tuple[int, int, int] | None) -> None:
        """Add one answer's ``(prompt, completion, cached)`` tokens (``None``: no usage)."""
        if usage is not None:
            self.prompt_tokens += usage[0]
            self.completion_tokens += usage[1]
            self.cached_tokens += usage[2]

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict (what ``LlamaCppModel.stats`` returns)."""
        return asdict(self)


def usage_of(body: Any) -> tuple[int, int, int] | None:
    """``(prompt, completion, cached)`` tokens of a completion or chunk, ``None`` without usage.

    ``cached`` is OpenAI's ``usage.prompt_tokens_details.cached_tokens`` (llama.cpp reports it;
    0 where absent). Malformed usage counts as none: the caller still gets the body as sent.
    """
    u = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(u, dict):
        return None
    details = u.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    try:
        return (
            int(u.get("prompt_tokens") or 0),
            int(u.get("completion_tokens") or 0),
            int(cached or 0),
        )
    except (TypeError, ValueError):
        return None


def _check(body: bytes, model_id: str) -> bool:
    """Whether the request streams; raises 422 for a body that is not a JSON object and 404
    for a request naming another model (as vLLM does), so a pool pointed at the wrong route
    fails loudly instead of being answered by the wrong model."""
    try:
        req = json.loads(body)
    except ValueError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(req, dict):
        raise InvalidRequest("request body must be a JSON object")
    model = req.get("model")
    if model is not None and model != model_id:
        # the caller's value is not echoed (errors.py): the route names what it serves
        raise NotFound(
            f"this route serves model {model_id!r} only", param="model", code="model_not_found"
        )
    return req.get("stream") is True


def _error(exc: BaseException) -> JSONResponse:
    status, body, headers = to_http(exc)
    return JSONResponse(body, status, headers)


def _sse_error(exc: BaseException) -> bytes:
    _, body, _ = to_http(exc)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def _failure(exc: BaseException) -> BaseException:
    """The typed error a transport failure or a deadline answers with (502 / 504)."""
    import httpx2 as httpx

    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return TimeoutError("past the route's request_timeout_s")
    return UpstreamFailed(f"model server unreachable or broken ({type(exc).__name__})")


def _scan(buf: bytes, last: list[tuple[int, int, int]]) -> bytes:
    """Read the complete SSE lines of ``buf`` for usage (kept in ``last``); return the rest.

    Only the last usage of a stream counts: servers that report usage on every chunk
    (vLLM's ``continuous_usage_stats``) report running totals, not increments."""
    *lines, rest = buf.split(b"\n")
    for line in lines:
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                u = usage_of(json.loads(line[5:]))
            except ValueError:
                continue
            if u is not None:
                last[:] = [u]
    return rest


class _Relay(StreamingResponse):
    """An upstream SSE stream passed on as it arrives, counted into the ledger at its end.

    The upstream response is closed however the relay ends (finished, broken, past the
    deadline, or the client gone: Serve cancels the handler, and Starlette may abandon the body
    iterator), so the model server stops generating for nobody."""

    def __init__(self, upstream: Any, ledger: UsageLedger, deadline: float) -> None:
        self.upstream = upstream
        headers = {"cache-control": "no-cache"}
        super().__init__(
            self._relay(ledger, deadline), media_type="text/event-stream", headers=headers
        )

    async def _relay(self, ledger: UsageLedger, deadline: float) -> AsyncIterator[bytes]:
        import httpx2 as httpx

        buf, last = b"", []
        parts = self.upstream.aiter_bytes()  # decoded: a compressed upstream is unpacked
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        part = await anext(parts)
                except StopAsyncIteration:
                    break
                buf = _scan(buf + part, last)
                yield part
            _scan(buf + b"\n", last)
        except (TimeoutError, httpx.HTTPError) as e:
            ledger.errors += 1
            yield _sse_error(_failure(e))
        finally:
            ledger.add(last[0] if last else None)  # what was generated is spent, cut or not
            await self.upstream.aclose()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.upstream.aclose()


def create_proxy_app(
    upstream_url: str,
    model_id: str,
    *,
    ledger: UsageLedger | None = None,
    request_timeout_s: float = 300.0,
    max_body_bytes: int = 4_000_000,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The routes of one model: chat completions forwarded to ``upstream_url`` (an
    OpenAI-compatible base URL ending in ``/v1``), answering for ``model_id`` only.

    ``request_timeout_s`` bounds a whole request, a stream included (504, or an error event
    once a stream has started); bodies over ``max_body_bytes`` are a 413. ``on_shutdown``
    runs when the app stops (the deployment stops its llama.cpp server there).
    """
    import httpx2 as httpx

    ledger = ledger if ledger is not None else UsageLedger()
    base = upstream_url.rstrip("/")
    root = base.removesuffix("/v1")
    created = int(time.time())
    client: httpx.AsyncClient | None = None

    def upstream() -> httpx.AsyncClient:
        nonlocal client
        if client is None:  # created on first use: bound to the loop that serves requests
            client = httpx.AsyncClient(
                # loopback traffic must not go through an HTTP(S)_PROXY from the environment
                trust_env=False,
                timeout=httpx.Timeout(request_timeout_s, connect=_CONNECT_TIMEOUT_S),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )
        return client

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if client is not None:
            await client.aclose()
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(
        title=f"sale-ray llm {model_id}",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        deadline = time.monotonic() + request_timeout_s
        try:
            body = await read_body(request, max_body_bytes, deadline)
            stream = _check(body, model_id)
        except HTTPProblem as e:
            return _error(e)
        ledger.requests += 1
        ledger.streams += int(stream)
        req = upstream().build_request(
            "POST", base + "/chat/completions", content=body,
            headers={"content-type": "application/json"},
        )  # fmt: skip
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                resp = await upstream().send(req, stream=True)
        except (TimeoutError, httpx.HTTPError) as e:
            ledger.errors += 1
            return _error(_failure(e))
        if stream and resp.status_code == 200:
            return _Relay(resp, ledger, deadline)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                raw = await resp.aread()
        except (TimeoutError, httpx.HTTPError) as e:
            ledger.errors += 1
            return _error(_failure(e))
        finally:
            await resp.aclose()
        if resp.status_code >= 400:
            ledger.errors += 1
        else:
            try:
                ledger.add(usage_of(json.loads(raw)))
            except ValueError:
                pass  # not JSON: passed on as is, the caller's client calls it malformed
        headers = {k: v for k in _PASSED_HEADERS if (v := resp.headers.get(k)) is not None}
        return Response(raw, resp.status_code, headers)

    @app.get("/v1/models")
    async def models() -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": model_id, "object": "model", "created": created, "owned_by": "sale-ray"}
                ],
            }
        )

    @app.get("/health")
    async def health() -> Response:
        try:
            r = await upstream().get(root + "/health", timeout=_CONNECT_TIMEOUT_S)
        except httpx.HTTPError as e:
            return _error(_failure(e))
        return JSONResponse({"status": "ok" if r.status_code == 200 else "loading"}, r.status_code)

    return app
