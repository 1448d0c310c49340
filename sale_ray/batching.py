"""Micro-batching of agent calls: many auctions' calls to one agent travel as one Ray call.

* :class:`MicroBatcher` (the caller's side) coalesces the concurrent calls that many auctions
  make to one agent into one remote call carrying many items (one Ray call tops out near
  2,000/s; a batched one carries 100+ items), with a few batches in flight (pipelining). The
  protocol stays unaware.
* :func:`serve_batch` (the agent's side) runs the items concurrently and streams back groups
  of results as they finish, so one slow item never holds back the others.

Pure asyncio, no Ray.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from .errors import SaleRayError

# (index, ok, value): value is the result, or "Type: message" of the error it raised
Group = list[tuple[int, bool, Any]]


class AgentCallError(SaleRayError):
    """An agent raised while serving a batched call; the text is its ``Type: message``."""


# --- the agent's side of a batched call ----------------------------------------------------------
async def serve_batch(
    fn: Callable[..., Awaitable[Any]], calls: Sequence[tuple]
) -> AsyncIterator[Group]:
    """Run ``fn(*args)`` for every args tuple concurrently; yield finished groups as they come.

    Errors are returned as data (one failing item must not fail its batch-mates). Closing the
    generator (the caller gave up) cancels the items still running."""

    async def one(i: int, args: tuple) -> tuple[int, bool, Any]:
        try:
            return i, True, await fn(*args)
        except Exception as e:
            return i, False, f"{type(e).__name__}: {e}"[:500]

    pending = {asyncio.ensure_future(one(i, a)) for i, a in enumerate(calls)}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            yield [t.result() for t in done]
    finally:
        for t in pending:
            t.cancel()


# --- the caller's side ---------------------------------------------------------------------------
Send = Callable[[list[Any]], AsyncIterator[Group]]


class MicroBatcher:
    """Coalesce concurrent ``call(item)``s into ``send(items)`` batches.

    Items that arrive in the same event-loop turn, or while ``max_in_flight`` batches are
    already out, travel together (up to ``max_batch``): under light load a call goes out at
    once, under heavy load batches grow by themselves. A batch is out until its last item
    finishes — an LLM call's seconds — so a call queued behind full slots would wait that long:
    after ``max_wait_s`` it goes out anyway, with whatever queued beside it (as Serve's
    ``@serve.batch`` waits at most ``batch_wait_timeout_s``). So a call waits at most
    ``max_wait_s`` for company, and at most one extra Ray call per ``max_wait_s`` goes out
    past the cap. A caller that gives up (deadline) is dropped from the queue; a batch whose
    callers have all given up is cancelled, so a hung agent cannot pin the pipeline."""

    def __init__(
        self,
        send: Send,
        *,
        max_batch: int = 256,
        max_in_flight: int = 4,
        max_wait_s: float | None = 0.005,
    ) -> None:
        self._send = send
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.max_wait_s = max_wait_s
        self._queue: deque[tuple[Any, asyncio.Future]] = deque()
        self._in_flight = 0
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0  # sent so far (stats)
        self.items = 0

    async def call(self, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)
        return await fut

    def _pump(self) -> None:
        self._scheduled = False
        while self._queue and self._in_flight < self.max_in_flight:
            if not self._launch():
                break
        if self._queue and self._timer is None and self.max_wait_s is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.max_wait_s, self._overdue)

    def _overdue(self) -> None:
        """The oldest queued call has waited ``max_wait_s``: send a batch past the cap."""
        self._timer = None
        if self._queue:
            self._launch()
            self._pump()  # more than one batch queued: the next waits its own max_wait_s

    def _launch(self) -> bool:
        """Send up to ``max_batch`` queued calls as one batch; False if none were left."""
        batch: list[tuple[Any, asyncio.Future]] = []
        while self._queue and len(batch) < self.max_batch:
            item, fut = self._queue.popleft()
            if not fut.done():  # cancelled while queued: never sent
                batch.append((item, fut))
        if not batch:
            return False
        self._in_flight += 1
        self.batches += 1
        self.items += len(batch)
        asyncio.ensure_future(self._run(batch))
        return True

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        futs = [f for _, f in batch]
        runner = asyncio.current_task()
        left = len(futs)

        def on_done(_: asyncio.Future) -> None:
            nonlocal left
            left -= 1
            if left == 0 and runner is not None and not runner.done():
                runner.cancel()  # every caller is answered or gone: stop waiting on the rest

        for f in futs:
            f.add_done_callback(on_done)
        try:
            async for group in self._send([item for item, _ in batch]):
                for i, ok, value in group:
                    f = futs[i]
                    if not f.done():
                        f.set_result(value) if ok else f.set_exception(AgentCallError(value))
        except asyncio.CancelledError:
            pass
        except Exception as e:  # the remote side died: everyone still waiting gets the error
            for f in futs:
                if not f.done():
                    f.set_exception(e)
        finally:
            for f in futs:
                if not f.done():
                    f.set_exception(AgentCallError("batch ended without an answer"))
            self._in_flight -= 1
            if self._queue and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._pump)
