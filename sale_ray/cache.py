"""Content-addressed response cache: a temperature-0 rerun costs no model time.

A model call is identified by what determines its answer: the model's identity (catalog name and
the GGUF's pinned sha256 for local models; endpoint and model id for an API), the request
parameters (``max_tokens``, ``temperature``, ``top_logprobs``, ``response_format``) and the
messages. The sha256 of their canonical JSON is the key. Timeouts are not part of the key: they
decide whether an answer arrives, not what it says.

Storage is a folder of Parquet segments (:data:`CACHE_SCHEMA`). Each process appends its own
segments (a unique file name, written to a temp file and renamed), so several agent actors can
share one folder without locks; a reader loads every segment it finds. Entries are immutable and
content-addressed, so duplicates across segments are harmless (the first one read wins), and
:meth:`ResponseCache.compact` merges them.

A hit returns the stored :class:`~sale_ray.agents.llm.ChatResult` unchanged — same text, same
token counts, same logprobs, hence the same cost and the same auction arithmetic as the live run —
except ``latency_s = 0.0`` (no model time was spent) and ``cached = True``. That flag, and only
that flag, is how a hit shows: the agent carries it into :class:`~sale_ray.types.Usage`
(``cached_calls``), the evaluation matrix records ``*_cached`` per phase from it, and
:class:`CacheStats` counts hits. A zero latency is not a hit: scripted agents and fast fakes
report zero latency without any cache.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .agents.llm import ChatResult, TokenLogprob
from .config import AgentSpec, CacheConfig

KEY_VERSION = 1  # bump when the key recipe changes: old entries then simply never match

CACHE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("model", pa.string()),
        ("request", pa.string()),  # canonical JSON of the keyed request (for audits)
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("latency_s", pa.float64()),  # the live call's latency, kept for reference
        ("tokens", pa.string()),  # JSON [[token, logprob, {alt: logprob}], ...]
        ("created_at", pa.float64()),
        ("cached_prompt_tokens", pa.int64()),  # prefix-cache tokens (null in older segments)
    ]
)


def canonical_request(
    model_key: str, messages: list[dict[str, str]], params: dict[str, Any]
) -> str:
    """The canonical JSON of a request: sorted keys, no whitespace, ``None`` params dropped."""
    body = {
        "v": KEY_VERSION,
        "model": model_key,
        "params": {k: v for k, v in sorted(params.items()) if v is not None},
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(model_key: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """sha256 (hex) of :func:`canonical_request`."""
    return hashlib.sha256(canonical_request(model_key, messages, params).encode()).hexdigest()


def model_identity(spec: AgentSpec) -> str:
    """What identifies an agent's model for caching (not its name: two agents may share one).

    Local models are keyed by their pinned weights (a new GGUF gets new keys); the local server's
    port changes every start, so it is not part of the key. API models by endpoint and model id.
    """
    if spec.backend == "local":
        from .agents.catalog import get_model

        return f"local:{spec.model}:{get_model(spec.model).sha256}"
    return f"{spec.backend}:{spec.base_url or ''}:{spec.model}"


@dataclass
class CacheStats:
    """Counters of one cache in one process."""

    hits: int = 0
    misses: int = 0
    bypassed: int = 0  # calls not cacheable (temperature > 0 with deterministic_only)
    saved_tokens: int = 0  # prompt + completion tokens a hit did not have to generate


def _encode_tokens(tokens: list[TokenLogprob]) -> str:
    return json.dumps([[t.token, t.logprob, t.top] for t in tokens], ensure_ascii=False)


def _decode_tokens(raw: str | None) -> list[TokenLogprob]:
    if not raw:
        return []
    return [TokenLogprob(tok, lp, dict(top)) for tok, lp, top in json.loads(raw)]


class ResponseCache:
    """An in-memory index over a folder of Parquet segments; new entries are buffered and
    flushed as a new segment every ``flush_every`` entries, on :meth:`flush` and at exit."""

    def __init__(self, path: str | Path, flush_every: int = 16) -> None:
        self.path = Path(path).expanduser()
        self.flush_every = flush_every
        self.stats = CacheStats()
        self._entries: dict[str, dict[str, Any]] = {}
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._load()

    def _segments(self) -> list[Path]:
        return sorted(self.path.glob("*.parquet")) if self.path.is_dir() else []

    def _load(self) -> None:
        for seg in self._segments():
            try:
                rows = pq.read_table(seg, schema=CACHE_SCHEMA).to_pylist()
            except (pa.ArrowException, OSError):
                continue  # a foreign or damaged file: ignore it rather than fail every run
            for r in rows:
                self._entries.setdefault(r["key"], r)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ChatResult | None:
        """The stored result for ``key``, marked ``cached`` (``latency_s`` = 0: a hit costs no
        model time)."""
        with self._lock:
            r = self._entries.get(key)
        if r is None:
            return None
        return ChatResult(
            text=r["text"],
            finish_reason=r["finish_reason"],
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            latency_s=0.0,
            tokens=_decode_tokens(r["tokens"]),
            cached=True,
            cached_prompt_tokens=r.get("cached_prompt_tokens") or 0,
        )

    def put(self, key: str, model_key: str, request: str, result: ChatResult) -> None:
        """Remember ``result``; an existing entry for ``key`` is kept (entries never change)."""
        row = {
            "key": key,
            "model": model_key,
            "request": request,
            "text": result.text,
            "finish_reason": result.finish_reason,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "latency_s": result.latency_s,
            "tokens": _encode_tokens(result.tokens),
            "created_at": time.time(),
            "cached_prompt_tokens": result.cached_prompt_tokens,
        }
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = row
            self._pending.append(row)
            full = len(self._pending) >= self.flush_every
        if full:
            self.flush()

    def flush(self) -> Path | None:
        """Write buffered entries as one new segment (atomic rename); the segment's path."""
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return None
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.path / f".{name}.tmp"
        pq.write_table(pa.Table.from_pylist(rows, schema=CACHE_SCHEMA), tmp)
        os.replace(tmp, self.path / name)  # readers never see half a segment
        return self.path / name

    def compact(self) -> Path | None:
        """Merge every segment (and the buffer) into one; other writers should be stopped."""
        self.flush()
        old = self._segments()
        for seg in old:  # pick up entries other processes wrote since we loaded
            for r in pq.read_table(seg, schema=CACHE_SCHEMA).to_pylist():
                self._entries.setdefault(r["key"], r)
        with self._lock:
            self._pending = list(self._entries.values())
        merged = self.flush()
        for seg in old:
            seg.unlink(missing_ok=True)
        return merged


_OPEN: dict[Path, ResponseCache] = {}
_OPEN_LOCK = threading.Lock()


def open_cache(cfg: CacheConfig) -> ResponseCache:
    """The process-wide cache for ``cfg.path`` (agents in one process share one index)."""
    path = Path(cfg.path).expanduser().resolve()
    with _OPEN_LOCK:
        cache = _OPEN.get(path)
        if cache is None:
            cache = _OPEN[path] = ResponseCache(path, cfg.flush_every)
        return cache


@atexit.register
def _flush_all() -> None:  # a Ray actor killed after stop() has already flushed; this is a net
    for cache in list(_OPEN.values()):
        try:
            cache.flush()
        except Exception:  # noqa: BLE001 - never turn interpreter exit into a traceback
            pass


class CachedChatClient:
    """A :class:`~sale_ray.agents.llm.ChatClient` look-alike that answers from the cache first.

    Errors (timeouts, HTTP failures) are never cached: the next run tries again.
    """

    is_cached = True

    def __init__(
        self, inner: Any, cache: ResponseCache, model_key: str, *, deterministic_only: bool = True
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.model_key = model_key
        self.deterministic_only = deterministic_only
        self.model = getattr(inner, "model", model_key)

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        response_format: dict | None = None,
        timeout_s: float | None = None,
    ) -> ChatResult:
        """Same contract as ``ChatClient.chat``."""
        call = {
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_logprobs": top_logprobs,
            "response_format": response_format,
        }
        if self.deterministic_only and temperature != 0:
            self.cache.stats.bypassed += 1
            return await self.inner.chat(messages, timeout_s=timeout_s, **call)
        request = canonical_request(self.model_key, messages, call)
        key = hashlib.sha256(request.encode()).hexdigest()
        hit = self.cache.get(key)
        if hit is not None:
            self.cache.stats.hits += 1
            self.cache.stats.saved_tokens += hit.prompt_tokens + hit.completion_tokens
            return hit
        self.cache.stats.misses += 1
        result = await self.inner.chat(messages, timeout_s=timeout_s, **call)
        self.cache.put(key, self.model_key, request, result)
        return result

    async def close(self) -> None:
        self.cache.flush()
        await self.inner.close()


def cached_client(inner: Any, spec: AgentSpec, cfg: CacheConfig) -> CachedChatClient:
    """Wrap an agent's chat client with the cache ``cfg`` names."""
    return CachedChatClient(
        inner, open_cache(cfg), model_identity(spec), deterministic_only=cfg.deterministic_only
    )


def is_hit(result: ChatResult) -> bool:
    """True for a result the response cache answered (its ``cached`` mark, never its latency)."""
    return result.cached


__all__ = [
    "CACHE_SCHEMA",
    "CacheStats",
    "CachedChatClient",
    "ResponseCache",
    "cached_client",
    "canonical_request",
    "is_hit",
    "model_identity",
    "open_cache",
    "request_key",
]
