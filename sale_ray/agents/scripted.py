"""A scripted agent backend (``backend: scripted``): canned plans, verdicts and answers with
simulated latency, failures and hangs. A load and fault-injection tool, never the product's
default: it lets the auctioneer be measured and broken without a model server.

Everything is deterministic in (seed, agent, task id, method), so two runs auction alike. The
agent counts the executions it completed per task id, which is how tests and the benchmark
detect a double award.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..config import AgentSpec, SaleConfig
from ..types import Bid, Evaluation, Execution, JuryVerdict, Task, Usage

BATCHABLE = frozenset({"bid", "judge", "refine", "execute"})


def _unit(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from its arguments (no process hash seed)."""
    return zlib.crc32("\x1f".join(map(str, parts)).encode()) / 2**32


class ScriptedAgent:
    """Same surface as :class:`~sale_ray.agents.agent.Agent`, with scripted behaviour."""

    def __init__(self, spec: AgentSpec, config: SaleConfig) -> None:
        self.spec = spec
        self.config = config
        self.s = spec.scripted
        self.price_in = spec.price_in_per_mtok or 0.0
        self.price_out = spec.price_out_per_mtok or 0.0
        self.executed: dict[str, int] = {}
        self.calls = 0

    @property
    def name(self) -> str:
        return self.spec.name

    async def start(self) -> dict:
        info: dict[str, Any] = {
            "name": self.name,
            "price_in": self.price_in,
            "price_out": self.price_out,
        }
        try:  # where did the scheduler put us? (placement tests); fine without Ray too
            import ray

            if ray.is_initialized():
                info["node_id"] = ray.get_runtime_context().get_node_id()
        except Exception:
            pass
        return info

    async def stop(self) -> None:
        return None

    def ping(self) -> int:
        return 1

    def executions(self) -> dict[str, int]:
        """task id -> executions completed here (a double award shows up as 2)."""
        return dict(self.executed)

    # --- behaviour ---------------------------------------------------------------------------
    async def _act(self, task: Task, method: str) -> None:
        self.calls += 1
        if self.s.hang:
            await asyncio.Event().wait()  # until cancelled
        lo, hi = self.s.latency_ms
        if hi > 0:
            await asyncio.sleep(
                (lo + (hi - lo) * _unit(self.s.seed, self.name, task.id, method)) / 1e3
            )
        if (
            self.s.fail_rate
            and _unit(self.s.seed, "fail", self.name, task.id, method) < self.s.fail_rate
        ):
            raise RuntimeError(f"scripted failure in {method}")

    def _usage(self, prompt_tokens: int, completion_tokens: int) -> Usage:
        cost = (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6
        return Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cost_usd=cost, calls=1
        )

    def _prompt_tokens(self, task: Task) -> int:
        return len(task.prompt) // 4 + 60

    async def bid(self, task: Task) -> Bid:
        await self._act(task, "bid")
        n = min(self.s.plan_tokens, self.config.auction.plan_max_tokens)
        return Bid(
            agent=self.name,
            plan=f"{self.name}: plan for {task.id}",
            plan_tokens=n,
            entropy=round(_unit(self.s.seed, "H", self.name, task.id), 4),
            usage=self._usage(self._prompt_tokens(task), n),
        )

    async def refine(self, task: Task, plan: str, pairs: Sequence[Any]) -> Bid:
        await self._act(task, "refine")
        bid = await self.bid(task)
        return bid.model_copy(update={"refined": True, "plan": bid.plan + " (refined)"})

    async def judge(self, task: Task, plans: Sequence[tuple[str, str]]) -> JuryVerdict:
        await self._act(task, "judge")
        scores = {
            a: float(int(6 * _unit(self.s.seed, "J", self.name, a, task.id))) for a, _ in plans
        }
        return JuryVerdict(
            juror=self.name,
            scores=scores,
            usage=self._usage(self._prompt_tokens(task) + 40 * len(plans), 4 * len(plans)),
        )

    async def execute(self, task: Task, plan: str) -> Execution:
        await self._act(task, "execute")
        ok = _unit(self.s.seed, "Q", self.name, task.id) < self.s.quality
        self.executed[task.id] = self.executed.get(task.id, 0) + 1
        return Execution(
            agent=self.name,
            answer="PASS" if ok else "FAIL",
            turns=1,
            usage=self._usage(self._prompt_tokens(task) + 100, 120),
        )

    async def execute_stream(self, task: Task, plan: str) -> AsyncIterator[str | Execution]:
        """:meth:`execute`, streamed as the real agents do: the answer, then the Execution."""
        ex = await self.execute(task, plan)
        yield ex.answer
        yield ex

    async def execute_direct(self, task: Task) -> Execution:
        """One call, no plan: passes on its own draw (so direct and plan-conditioned cells
        differ); its self-check (code) and its entropy (answer tasks: low when it passes) agree
        with the outcome, as a perfect cheap verifier would."""
        await self._act(task, "direct")
        ok = _unit(self.s.seed, "D", self.name, task.id) < self.s.quality
        return Execution(
            agent=self.name,
            answer="PASS" if ok else "FAIL",
            turns=1,
            self_checks_passed=[ok] if task.kind == "code" else [],
            usage=self._usage(self._prompt_tokens(task), 120),
            entropy=None if task.kind == "code" else round(0.3 if ok else 0.6, 4),
        )

    async def call_many(self, method: str, calls: list[tuple]) -> AsyncIterator[list]:
        """Batched entry point (see :func:`sale_ray.auctioneer.serve_batch`)."""
        from ..batching import serve_batch

        if method not in BATCHABLE:
            raise ValueError(f"not a batchable method: {method!r}")
        async for group in serve_batch(getattr(self, method), calls):
            yield group


async def scripted_evaluate(task: Task, answer: str) -> Evaluation:
    """The verifier for scripted answers: 'PASS' passes."""
    return Evaluation(passed=answer == "PASS", detail="scripted")
