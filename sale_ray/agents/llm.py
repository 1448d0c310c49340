"""The one seam to every model: an OpenAI-compatible chat client with logprobs and usage.

The same client talks to a local llama.cpp server, a vLLM server or a hosted API. The
``openai`` client is created lazily (importing this module needs no key and no network).
Retries: the official client's own (bounded count, honours ``Retry-After``); the timeout is per
attempt, so a call ends within ``(1 + max_retries) x timeout`` plus back-off. Errors come out as :mod:`sale_ray.errors` model errors whose text never
contains the API key — only the *name* of the variable that holds it.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import MalformedOutput, ModelError, ModelHTTPError, ModelTimeout

# Local servers ignore the key, but the openai client insists on one.
_NO_KEY = "sale-ray-no-key"


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and top-k alternatives."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatResult:
    """A finished chat completion, flattened to what the auction needs."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    tokens: list[TokenLogprob] = field(default_factory=list)
    cached: bool = False  # answered by the response cache, not the model
    cached_prompt_tokens: int = 0  # of prompt_tokens, those the server's prefix cache served

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


def prefix_cached(usage: Any) -> int:
    """Prompt tokens the server answered from its prefix cache (OpenAI's
    ``usage.prompt_tokens_details.cached_tokens``, which llama.cpp's server and vLLM report
    too); 0 when the server does not say."""
    details = getattr(usage, "prompt_tokens_details", None) if usage is not None else None
    n = getattr(details, "cached_tokens", None) if details is not None else None
    if n is None and isinstance(details, dict):
        n = details.get("cached_tokens")
    return int(n) if isinstance(n, int) and n > 0 else 0


class ChatClient:
    """Async chat client for one model at one OpenAI-compatible endpoint."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 2,
    ) -> None:
        self.base_url = base_url
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self._client: Any = None

    def _get(self) -> Any:
        if self._client is None:
            import openai

            key = os.environ.get(self.api_key_env, "") if self.api_key_env else ""
            if self.api_key_env and not key:
                raise ModelHTTPError(f"environment variable {self.api_key_env} is not set")
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url,
                api_key=key or _NO_KEY,
                timeout=self.timeout_s,
                max_retries=self.max_retries,
            )
        return self._client

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
        """One chat completion. ``top_logprobs`` set -> per-token logprobs are returned."""
        import openai

        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if top_logprobs:
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = top_logprobs
        if response_format is not None:
            kwargs["response_format"] = response_format
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        t0 = time.perf_counter()
        try:
            r = await self._get().chat.completions.create(**kwargs)
        except openai.APITimeoutError:
            raise ModelTimeout(
                f"{self.model}: no answer within {timeout_s or self.timeout_s}s"
            ) from None
        except openai.APIStatusError as e:
            raise ModelHTTPError(f"{self.model}: HTTP {e.status_code} after retries") from None
        except openai.APIConnectionError as e:
            raise ModelHTTPError(f"{self.model}: connection failed ({type(e).__name__})") from None
        except openai.OpenAIError as e:
            raise ModelError(f"{self.model}: {type(e).__name__}") from None
        except ValueError:  # a 200 whose body is not JSON (json.JSONDecodeError is a ValueError)
            raise MalformedOutput(f"{self.model}: response body is not valid JSON") from None
        latency = time.perf_counter() - t0
        if not r.choices:
            raise ModelError(f"{self.model}: response has no choices")
        ch = r.choices[0]
        toks: list[TokenLogprob] = []
        if ch.logprobs is not None and ch.logprobs.content:
            for t in ch.logprobs.content:
                top = {a.token: a.logprob for a in (t.top_logprobs or [])}
                toks.append(TokenLogprob(t.token, t.logprob, top))
        usage = r.usage
        return ChatResult(
            text=ch.message.content or "",
            finish_reason=ch.finish_reason,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else len(toks),
            latency_s=latency,
            tokens=toks,
            cached_prompt_tokens=prefix_cached(usage),
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def chat_stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        timeout_s: float | None = None,
    ) -> AsyncIterator[ChatDelta]:
        """Stream one chat completion: text deltas, then one last delta with the finish reason
        and the usage. ``timeout_s`` bounds the whole stream, not each read.

        A stream that ends or breaks before any ``finish_reason`` raises :class:`TruncatedOutput`:
        a cut answer never looks like a success. Closing this generator early (or cancelling the
        task iterating it) closes the HTTP response, so the server stops generating.
        """
        import asyncio

        import openai

        from ..errors import MalformedOutput, TruncatedOutput

        limit = timeout_s or self.timeout_s
        # asyncio.timeout, not wait_for: on 3.11 wait_for drops a cancellation that lands just
        # as the awaited call finishes, and the stream would then run on with nobody reading
        deadline = asyncio.get_running_loop().time() + limit
        t0 = time.perf_counter()
        stream: Any = None
        finish: str | None = None
        prompt_tokens = completion_tokens = None
        cached_tokens = 0
        deltas = 0
        try:
            async with asyncio.timeout_at(deadline):
                stream = await self._get().chat.completions.create(
                    model=self.model,
                    messages=messages,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=limit,
                )
            chunks = stream.__aiter__()
            while True:
                try:
                    async with asyncio.timeout_at(deadline):  # no yield inside: safe here
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                    completion_tokens = chunk.usage.completion_tokens
                    cached_tokens = prefix_cached(chunk.usage)
                for ch in chunk.choices[:1]:
                    if ch.delta is not None and ch.delta.content:
                        deltas += 1
                        yield ChatDelta(text=ch.delta.content)
                    if ch.finish_reason:
                        finish = ch.finish_reason
        except (TimeoutError, openai.APITimeoutError):
            raise ModelTimeout(f"{self.model}: stream not finished within {limit:g}s") from None
        except openai.APIStatusError as e:
            raise ModelHTTPError(f"{self.model}: HTTP {e.status_code} after retries") from None
        except openai.APIConnectionError as e:
            if stream is not None:  # the stream had started: what we got is a cut answer
                raise TruncatedOutput(f"{self.model}: stream broke before it finished") from None
            raise ModelHTTPError(f"{self.model}: connection failed ({type(e).__name__})") from None
        except openai.OpenAIError as e:
            raise ModelError(f"{self.model}: {type(e).__name__}") from None
        except ValueError:  # a chunk that is not JSON
            raise MalformedOutput(f"{self.model}: stream chunk is not valid JSON") from None
        finally:
            if stream is not None:
                await stream.close()
        if finish is None:
            raise TruncatedOutput(f"{self.model}: stream closed before a finish_reason")
        yield ChatDelta(
            finish_reason=finish,
            cached_prompt_tokens=cached_tokens,
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens if completion_tokens is not None else deltas,
            latency_s=time.perf_counter() - t0,
        )


@dataclass(frozen=True)
class ChatDelta:
    """One piece of a streamed completion: text, or (last) the finish reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached_prompt_tokens: int = 0

    def result(self) -> ChatResult:
        """The last delta's usage as a (textless) :class:`ChatResult`, for pricing."""
        return ChatResult(
            "",
            self.finish_reason,
            self.prompt_tokens,
            self.completion_tokens,
            self.latency_s,
            cached_prompt_tokens=self.cached_prompt_tokens,
        )
