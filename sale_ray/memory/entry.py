"""What one auction leaves in memory, and the contrastive pairs refinement reads from it.

A :class:`MemoryEntry` is the memory's view of an :class:`~sale_ray.types.AuctionRecord`: the task
text (what retrieval embeds), every valid bid's plan and who won. Its Arrow form
(:data:`ENTRY_SCHEMA`) is what shards keep as segments and what snapshots write to Parquet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from ..types import AuctionRecord, ScoredBid
from .config import ContrastOn


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemoryBid(_Frozen):
    """One valid bid of a past auction."""

    agent: str
    plan: str
    refined: bool = False
    won: bool = Field(default=False, description="This exact bid won the auction.")
    passed: bool | None = Field(
        default=None,
        description="The verifier on this bid's answer: the winner's outcome, or with "
        "`bid: answer` and outcome memory every judged answer's. None: not judged.",
    )


class MemoryEntry(_Frozen):
    """One past auction as memory keeps it (keyed by ``auction_id``)."""

    auction_id: str
    task_id: str
    task_text: str
    created_at: float = Field(description="Unix seconds the auction started (or was stored).")
    winner: str | None = None
    passed: bool | None = Field(default=None, description="Verifier outcome; None = no verifier.")
    bids: list[MemoryBid] = Field(default_factory=list)

    def winning_bid(self) -> MemoryBid | None:
        """The bid marked as the winner, if any."""
        return next((b for b in self.bids if b.won), None)


class ContrastPair(_Frozen):
    """A plan of ``agent`` that lost next to the plan that won, for one similar past task."""

    task_text: str
    losing_plan: str
    winning_plan: str
    auction_id: str = ""
    winner: str | None = None


# --- Arrow form ---------------------------------------------------------------------------------
BID_TYPE = pa.struct(
    [
        ("agent", pa.string()),
        ("plan", pa.string()),
        ("refined", pa.bool_()),
        ("won", pa.bool_()),
        ("passed", pa.bool_()),  # added later: older segments cast to it with nulls
    ]
)
ENTRY_SCHEMA = pa.schema(
    [
        ("auction_id", pa.string()),
        ("task_id", pa.string()),
        ("task_text", pa.string()),
        ("created_at", pa.float64()),
        ("winner", pa.string()),
        ("passed", pa.bool_()),
        ("bids", pa.list_(BID_TYPE)),
    ]
)


def entries_table(entries: Sequence[MemoryEntry]) -> pa.Table:
    """Arrow table (:data:`ENTRY_SCHEMA`) of entries, in order."""
    cols: dict[str, list[Any]] = {name: [] for name in ENTRY_SCHEMA.names}
    for e in entries:
        cols["auction_id"].append(e.auction_id)
        cols["task_id"].append(e.task_id)
        cols["task_text"].append(e.task_text)
        cols["created_at"].append(e.created_at)
        cols["winner"].append(e.winner)
        cols["passed"].append(e.passed)
        cols["bids"].append([b.model_dump() for b in e.bids])
    return pa.table(cols, schema=ENTRY_SCHEMA)


def entries_from_table(table: pa.Table) -> list[MemoryEntry]:
    """Entries of an Arrow table holding (at least) the :data:`ENTRY_SCHEMA` columns."""
    rows = table.select(ENTRY_SCHEMA.names).to_pylist()
    return [MemoryEntry.model_validate(r) for r in rows]


# --- from an auction record -------------------------------------------------------------------
def _winning_index(record: AuctionRecord, valid: list[ScoredBid]) -> int | None:
    """Which of the winner's bids won (SALE.md step 7).

    If the final winner is the provisional winner, its original bid won (only strictly cheaper
    agents refine, so it has no refined bid). Otherwise the winner got there by refining: its best
    (lowest ``C - V``) refined bid won; a record without one falls back to its best bid.
    """
    mine = [(i, sb) for i, sb in enumerate(valid) if sb.bid.agent == record.winner]
    if not mine:
        return None
    refined_won = record.winner != record.provisional_winner
    preferred = [p for p in mine if p[1].bid.refined == refined_won] or mine

    def key(p: tuple[int, ScoredBid]) -> float:
        return p[1].score if p[1].score is not None else float("inf")

    return min(preferred, key=key)[0]


def entry_from_record(record: AuctionRecord, task_text: str) -> MemoryEntry:
    """The memory entry of one finished auction; rejected bids are skipped."""
    valid = [sb for sb in record.bids if sb.bid.rejected is None]
    won = _winning_index(record, valid) if record.winner else None
    return MemoryEntry(
        auction_id=record.auction_id,
        task_id=record.task_id,
        task_text=task_text,
        created_at=record.started_at or time.time(),
        winner=record.winner,
        passed=record.evaluation.passed,
        bids=[
            MemoryBid(
                agent=sb.bid.agent,
                plan=sb.bid.plan,
                refined=sb.bid.refined,
                won=i == won,
                passed=sb.passed if sb.passed is not None or i != won else record.passed,
            )
            for i, sb in enumerate(valid)
        ],
    )


def bid_outcomes(entry: MemoryEntry) -> dict[str, bool]:
    """How each agent's judged answer did in one past auction (``agent -> passed``; an
    agent with no judged bid there is absent): what outcome memory reads. An entry written
    before bids carried their own outcome gives its winner's."""
    out: dict[str, bool] = {}
    for b in entry.bids:  # an agent may have bid twice (refined): its judged bid counts
        ok = b.passed if b.passed is not None or not b.won else entry.passed
        if ok is not None:
            out[b.agent] = ok
    return out


# --- contrastive pairs ------------------------------------------------------------------------
def contrastive_pairs(
    entries: Iterable[MemoryEntry], agent: str, contrast_on: ContrastOn = "verified"
) -> list[ContrastPair]:
    """At most one (losing plan, winning plan) pair per retrieved entry, for ``agent``.

    The rule, per entry, in retrieval order:

    * the entry needs a *winning* plan: with ``contrast_on="auction"`` (the paper) that is the
      bid that won the auction; with ``"outcome"`` it must also have passed the verifier, so an
      entry whose winner failed, or whose task had no verifier (``passed is None``), gives no pair;
      with ``"verified"`` (the default) a winner that *failed* its verifier gives no pair, and a
      task without one counts its auction winner;
    * ``agent`` must have bid in it, and must not be the one that won (an agent that won, or won
      and passed, has nothing to learn from that entry);
    * the losing plan is ``agent``'s original bid (its refined bid if it only has that): the
      contrast is shown to an agent about to refine its own first plan.
    """
    pairs: list[ContrastPair] = []
    for e in entries:
        win = e.winning_bid()
        if win is None or win.agent == agent:
            continue
        if contrast_on == "outcome" and e.passed is not True:
            continue
        if contrast_on == "verified" and e.passed is False:
            continue
        mine = [b for b in e.bids if b.agent == agent and not b.won]
        if not mine:
            continue
        lose = next((b for b in mine if not b.refined), mine[0])
        pairs.append(
            ContrastPair(
                task_text=e.task_text,
                losing_plan=lose.plan,
                winning_plan=win.plan,
                auction_id=e.auction_id,
                winner=win.agent,
            )
        )
    return pairs
