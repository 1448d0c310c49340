"""Batch runs: a list of tasks in, ``auctions.parquet`` and a summary out.

Used by ``sale-ray run`` and ``jobs/run_auctions.py`` alike. Auctions run concurrently (bounded),
each agent's own semaphore keeps its model server within its ``max_concurrency``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pyarrow.parquet as pq

from .config import SaleConfig
from .summary import Summary, summarize
from .types import AuctionRecord, Evaluation, Task, records_table


def make_evaluator(config: SaleConfig):
    """The verifier the protocol calls: sandboxed tests for code, exact match for answers."""
    from .evaluators import check_solution

    async def evaluate(task: Task, answer: str) -> Evaluation:
        return await asyncio.to_thread(check_solution, task, answer, config.sandbox)

    return evaluate


async def run_tasks(
    tasks: list[Task],
    config: SaleConfig,
    *,
    concurrency: int = 2,
    progress: bool = True,
) -> list[AuctionRecord]:
    """Start the agent actors (Ray must be connected), auction every task, stop the agents."""
    from tqdm import tqdm

    from .auction.protocol import run_auction
    from .runtime import start_agents

    pool = await start_agents(config)
    evaluate = make_evaluator(config)
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(tasks), desc="auctions", unit="task", disable=not progress)
    records: list[AuctionRecord] = []
    spent, passed = 0.0, 0

    async def one(task: Task) -> AuctionRecord:
        nonlocal spent, passed
        async with sem:
            rec = await run_auction(task, pool.handles, pool.prices, config, evaluate=evaluate)
        records.append(rec)
        spent += rec.cost_usd
        passed += bool(rec.passed)
        bar.set_postfix_str(f"pass@1 {passed / len(records):.2f} ${spent:.6f} won:{rec.winner}")
        bar.update(1)
        return rec

    try:
        done = await asyncio.gather(*(one(t) for t in tasks))
    finally:
        bar.close()
        await pool.stop()
    return list(done)  # in task order


def write_results(records: list[AuctionRecord], out_dir: str | Path) -> tuple[Path, Summary]:
    """Write ``auctions.parquet`` and ``summary.json`` into ``out_dir``; return the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = records_table(records)
    path = out / "auctions.parquet"
    tmp = out / ".auctions.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(path)  # readers never see a half-written file
    summary = summarize(table)
    (out / "summary.json").write_text(json.dumps(summary.model_dump(), indent=2))
    return path, summary
