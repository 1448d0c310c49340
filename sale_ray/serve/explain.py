"""Why an agent answered, and what it cost: the ``sale`` field and the ``x-sale-*`` headers.

Headers (every chat / task response; streams send those known when the first byte goes out):

* ``x-sale-auction-id`` — look the full record up at ``GET /v1/auctions/{id}``
* ``x-sale-winner`` — the agent whose answer this is (passthrough: the agent named)
* ``x-sale-cost-usd`` — dollars spent by every model call of this request
* ``x-sale-scores`` — per agent ``name=C−V`` (lower wins) or ``name=rejected``, ``;``-separated
"""

from __future__ import annotations

from ..types import AuctionRecord, Usage
from .wire import AgentScore, SaleInfo

H_AUCTION, H_WINNER, H_COST, H_SCORES = (
    "x-sale-auction-id",
    "x-sale-winner",
    "x-sale-cost-usd",
    "x-sale-scores",
)


def scores(rec: AuctionRecord) -> list[AgentScore]:
    """Every bid of the record (refined bids after the originals), in the auction's numbers."""
    return [
        AgentScore(
            agent=sb.bid.agent,
            score=sb.score,
            cost=sb.cost,
            value=sb.value,
            jury=dict(sb.jury),
            refined=sb.bid.refined,
            rejected=sb.bid.rejected,
        )
        for sb in rec.bids
    ]


def reason(rec: AuctionRecord) -> str:
    """One sentence a user can read: who won, against whom, by what margin, who was out."""
    ranked = sorted((s for s in rec.bids if s.score is not None), key=lambda s: s.score or 0.0)
    out = [f"{s.bid.agent} ({s.bid.rejected[:80]})" for s in rec.bids if s.bid.rejected]
    if rec.winner is None:
        text = f"no answer: {rec.error or (rec.execution.error if rec.execution else 'no winner')}"
    else:
        mine = next((s for s in ranked if s.bid.agent == rec.winner), None)
        others = [s for s in ranked if s.bid.agent != rec.winner][:2]
        text = f"{rec.winner} won"
        if mine is not None:
            text += f" with the lowest C − V ({mine.score:.3f})"
        if others:
            text += "; next: " + ", ".join(f"{s.bid.agent} ({s.score:.3f})" for s in others)
        if rec.provisional_winner and rec.provisional_winner != rec.winner:
            text += f"; {rec.provisional_winner} led before refinement"
        if rec.execution is not None and rec.execution.error:
            text += f"; its execution failed: {rec.execution.error[:200]}"
    if out:
        text += "; out: " + ", ".join(out)
    return text


def sale_info(rec: AuctionRecord) -> SaleInfo:
    ex = rec.execution
    return SaleInfo(
        auction_id=rec.auction_id,
        task_id=rec.task_id,
        winner=rec.winner,
        provisional_winner=rec.provisional_winner,
        cost_usd=rec.cost_usd,
        scores=scores(rec),
        reason=reason(rec),
        error=rec.error or (ex.error if ex else None),
    )


def passthrough_info(agent: str, usage: Usage) -> SaleInfo:
    return SaleInfo(winner=agent, cost_usd=usage.cost_usd, reason=f"passthrough to {agent}")


def headers(info: SaleInfo) -> dict[str, str]:
    """The ``x-sale-*`` headers of ``info`` (ASCII only: agent names are ``[A-Za-z0-9_.-]``)."""
    h = {H_COST: f"{info.cost_usd:.8f}"}
    if info.auction_id:
        h[H_AUCTION] = info.auction_id
    if info.winner:
        h[H_WINNER] = info.winner
    if info.scores:
        h[H_SCORES] = ";".join(
            f"{s.agent}={'rejected' if s.score is None else f'{s.score:.4f}'}"
            + ("(refined)" if s.refined else "")
            for s in info.scores
        )
    return h


def total_usage(rec: AuctionRecord) -> Usage:
    """Everything the auction used, summed over phases (what the user pays for)."""
    total = Usage()
    for u in rec.phase_usage.values():
        total = total + u
    return total
