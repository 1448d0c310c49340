"""The HTTP face of a :class:`~sale_ray.serve.gateway.Gateway`: a FastAPI app.

The same app runs under Ray Serve (``deployment.py``) and under plain uvicorn (unit tests),
so every rule below holds in both:

* auth first (401 / 403), then the body, read with a hard cap (413), then strict parsing (422
  naming the field); every error body comes from :func:`~sale_ray.serve.errors.to_http`;
* each request has a deadline (``serve.request_timeout_s``): past it the work is cancelled —
  model calls included — and the answer is 408 (a stream already started ends with an error
  event instead, never with ``[DONE]``);
* a client that disconnects cancels its work: Serve cancels the handler itself, and under
  servers that do not (uvicorn) the app watches the connection (``watch_disconnect``).

Bodies are parsed by pydantic directly (``model_validate_json``): FastAPI's own body handling
would parse twice, and pydantic's parser bounds nesting depth (a deeply nested body is a 422).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder as jsonable
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from ..tenants import TenantLimits
from .auth import ApiKeys
from .errors import ClientGone, Forbidden, PayloadTooLarge, RequestTimeout, to_http
from .gateway import Chunks, Gateway
from .metrics import CONTENT_TYPE
from .wire import ChatCompletionRequest, TaskRequest

_CANCEL_GRACE_S = 2.0  # how long a timed-out request waits for its model calls to unwind


async def read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The body, refused (413) as soon as it is known to exceed ``limit`` bytes, and within
    the request's deadline (408: a client trickling its body holds nothing for long)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the {limit}-byte limit")
    parts, size = [], 0
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            async for part in request.stream():
                size += len(part)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
                parts.append(part)
    except TimeoutError:
        raise RequestTimeout("request body not received in time") from None
    return b"".join(parts)


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def bounded(
    request: Request,
    work: Awaitable[Any],
    deadline: float,
    limit_s: float,
    watch_disconnect: bool = True,
) -> Any:
    """Await ``work`` unless the deadline passes (408) or the client leaves; either way the
    work is cancelled, and given a moment to cancel its model calls before we answer."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request)) if watch_disconnect else None
    waiting = {task} if watch is None else {task, watch}
    try:
        done, _ = await asyncio.wait(
            waiting,
            timeout=max(0.0, deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    except BaseException:  # we were cancelled (Serve: the client left)
        for t in waiting:
            t.cancel()
        if task.done() and not task.cancelled() and task.exception() is None:
            _abandon(task.result())  # it finished as we were cancelled: release what it started
        raise
    if watch is not None:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.wait({task}, timeout=_CANCEL_GRACE_S)
    if task.done() and not task.cancelled() and task.exception() is None:
        _abandon(task.result())  # it finished as it was cancelled: release what it started
    if watch is not None and watch in done:
        raise ClientGone("client disconnected")
    raise RequestTimeout(f"no answer within {limit_s:g}s; its model calls were cancelled")


def _abandon(result: Any) -> None:
    """Close the stream in a result nobody will send (its model calls stop)."""
    for part in result if isinstance(result, tuple) else (result,):
        if isinstance(part, Chunks):
            asyncio.ensure_future(part.aclose())


class _Stream(StreamingResponse):
    """A StreamingResponse that always closes its chunks: when the client leaves mid-send,
    Starlette abandons the body generator to the garbage collector, and with it the model
    call; and a body never started would never run its own cleanup."""

    def __init__(self, chunks: Chunks, deadline: float, limit_s: float, **kw: Any) -> None:
        super().__init__(_sse(chunks, deadline, limit_s), **kw)
        self.chunks = chunks

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self.chunks.aclose()


def _tenant(request: Request) -> str:
    """The metrics' tenant label: the key's tenant, or ``none`` before a key was checked."""
    identity = getattr(request.state, "identity", None)
    return identity.tenant if identity is not None else "none"


def _limits(request: Request) -> TenantLimits | None:
    """The key's tenant limits (None: none set), which the service holds for every replica."""
    identity = getattr(request.state, "identity", None)
    limits = getattr(identity, "limits", None)
    return None if limits is None or limits == TenantLimits() else limits


def _json(model: BaseModel, headers: dict[str, str] | None = None, status: int = 200) -> Response:
    return Response(model.model_dump_json(), status, headers, media_type="application/json")


async def _sse(chunks: Chunks, deadline: float, limit_s: float) -> AsyncIterator[bytes]:
    """OpenAI's SSE framing; an error mid-stream becomes an ``{"error": ...}`` event (which the
    official client raises) and the stream ends without ``[DONE]``."""
    try:
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise RequestTimeout(f"stream not finished within {limit_s:g}s") from None
            yield b"data: " + chunk.model_dump_json(exclude_none=True).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    except Exception as e:
        _, body, _ = to_http(e)
        yield b"data: " + json.dumps(body).encode() + b"\n\n"
    finally:
        await chunks.aclose()


def create_app(
    gateway: Gateway,
    keys: ApiKeys,
    *,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
    watch_disconnect: bool = True,
) -> FastAPI:
    """The endpoint's routes over ``gateway``; ``on_shutdown`` runs when the server stops.

    ``watch_disconnect=False`` where the server itself cancels a handler whose client left
    (Ray Serve does): there, watching would cost a round trip to Serve's proxy per request.
    """
    limits = gateway.limits
    timeout_s = limits.request_timeout_s

    async def run(request: Request, work: Awaitable[Any], deadline: float) -> Any:
        return await bounded(request, work, deadline, timeout_s, watch_disconnect)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            await on_shutdown()

    app = FastAPI(
        title="sale-ray", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan
    )

    async def answer(
        request: Request,
        route: str,
        work: Callable[[], Awaitable[Response]],
        *,
        public: bool = False,
    ) -> Response:
        t0 = time.perf_counter()
        status = 499  # stays so if we are cancelled (the client left)
        try:
            if not public:
                request.state.identity = keys.check(request.headers.get("authorization"))
            response = await work()
            status = response.status_code
            return response
        except Exception as e:
            status, body, headers = to_http(e)
            return JSONResponse(body, status, headers)
        finally:
            gateway.metrics.observe_request(
                route, status, time.perf_counter() - t0, _tenant(request)
            )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        async def work() -> Response:
            deadline = time.monotonic() + timeout_s
            body = await read_body(request, limits.max_body_bytes, deadline)
            req = ChatCompletionRequest.model_validate_json(body)
            gateway.check_chat(req)
            tenant, key = _tenant(request), request.headers.get("idempotency-key")
            quota = _limits(request)
            if req.stream:
                headers, chunks = await run(
                    request, gateway.chat_stream(req, timeout_s, tenant, key, quota), deadline
                )
                return _Stream(
                    chunks,
                    deadline,
                    timeout_s,
                    media_type="text/event-stream",
                    headers={**headers, "cache-control": "no-cache"},
                )
            completion, headers = await run(
                request, gateway.chat(req, timeout_s, tenant, key, quota), deadline
            )
            return _json(completion, headers)

        return await answer(request, "chat", work)

    @app.post("/v1/tasks")
    async def tasks(request: Request) -> Response:
        async def work() -> Response:
            deadline = time.monotonic() + timeout_s
            body = await read_body(request, limits.max_body_bytes, deadline)
            req = TaskRequest.model_validate_json(body)
            if req.tests is not None and not request.state.identity.may("caller_tests"):
                # caller-written tests are code we would run: only for keys trusted with that
                raise Forbidden(
                    "tests: this API key may not send tests of its own; give it "
                    "allow=caller_tests in serve.api_keys_file (docs/serve.md)",
                    param="tests",
                )
            work = gateway.run_task(req, _tenant(request), _limits(request))
            result, headers = await run(request, work, deadline)
            return _json(result, headers)

        return await answer(request, "tasks", work)

    @app.get("/v1/auctions/{auction_id}")
    async def auction(request: Request, auction_id: str) -> Response:
        async def work() -> Response:
            rec = await gateway.auction(auction_id, request.state.identity.may_read)
            return _json(rec) if isinstance(rec, BaseModel) else JSONResponse(jsonable(rec))

        return await answer(request, "auctions", work)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        async def work() -> Response:
            return _json(gateway.models())

        return await answer(request, "models", work)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        async def work() -> Response:
            return JSONResponse(await gateway.health())

        return await answer(request, "healthz", work, public=True)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        async def work() -> Response:
            return Response(await gateway.render_metrics(), media_type=CONTENT_TYPE)

        return await answer(request, "metrics", work)

    return app
