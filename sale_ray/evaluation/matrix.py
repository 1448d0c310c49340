"""The evaluation matrix: every agent's bid, verdict and own execution on every task.

One :class:`TaskRow` per task holds one :class:`Cell` per agent: its bid (plan, entropy, tokens),
its verdict as a juror over all plans of the task, and the execution of *its own plan*, judged by
the task's hidden verifier; and one :class:`~.direct.DirectCell` per agent: its answer when
called once with the task alone, no plan (the direct baselines, :mod:`.direct`). Every router
except SALE-with-memory is a pure function of a row (:mod:`.baselines`): the oracle is the
cheapest passing cell, SALE picks by ``C - V`` from the bids and verdicts and reads the winner's
cell, a single-agent router reads its agent's cell. So the expensive part (model calls) is paid
once, and the response cache makes even that free on a rerun. :func:`build_row` computes a row
with the same protocol functions the live auction uses. The row and cell models are
:mod:`.row`'s (importable from here too).

Parquet form (:func:`matrix_table`): one row per (task, agent), with flat columns for analytics
(``passed``, ``entropy``, ``jury_mean`` …, ``direct_passed`` …) and the exact objects as JSON for
reconstruction.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from ..types import Bid, Evaluation, Execution, JuryVerdict, Task, Usage
from .direct import DIRECT_COLUMNS, direct_columns, direct_from_columns
from .row import Cell, Split, TaskRow

COST_PHASES = ("bid", "jury", "refine", "execute")


# --- one decision of one method on one task ---------------------------------------------------
class Decision(BaseModel):
    """What a method did on a task: who executed, whether it passed, what it spent per phase."""

    model_config = ConfigDict(extra="forbid")

    method: str
    task_id: str
    bin: int | None = None
    order: int = 0
    agent: str | None = Field(default=None, description="Whose answer was judged.")
    executed: list[str] = Field(default_factory=list, description="Every agent that executed.")
    provisional: str | None = None
    passed: bool = False
    tokens: dict[str, int] = Field(default_factory=dict)
    cost_usd: dict[str, float] = Field(default_factory=dict)
    note: str = ""

    @property
    def total_cost(self) -> float:
        return sum(self.cost_usd.values())

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


def spend(phases: Mapping[str, Sequence[Usage]]) -> tuple[dict[str, int], dict[str, float]]:
    """(tokens, $) per phase from the usages spent in it; every cost phase is present."""
    tokens = {p: 0 for p in COST_PHASES}
    cost = {p: 0.0 for p in COST_PHASES}
    for p, usages in phases.items():
        for u in usages:
            tokens[p] += u.total_tokens
            cost[p] += u.cost_usd
    return tokens, cost


def single_agent(method: str, row: TaskRow, agent: str, note: str = "") -> Decision:
    """The decision of a router that sends ``row`` to ``agent`` alone (it plans, then executes)."""
    cell = row.cells[agent]
    tokens, cost = spend({"execute": [cell.run_usage]})
    return Decision(
        method=method,
        task_id=row.task_id,
        bin=row.bin,
        order=row.order,
        agent=agent,
        executed=[agent],
        passed=cell.passed,
        tokens=tokens,
        cost_usd=cost,
        note=note,
    )


DECISION_SCHEMA = pa.schema(
    [
        ("method", pa.string()),
        ("task_id", pa.string()),
        ("bin", pa.int64()),
        ("order", pa.int64()),
        ("agent", pa.string()),
        ("executed", pa.list_(pa.string())),
        ("provisional", pa.string()),
        ("passed", pa.bool_()),
        ("largest", pa.bool_()),  # the largest agent executed (reliance on it)
        ("cost_usd", pa.float64()),
        ("note", pa.string()),
    ]
    + [(f"{p}_tokens", pa.int64()) for p in COST_PHASES]
    + [(f"{p}_cost_usd", pa.float64()) for p in COST_PHASES]
)


def decisions_table(decisions: Sequence[Decision], largest: str) -> pa.Table:
    """Arrow table (:data:`DECISION_SCHEMA`) of decisions; ``largest`` names the largest agent."""
    rows = []
    for d in decisions:
        r = {
            "method": d.method,
            "task_id": d.task_id,
            "bin": d.bin,
            "order": d.order,
            "agent": d.agent,
            "executed": list(d.executed),
            "provisional": d.provisional,
            "passed": d.passed,
            "largest": largest in d.executed,
            "cost_usd": d.total_cost,
            "note": d.note,
        }
        for p in COST_PHASES:
            r[f"{p}_tokens"] = d.tokens.get(p, 0)
            r[f"{p}_cost_usd"] = d.cost_usd.get(p, 0.0)
        rows.append(r)
    return pa.Table.from_pylist(rows, schema=DECISION_SCHEMA)


# --- building a row from live agents ----------------------------------------------------------
Evaluator = Callable[[Task, str], Awaitable[Evaluation]]


async def build_row(
    task: Task,
    agents: Mapping[str, Any],
    prices: Mapping[str, tuple[float, float]],
    evaluate: Evaluator,
    *,
    bid_timeout_s: float,
    jury_timeout_s: float,
    execute_timeout_s: float,
    split: Split = "test",
    order: int = 0,
) -> TaskRow:
    """Every agent bids, every agent judges all plans, every agent executes its own plan.

    Uses :func:`~sale_ray.auction.protocol.collect_bids` / ``collect_verdicts`` so the bids and
    verdicts are exactly what a live auction sees (the jury is skipped, as there, when at most
    one bid is valid). An agent whose bid was rejected still executes, with an empty plan, so
    that single-agent routers have its answer. ``prices``: agent -> ($/Mtok in, $/Mtok out).
    """
    from ..auction.policy import worth_judging
    from ..auction.protocol import collect_bids, collect_verdicts

    bids = await collect_bids(task, agents, bid_timeout_s)
    verdicts: list[JuryVerdict] = []
    if worth_judging(sum(b.valid for b in bids)):  # the live rule, for the widest jury
        verdicts = await collect_verdicts(task, agents, bids, jury_timeout_s)
    by_agent = {b.agent: b for b in bids}

    async def run(name: str) -> tuple[Execution, Evaluation]:
        plan = by_agent[name].plan if by_agent[name].valid else ""
        try:
            ex = await asyncio.wait_for(agents[name].execute(task, plan), execute_timeout_s)
        except TimeoutError:
            ex = Execution(agent=name, error=f"timeout after {execute_timeout_s:g}s")
        except Exception as e:  # noqa: BLE001 - a dead agent is a failed cell, not a dead run
            ex = Execution(agent=name, error=f"{type(e).__name__}: {e}"[:300])
        if ex.error is not None:
            return ex, Evaluation(passed=False, detail=ex.error)
        return ex, await evaluate(task, ex.answer)

    # One execution at a time: on a few CPU cores parallel generations only slow each other.
    results = {}
    for name in agents:
        results[name] = await run(name)
    vmap = {v.juror: v for v in verdicts}
    cells = {}
    for name in agents:
        ex, ev = results[name]
        v = vmap.get(name)
        # what the response cache says, carried in Usage (a zero latency is not a hit)
        cached = {"bid": by_agent[name].usage.cached, "execute": ex.usage.cached}
        if v is not None:
            cached["jury"] = v.usage.cached
        cells[name] = Cell(
            agent=name,
            price_in=prices[name][0],
            price_out=prices[name][1],
            bid=by_agent[name],
            verdict=v,
            execution=ex,
            evaluation=ev,
            cached=cached,
        )
    return TaskRow(
        task_id=task.id,
        prompt=task.prompt,
        kind=task.kind,
        bin=task.bin,
        split=split,
        order=order,
        cells=cells,
    )


# --- Parquet ------------------------------------------------------------------------------------
MATRIX_SCHEMA = pa.schema(
    [
        ("task_id", pa.string()),
        ("split", pa.string()),
        ("order", pa.int64()),
        ("bin", pa.int64()),
        ("kind", pa.string()),
        ("prompt", pa.string()),
        ("agent", pa.string()),
        ("price_in", pa.float64()),
        ("price_out", pa.float64()),
        ("plan_tokens", pa.int64()),
        ("entropy", pa.float64()),
        ("bid_rejected", pa.string()),
        ("jury_mean", pa.float64()),  # mean score this agent's plan received
        ("jury_self", pa.float64()),  # the score it gave its own plan
        ("jury_error", pa.string()),  # its own verdict's failure, if any
        ("self_check", pa.bool_()),
        ("passed", pa.bool_()),
        ("bid_tokens", pa.int64()),
        ("jury_tokens", pa.int64()),
        ("execute_tokens", pa.int64()),
        ("bid_cost_usd", pa.float64()),
        ("jury_cost_usd", pa.float64()),
        ("execute_cost_usd", pa.float64()),
        ("bid_cached", pa.bool_()),
        ("jury_cached", pa.bool_()),
        ("execute_cached", pa.bool_()),
        ("bid_json", pa.string()),
        ("verdict_json", pa.string()),
        ("execution_json", pa.string()),
        ("evaluation_json", pa.string()),
    ]
    + DIRECT_COLUMNS
)


def _received(row: TaskRow, agent: str) -> list[float]:
    return [v.scores[agent] for v in row.verdicts if v.error is None and agent in v.scores]


def _plan_columns(row: TaskRow, c: Cell | None) -> dict[str, Any]:
    if c is None:  # a direct-only row: no bid, verdict or plan-conditioned execution
        return {}
    got = _received(row, c.agent)
    v, ex = c.verdict, c.execution
    return {
        "plan_tokens": c.bid.plan_tokens,
        "entropy": c.bid.entropy,
        "bid_rejected": c.bid.rejected,
        "jury_mean": sum(got) / len(got) if got else None,
        "jury_self": v.scores.get(c.agent) if v is not None and v.error is None else None,
        "jury_error": v.error if v is not None else None,
        "self_check": c.self_check,
        "passed": c.passed,
        "bid_tokens": c.bid.usage.total_tokens,
        "jury_tokens": v.usage.total_tokens if v else 0,
        "execute_tokens": ex.usage.total_tokens if ex else 0,
        "bid_cost_usd": c.bid.usage.cost_usd,
        "jury_cost_usd": v.usage.cost_usd if v else 0.0,
        "execute_cost_usd": ex.usage.cost_usd if ex else 0.0,
        "bid_cached": c.cached.get("bid"),
        "jury_cached": c.cached.get("jury"),
        "execute_cached": c.cached.get("execute"),
        "bid_json": c.bid.model_dump_json(),
        "verdict_json": v.model_dump_json() if v else None,
        "execution_json": ex.model_dump_json() if ex else None,
        "evaluation_json": c.evaluation.model_dump_json(),
    }


def matrix_rows(rows: Sequence[TaskRow]) -> list[dict[str, Any]]:
    """Flat dicts (one per task x agent) matching :data:`MATRIX_SCHEMA`; a part not run (plan
    cells of a direct-only run, direct cells of an older run) is all None."""
    out = []
    for row in rows:
        for a in row.by_price():
            c, d = row.cells.get(a), row.direct.get(a)
            some = c or d
            r = dict.fromkeys(MATRIX_SCHEMA.names)
            r.update(
                {
                    "task_id": row.task_id,
                    "split": row.split,
                    "order": row.order,
                    "bin": row.bin,
                    "kind": row.kind,
                    "prompt": row.prompt,
                    "agent": a,
                    "price_in": some.price_in,
                    "price_out": some.price_out,
                }
            )
            r.update(_plan_columns(row, c))
            r.update(direct_columns(d))
            out.append(r)
    return out


def matrix_table(rows: Sequence[TaskRow]) -> pa.Table:
    """The Arrow table of a matrix (one row per task x agent)."""
    return pa.Table.from_pylist(matrix_rows(rows), schema=MATRIX_SCHEMA)


def rows_from_table(table: pa.Table) -> list[TaskRow]:
    """Rebuild :class:`TaskRow` objects (in stream order) from :func:`matrix_table`'s output.

    A matrix written before the direct baselines (no ``direct_*`` columns) loads with no direct
    cells; the direct methods then ask for a rerun that fills them."""
    names = [n for n in MATRIX_SCHEMA.names if n in table.column_names]
    grouped: dict[str, dict[str, Any]] = {}
    for r in table.select(names).to_pylist():
        g = grouped.setdefault(
            r["task_id"],
            {
                "task_id": r["task_id"],
                "prompt": r["prompt"],
                "kind": r["kind"],
                "bin": r["bin"],
                "split": r["split"],
                "order": r["order"],
                "cells": {},
                "direct": {},
            },
        )
        d = direct_from_columns(r)
        if d is not None:
            g["direct"][r["agent"]] = d
        if not r["bid_json"]:
            continue
        g["cells"][r["agent"]] = Cell(
            agent=r["agent"],
            price_in=r["price_in"],
            price_out=r["price_out"],
            bid=Bid.model_validate_json(r["bid_json"]),
            verdict=JuryVerdict.model_validate_json(r["verdict_json"])
            if r["verdict_json"]
            else None,
            execution=(
                Execution.model_validate_json(r["execution_json"]) if r["execution_json"] else None
            ),
            evaluation=Evaluation.model_validate_json(r["evaluation_json"]),
            cached={
                p: r[f"{p}_cached"]
                for p in ("bid", "jury", "execute")
                if r[f"{p}_cached"] is not None
            },
        )
    rows = [TaskRow(**g) for g in grouped.values()]
    return sorted(rows, key=lambda t: (t.order, t.task_id))


def finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


__all__ = [
    "COST_PHASES",
    "Cell",
    "DECISION_SCHEMA",
    "Decision",
    "decisions_table",
    "MATRIX_SCHEMA",
    "TaskRow",
    "build_row",
    "finite",
    "matrix_rows",
    "matrix_table",
    "rows_from_table",
    "single_agent",
    "spend",
]
