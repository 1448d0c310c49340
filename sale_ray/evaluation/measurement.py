"""The evaluation matrix on Ray: built part by part (plan-conditioned cells, direct calls) as the
requested methods need, saved after every task, resumed and completed from ``matrix.parquet``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..config import SaleConfig
from ..types import Evaluation, Task
from .direct import build_direct
from .matrix import Split, TaskRow, build_row, matrix_table, rows_from_table

Evaluator = Callable[[Task, str], Awaitable[Evaluation]]


def load_matrix(path: Path) -> list[TaskRow]:
    return rows_from_table(pq.read_table(path)) if path.is_file() else []


def save_matrix(rows: Sequence[TaskRow], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(matrix_table(rows), tmp)
    tmp.replace(path)  # a reader never sees half a matrix


async def build_matrix(
    tasks: Sequence[Task],
    splits: dict[str, Split],
    pool: Any,
    config: SaleConfig,
    evaluate: Evaluator,
    *,
    path: Path | None = None,
    done: Sequence[TaskRow] = (),
    progress: bool = True,
    plan: bool = True,
    direct: bool = False,
) -> list[TaskRow]:
    """Rows for ``tasks`` (in stream order), reusing ``done`` ones and saving to ``path``.

    ``plan``: every row needs its bids, verdicts and plan-conditioned executions; ``direct``:
    its direct calls. A part a done row lacks is built and added to it; nothing is recomputed.
    """
    from tqdm import tqdm

    a = config.auction
    have = {r.task_id: r for r in done}
    rows: dict[str, TaskRow] = {}
    todo = []
    for i, t in enumerate(tasks):
        r = have.get(t.id)
        if r is not None:
            rows[t.id] = r = r.model_copy(update={"split": splits[t.id], "order": i})
        if r is None or (plan and not r.cells) or (direct and not r.direct):
            todo.append((i, t))
    bar = tqdm(total=len(todo), desc="matrix", unit="task", disable=not progress)
    sem = asyncio.Semaphore(config.eval.task_concurrency)

    async def one(i: int, t: Task) -> None:
        async with sem:
            row = rows.get(t.id)
            if plan and (row is None or not row.cells):
                new = await build_row(
                    t,
                    pool.handles,
                    pool.price_pairs,
                    evaluate,
                    bid_timeout_s=a.bid_timeout_s,
                    jury_timeout_s=a.jury_timeout_s,
                    execute_timeout_s=a.execute_timeout_s,
                    split=splits[t.id],
                    order=i,
                )
                row = new.model_copy(update={"direct": row.direct}) if row else new
            if direct and (row is None or not row.direct):
                cells = await build_direct(
                    t, pool.handles, pool.price_pairs, evaluate, timeout_s=a.execute_timeout_s
                )
                if row is None:
                    row = TaskRow(
                        task_id=t.id,
                        prompt=t.prompt,
                        kind=t.kind,
                        bin=t.bin,
                        split=splits[t.id],
                        order=i,
                    )
                row = row.model_copy(update={"direct": cells})
            rows[t.id] = row
        parts = [
            f"{name} {sum(c.passed for c in got.values())}/{len(got)}"
            for name, got in (("plan", row.cells), ("direct", row.direct))
            if got
        ]
        bar.set_postfix_str(f"{t.id}: " + ", ".join(parts) + " agents pass")
        bar.update(1)
        if path is not None:
            save_matrix([rows[x.id] for x in tasks if x.id in rows], path)

    try:
        await asyncio.gather(*(one(i, t) for i, t in todo))
    finally:
        bar.close()
    return [rows[t.id] for t in tasks]


def make_eval_evaluator(config: SaleConfig) -> Evaluator:
    """The batch verifier, except for tasks that carry their own (reasoning-gym's score_answer)."""
    from ..evaluators.verifier import make_evaluator
    from ..problem_sets import verify_answer

    base = make_evaluator(config)

    async def evaluate(task: Task, answer: str) -> Evaluation:
        own = verify_answer(task, answer)
        return own if own is not None else await base(task, answer)

    return evaluate


def same_pool(rows: Sequence[TaskRow], names: list[str]) -> list[TaskRow]:
    """Done rows with every part computed by another pool dropped (it is recomputed)."""
    out = []
    for r in rows:
        cells = r.cells if sorted(r.cells) == names else {}
        direct = r.direct if sorted(r.direct) == names else {}
        if cells or direct:
            out.append(r.model_copy(update={"cells": cells, "direct": direct}))
    return out


__all__ = ["build_matrix", "load_matrix", "make_eval_evaluator", "same_pool", "save_matrix"]
