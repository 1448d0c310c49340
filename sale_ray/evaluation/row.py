"""One row of the evaluation matrix: a task, and each agent's :class:`Cell` on it.

A :class:`TaskRow` holds one :class:`Cell` per agent (its bid, its verdict as a juror, the
execution of its own plan, judged) and one :class:`~.direct.DirectCell` per agent (its direct
call, no plan). :func:`direct_view` turns the direct calls into cells, so the ``*_direct`` routers
(:mod:`.baselines`) are the plan-conditioned routers' own logic over direct answers. The matrix
itself — building rows, its Parquet form — is :mod:`.matrix`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..types import Bid, Evaluation, Execution, JuryVerdict, Usage
from .direct import DirectCell, MissingDirectCells

Split = Literal["train", "test"]
NO_BID = "direct call: no bid"


class Cell(BaseModel):
    """One agent on one task."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent: str
    price_in: float = Field(description="$/Mtok of prompt tokens.")
    price_out: float = Field(description="$/Mtok of completion tokens (the auction's price).")
    bid: Bid
    verdict: JuryVerdict | None = Field(default=None, description="Its verdict as a juror.")
    execution: Execution | None = Field(default=None, description="It ran its own plan.")
    evaluation: Evaluation = Evaluation()
    cached: dict[str, bool] = Field(default_factory=dict, description="phase -> cache hit")

    @property
    def passed(self) -> bool:
        return bool(self.evaluation.passed)

    @property
    def self_check(self) -> bool | None:
        """The prompt-examples check of its final answer (None: not run)."""
        ex = self.execution
        if ex is None or ex.error is not None or not ex.self_checks_passed:
            return None if ex is None or ex.error is None else False
        return ex.self_checks_passed[-1]

    @property
    def run_usage(self) -> Usage:
        """What the agent spends solving the task alone: its plan, then its execution."""
        ex = self.execution.usage if self.execution else Usage()
        return self.bid.usage + ex


class TaskRow(BaseModel):
    """All cells of one task, with its split and place in the task stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_id: str
    prompt: str
    kind: str = "code"
    bin: int | None = None
    split: Split = "test"
    order: int = 0
    cells: dict[str, Cell] = Field(
        default_factory=dict, description="agent -> bid, verdict, plan-conditioned execution"
    )
    direct: dict[str, DirectCell] = Field(
        default_factory=dict, description="agent -> its direct call (empty: not run)"
    )

    def _pool(self) -> Mapping[str, Cell | DirectCell]:
        return self.cells or self.direct  # a direct-only run has no plan-conditioned cells

    def by_price(self) -> list[str]:
        """Agent names cheapest first (ties by name), the auction's notion of 'cheaper'."""
        pool = self._pool()
        return sorted(pool, key=lambda a: (pool[a].price_out, a))

    @property
    def prices(self) -> dict[str, float]:
        return {a: c.price_out for a, c in self._pool().items()}

    @property
    def verdicts(self) -> list[JuryVerdict]:
        return [c.verdict for c in self.cells.values() if c.verdict is not None]

    def passing(self) -> list[str]:
        return [a for a in self.by_price() if self.cells[a].passed]


def direct_view(row: TaskRow) -> TaskRow:
    """``row`` with its direct calls as its cells: a cell's execution is the direct answer (its
    ``run_usage`` the one call, no plan), its bid an unpaid placeholder carrying the answer's
    entropy (the cascade's signal on answer tasks). Raises :class:`MissingDirectCells`."""
    if not row.direct:
        raise MissingDirectCells(
            f"task {row.task_id} has no direct cells (a matrix written before the direct "
            "baselines): rerun `sale-ray eval` with the same --out to fill them "
            "(`--methods direct` runs only those)"
        )
    cells = {
        a: Cell(
            agent=a,
            price_in=d.price_in,
            price_out=d.price_out,
            bid=Bid(agent=a, entropy=d.execution.entropy, rejected=NO_BID),
            execution=d.execution,
            evaluation=d.evaluation,
            cached={"execute": d.cached},
        )
        for a, d in row.direct.items()
    }
    return row.model_copy(update={"cells": cells, "direct": {}})


__all__ = ["NO_BID", "Cell", "Split", "TaskRow", "direct_view"]
