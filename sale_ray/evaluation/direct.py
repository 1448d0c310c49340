"""Direct calls: each agent answers the task once with the standard instruction — no plan, no bid,
no jury. The baseline a user means by "just call the largest model".

Every other cell of the evaluation matrix (:mod:`.matrix`) pays for a plan and runs a
plan-conditioned prompt, so its "largest" is not that baseline. A row's ``direct`` cells hold
one :class:`DirectCell` per agent: the answer of ``Agent.execute_direct`` (one call; for code the
answer's run of the prompt's examples is recorded, never fed back), its usage and its hidden-test
outcome. The ``*_direct`` routers (:mod:`.baselines`) read them through :func:`.row.direct_view`, a
row whose cells *are* the direct calls, so ``largest_direct`` / ``cascade_direct`` / ``knn_direct``
/ ``oracle_direct`` are the plan-conditioned routers' own logic over direct answers.

In ``matrix.parquet`` direct cells are extra columns of the (task, agent) row
(:data:`DIRECT_COLUMNS`); a matrix written before they existed still loads, with no direct cells.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from ..errors import UserError
from ..types import Evaluation, Execution, Task, Usage

Evaluator = Callable[[Task, str], Awaitable[Evaluation]]


class MissingDirectCells(UserError):
    """A direct method was asked of a matrix row that has no direct cells."""


class DirectCell(BaseModel):
    """One agent's direct answer to one task, judged by the task's hidden verifier."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    price_in: float = Field(description="$/Mtok of prompt tokens.")
    price_out: float = Field(description="$/Mtok of completion tokens.")
    execution: Execution
    evaluation: Evaluation = Evaluation()

    @property
    def passed(self) -> bool:
        return bool(self.evaluation.passed)

    @property
    def usage(self) -> Usage:
        return self.execution.usage

    @property
    def cached(self) -> bool:
        """The response cache answered the call (its own mark, not a zero latency)."""
        return self.execution.usage.cached

    @property
    def self_check(self) -> bool | None:
        """The answer's run of the prompt's examples (None: not run; False: the call failed)."""
        ex = self.execution
        if ex.error is not None:
            return False
        return ex.self_checks_passed[-1] if ex.self_checks_passed else None


async def build_direct(
    task: Task,
    agents: Mapping[str, Any],
    prices: Mapping[str, tuple[float, float]],
    evaluate: Evaluator,
    *,
    timeout_s: float,
) -> dict[str, DirectCell]:
    """Every agent's direct answer to ``task``, judged; one agent at a time (on a few CPU cores
    parallel generations only slow each other). A failed call is a failed cell."""
    out = {}
    for name, agent in agents.items():
        try:
            ex = await asyncio.wait_for(agent.execute_direct(task), timeout_s)
        except TimeoutError:
            ex = Execution(agent=name, error=f"timeout after {timeout_s:g}s")
        except Exception as e:  # noqa: BLE001 - a dead agent is a failed cell, not a dead run
            ex = Execution(agent=name, error=f"{type(e).__name__}: {e}"[:300])
        if ex.error is not None:
            ev = Evaluation(passed=False, detail=ex.error)
        else:
            ev = await evaluate(task, ex.answer)
        out[name] = DirectCell(
            agent=name,
            price_in=prices[name][0],
            price_out=prices[name][1],
            execution=ex,
            evaluation=ev,
        )
    return out


# --- Parquet columns ------------------------------------------------------------------------------
DIRECT_COLUMNS = [
    ("direct_passed", pa.bool_()),
    ("direct_self_check", pa.bool_()),
    ("direct_entropy", pa.float64()),
    ("direct_tokens", pa.int64()),
    ("direct_cost_usd", pa.float64()),
    ("direct_cached", pa.bool_()),
    ("direct_json", pa.string()),  # the Execution
    ("direct_evaluation_json", pa.string()),
]


def direct_columns(cell: DirectCell | None) -> dict[str, Any]:
    """The :data:`DIRECT_COLUMNS` of one (task, agent) row (all None without a direct cell)."""
    if cell is None:
        return {name: None for name, _ in DIRECT_COLUMNS}
    return {
        "direct_passed": cell.passed,
        "direct_self_check": cell.self_check,
        "direct_entropy": cell.execution.entropy,
        "direct_tokens": cell.usage.total_tokens,
        "direct_cost_usd": cell.usage.cost_usd,
        "direct_cached": cell.cached,
        "direct_json": cell.execution.model_dump_json(),
        "direct_evaluation_json": cell.evaluation.model_dump_json(),
    }


def direct_from_columns(r: Mapping[str, Any]) -> DirectCell | None:
    """The direct cell stored in a matrix row dict, or None (not run, or an older matrix)."""
    if not r.get("direct_json"):
        return None
    return DirectCell(
        agent=r["agent"],
        price_in=r["price_in"],
        price_out=r["price_out"],
        execution=Execution.model_validate_json(r["direct_json"]),
        evaluation=Evaluation.model_validate_json(r["direct_evaluation_json"]),
    )


__all__ = [
    "DIRECT_COLUMNS",
    "DirectCell",
    "MissingDirectCells",
    "build_direct",
    "direct_columns",
    "direct_from_columns",
]
