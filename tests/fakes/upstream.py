"""A scripted OpenAI-compatible model server on 127.0.0.1, for fault tests and benchmarks.

Plain asyncio HTTP/1.1 (keep-alive, chunked SSE), so every fault is exactly what it says: no
framework retries or buffers in between. It runs in a background thread (tests: inspect
:attr:`ScriptedUpstream.events`) or as a process (``python -m tests.fakes.upstream`` from the
repo root, which prints ``PORT <n>``; the benchmark's zero-latency upstream).

What a ``POST /v1/chat/completions`` gets depends on the request:

* ``logprobs`` set (a bid): a short plan with per-token top-k logprobs, distinct per model: it
  names the model and a quality q in 1..5 (``[best:M]`` in the task: model M's plan has q = 5
  and every other plan q = 1; otherwise q is a stable hash of the model name), and the higher
  q, the surer its tokens (lower entropy).
* ``response_format`` set (a jury call): each plan scored by its quality q, ``{"A": q_A, ...}``
  (3 for a plan whose quality it cannot read). So the decision an auction should reach follows
  from the prices and the qualities, and a test can assert it.
* otherwise (execution, passthrough): ``echo(<model>): <last user message>``, shaped by markers
  in the last user message: ``[slow:S]`` answer after S s; ``[hang]`` never answer;
  ``[status:N]`` answer HTTP N (429 carries ``Retry-After: 0``); ``[garbage]`` a non-JSON 200;
  ``[cut]`` close the connection mid-answer (a stream without its finish chunk); ``[length]``
  finish_reason ``length``; ``[drip:S]`` S s between stream chunks; ``[id:X]`` a tag for events.

Events (``(kind, tag)``): ``request``, ``answered``, ``disconnect`` (the client closed the
connection before the answer was complete), ``cut``. Every chat request's body is kept too, by
the part it plays (:attr:`ScriptedUpstream.bodies`: ``("bid" | "jury" | "answer", body)``), so
a test can read exactly the prompts the models were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import threading
import time
import zlib
from collections import Counter, deque
from typing import Any

_MARK = re.compile(r"\[(slow|hang|status|garbage|cut|length|drip|id|best)(?::([\w.\-]+))?\]")
_PLAN_BLOCK = re.compile(r'<plan id="(\w+)">(.*?)</plan>', re.S)
_QUALITY = re.compile(r"\(quality (\d)\)")
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _all_text(req: dict) -> str:
    return "\n".join(_text(m.get("content")) for m in req.get("messages", []))


def plan_quality(model: str, task_text: str) -> int:
    """The quality (1..5) of ``model``'s scripted plan for a task (see the module docstring)."""
    marks = dict(_MARK.findall(task_text))
    if "best" in marks:
        return 5 if marks["best"] == model else 1
    return 1 + zlib.crc32(model.encode()) % 5


def plan_tokens(model: str, task_text: str) -> list[tuple[str, float]]:
    """``model``'s scripted plan as (token, logprob of the chosen token): surer when better."""
    q = plan_quality(model, task_text)
    words = ["Plan", f" of {model}", ":", " parse", " the", " task", ",", " compute", " it"]
    words += [",", " check", " it", f" (quality {q})", "."]
    return [(w, math.log(0.4 + 0.1 * q)) for w in words]


def _jury_scores(prompt: str, labels: list[str]) -> dict[str, int]:
    found = {lab: _QUALITY.search(body) for lab, body in _PLAN_BLOCK.findall(prompt)}
    return {lab: int(m.group(1)) if (m := found.get(lab)) else 3 for lab in labels}


class ScriptedUpstream:
    """The server. ``start()`` returns once it listens; ``base_url`` ends in ``/v1``."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.events: list[tuple[str, str]] = []
        # bounded: the benchmark's upstream serves many thousands of requests
        self.bodies: deque[tuple[str, dict]] = deque(maxlen=2000)
        self.calls: Counter[str] = Counter()  # chat requests per model, never bounded
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> ScriptedUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._listen())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="scripted-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def _event(self, kind: str, tag: str) -> None:
        with self._cond:
            self.events.append((kind, tag))
            self._cond.notify_all()

    def prompts(self, part: str, containing: str) -> list[str]:
        """The whole text (every message) of each ``part`` request that contains ``containing``."""
        with self._cond:
            texts = [_all_text(req) for p, req in self.bodies if p == part]
        return [t for t in texts if containing in t]

    def wait_for(self, kind: str, tag: str, timeout_s: float = 10.0) -> bool:
        """Block until event ``(kind, tag)`` happened (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (kind, tag) not in self.events:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # --- HTTP -----------------------------------------------------------------------------------
    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                if not await self._dispatch(method, path, body, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _dispatch(
        self,
        method: str,
        path: str,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        if method == "GET" and path.rstrip("/").endswith("/models"):
            return await self._json(writer, 200, {"object": "list", "data": []})
        if method == "GET" and path.startswith("/health"):
            return await self._json(writer, 200, {"status": "ok"})
        if method != "POST" or not path.endswith("/chat/completions"):
            return await self._json(writer, 404, {"error": {"message": "not found"}})
        req = json.loads(body)
        part = "jury" if req.get("response_format") else "bid" if req.get("logprobs") else "answer"
        with self._cond:
            self.bodies.append((part, req))
            self.calls[str(req.get("model"))] += 1
        if req.get("response_format"):
            labels = req["response_format"]["json_schema"]["schema"]["required"]
            scores = _jury_scores(_all_text(req), labels)
            return await self._json(writer, 200, _completion(req, json.dumps(scores), "stop"))
        if req.get("logprobs"):
            plan = plan_tokens(str(req.get("model")), _all_text(req))
            return await self._json(writer, 200, _completion(req, plan, "stop", True))
        return await self._answer(req, reader, writer)

    async def _answer(
        self, req: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        users = [m for m in req.get("messages", []) if m.get("role") == "user"]
        last = _text(users[-1].get("content")) if users else ""
        marks = dict(_MARK.findall(last))
        tag = marks.get("id", "")
        self._event("request", tag)
        wait = None if "hang" in marks else float(marks.get("slow") or 0)
        if (wait is None or wait > 0) and not await _pause(reader, wait):
            self._event("disconnect", tag)
            return False
        if "status" in marks:
            code = int(marks["status"])
            extra = {"retry-after": "0"} if code == 429 else {}
            self._event("answered", tag)
            return await self._json(
                writer, code, {"error": {"message": "scripted", "type": "scripted"}}, extra
            )
        if "garbage" in marks:
            self._event("answered", tag)
            return await _send(writer, 200, b"<html>not json</html>", "text/html")
        text = f"echo({req.get('model')}): {last[:200]}"
        finish = "length" if "length" in marks else "stop"
        if not req.get("stream"):
            payload = json.dumps(_completion(req, text, finish)).encode()
            if "cut" in marks:
                head = (
                    f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(payload)}\r\n\r\n"
                )
                writer.write(head.encode() + payload[: len(payload) // 3])
                await writer.drain()
                self._event("cut", tag)
                return False
            self._event("answered", tag)
            return await _send(writer, 200, payload, "application/json")
        return await self._stream(req, text, finish, marks, reader, writer)

    async def _stream(
        self,
        req: dict,
        text: str,
        finish: str,
        marks: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        tag, drip = marks.get("id", ""), float(marks.get("drip") or 0)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        words = re.findall(r"\S+\s*", text) or [""]
        base = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.get("model"),
        }
        events = [
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            }
        ]
        events += [
            {**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
            for w in words
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (req.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": _usage(req, len(words))})
        for i, ev in enumerate(events):
            if "cut" in marks and i == 3:
                await writer.drain()
                self._event("cut", tag)
                return False  # closes mid-stream: no finish chunk, no terminating chunk
            if drip and i > 0 and not await _pause(reader, drip):
                self._event("disconnect", tag)
                return False
            _chunk(writer, f"data: {json.dumps(ev)}\n\n".encode())
            try:
                await writer.drain()
            except ConnectionError:
                self._event("disconnect", tag)
                return False
        _chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        self._event("answered", tag)
        return True

    async def _json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        obj: Any,
        extra: dict[str, str] | None = None,
    ) -> bool:
        return await _send(writer, status, json.dumps(obj).encode(), "application/json", extra)


async def _pause(reader: asyncio.StreamReader, seconds: float | None) -> bool:
    """Wait ``seconds`` (None: forever); False as soon as the client closes its connection."""
    try:
        data = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    except ConnectionError:
        return False
    return bool(data)  # b'' = EOF: the client went away


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    payload: bytes,
    ctype: str,
    extra: dict[str, str] | None = None,
) -> bool:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\ncontent-type: {ctype}\r\n"
        f"content-length: {len(payload)}\r\n"
    )
    head += "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
    writer.write(head.encode() + b"\r\n" + payload)
    await writer.drain()
    return True


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _usage(req: dict, completion: int) -> dict[str, int]:
    prompt = sum(len(_text(m.get("content")).split()) for m in req.get("messages", []))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(
    req: dict, text: str | list[tuple[str, float]], finish: str, logprobs: bool = False
) -> dict:
    """A chat completion; ``text`` given as (token, logprob) pairs carries those logprobs."""
    tokens = text if isinstance(text, list) else None
    content = "".join(t for t, _ in tokens) if tokens is not None else text
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish,
        "logprobs": None,
    }
    n = len(content.split())
    if logprobs and tokens is not None:
        k = int(req.get("top_logprobs") or 1)
        choice["logprobs"] = {"content": [_logprob(t, lp, k) for t, lp in tokens]}
        n = len(tokens)
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model"),
        "choices": [choice],
        "usage": _usage(req, n),
    }


def _logprob(token: str, logprob: float, k: int) -> dict:
    """One token with k alternatives: the chosen one first, the rest sharing what is left."""
    rest = max(1e-6, 1 - math.exp(logprob)) / max(1, k - 1)
    top = [{"token": token, "logprob": logprob, "bytes": None}]
    top += [{"token": f"t{j}", "logprob": math.log(rest), "bytes": None} for j in range(1, k)]
    return {"token": token, "logprob": logprob, "bytes": None, "top_logprobs": top}


def main() -> None:
    """Run as a process: prints ``PORT <n>`` once listening, serves until killed."""
    p = argparse.ArgumentParser(description="scripted OpenAI-compatible server on 127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()

    async def run() -> None:
        up = ScriptedUpstream(args.port)
        await up._listen()
        print(f"PORT {up.port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


class AppThread:
    """Any ASGI app under plain uvicorn on 127.0.0.1 in a background thread (tests, benchmark).

    The socket is bound before the thread starts, so ``port`` is known and no other process can
    take it in between."""

    def __init__(self, app: Any) -> None:
        import socket

        import uvicorn

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._sock]}, name="app-thread", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(10)
        self._sock.close()


if __name__ == "__main__":
    main()
