"""SALE with memory inside the evaluation: real auctions, because refinement writes new plans.

Memory changes what cheaper agents bid (SALE.md steps 6-7, 9), so unlike every other method it
cannot be read from the evaluation matrix. Protocol used here:

1. a fresh, in-process :class:`~sale_ray.memory.sharded.ShardedMemory` (the evaluation's own;
   no snapshot is restored, so nothing from another run leaks in);
2. it is warmed with the **training** split's auctions, reconstructed from the matrix with the
   fitted weights (the bids, verdicts, winner and its verified outcome — what a live run of
   SALE without refinement on those tasks would have stored), which costs no model call;
3. the **held-out** tasks then run as live auctions with the memory's refinement hook
   (:class:`~sale_ray.auction.refinement.MemoryRefiner`), in stream order, each one remembered
   before the next: memory grows online. Bids, jury and unchanged executions are response-cache
   hits; refinements, the jury on refined plans and executions of refined plans are new calls,
   and every token of every phase is counted in the decision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..auction import scoring
from ..config import SaleConfig
from ..types import AuctionRecord, Evaluation, Task
from .matrix import Decision, TaskRow, spend

Evaluator = Callable[[Task, str], Awaitable[Evaluation]]
WARM_NOTE = "memory warmed with the training split's auctions; live on the held-out split"


def memory_available() -> tuple[bool, str]:
    """(whether the memory and its refinement hook can be imported, why not)."""
    try:
        from ..auction.refinement import MemoryRefiner  # noqa: F401
        from ..memory.sharded import ShardedMemory  # noqa: F401
    except ImportError as e:
        return False, f"memory refiner not available ({e})"
    return True, ""


def decision_from_record(method: str, rec: AuctionRecord, order: int) -> Decision:
    """A live auction's record as a :class:`Decision` (every phase's tokens and dollars)."""
    tokens, cost = spend({p: [u] for p, u in rec.phase_usage.items() if p != "evaluate"})
    return Decision(
        method=method,
        task_id=rec.task_id,
        bin=rec.bin,
        order=order,
        agent=rec.winner,
        executed=[rec.winner] if rec.winner else [],
        provisional=rec.provisional_winner,
        passed=bool(rec.passed),
        tokens=tokens,
        cost_usd=cost,
        note=rec.error or "",
    )


def record_from_row(row: TaskRow, weights: Any) -> AuctionRecord:
    """The auction SALE without refinement holds on ``row`` (for warming the memory)."""
    scored = scoring.score_bids(
        [c.bid for c in row.cells.values()], row.verdicts, row.prices, weights
    )
    win = scoring.pick_winner(scored, row.prices)
    cell = row.cells[win.bid.agent] if win else None
    return AuctionRecord(
        auction_id=f"matrix:{row.task_id}",
        task_id=row.task_id,
        kind=row.kind,  # type: ignore[arg-type]
        bin=row.bin,
        bids=scored,
        verdicts=row.verdicts,
        provisional_winner=win.bid.agent if win else None,
        winner=win.bid.agent if win else None,
        execution=cell.execution if cell else None,
        evaluation=cell.evaluation if cell else Evaluation(passed=False),
        started_at=float(row.order),
    )


async def sale_with_memory(
    tasks: Sequence[Task],
    rows: Sequence[TaskRow],
    pool: Any,
    config: SaleConfig,
    evaluate: Evaluator,
) -> tuple[dict[str, Decision] | None, str]:
    """Held-out decisions of SALE with memory by task id, or ``(None, why not)``.

    ``config.auction.weights`` must already be the fitted weights.
    """
    ok, why = memory_available()
    if not ok:
        return None, why
    from ..auction.protocol import run_auction
    from ..auction.refinement import MemoryRefiner
    from ..memory.config import MemoryConfig
    from ..memory.sharded import ShardedMemory

    base = getattr(config, "memory", None)
    if base is None:  # no memory section in this config: retrieve with the kNN's embedder
        emb = config.eval.embedder
        base = (
            MemoryConfig(embedder=emb)
            if emb in ("minilm", "minilm-torch", "hashing")
            else MemoryConfig()
        )
    memory = ShardedMemory.local(base.model_copy(update={"shards": 1, "restore_on_start": False}))
    refiner = MemoryRefiner(memory, pool.handles, config)
    by_id = {t.id: t for t in tasks}
    for r in rows:
        if r.split == "train":
            await refiner.remember(by_id[r.task_id], record_from_row(r, config.auction.weights))
    out: dict[str, Decision] = {}
    for r in rows:
        if r.split != "test":
            continue
        t = by_id[r.task_id]
        rec = await run_auction(
            t,
            pool.handles,
            pool.prices,
            config,
            evaluate=evaluate,
            refine=refiner,
            auction_id=f"eval:{t.id}",
        )
        await refiner.remember(t, rec)
        out[t.id] = decision_from_record("sale_published", rec, r.order)
    return out, WARM_NOTE
