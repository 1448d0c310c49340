"""Summaries of an auction log: pass@1, money, winner shares, auction overhead, phase times.

Works on the Arrow table of ``auctions.parquet`` (schema in :mod:`sale_ray.types`), so it
summarises a live run and an old log file the same way.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from pydantic import BaseModel

from .types import PHASES

AUCTION_PHASES = ("bid", "jury", "refine")


class Summary(BaseModel):
    """What ``sale-ray run`` prints at the end (and ``--json`` writes)."""

    tasks: int
    passed: int
    verified: int
    pass_at_1: float | None
    cost_usd: float
    cost_usd_by_phase: dict[str, float]
    tokens_by_phase: dict[str, int]
    seconds_by_phase: dict[str, float]
    winner_share: dict[str, float]
    auction_overhead: float | None
    errors: int


def summarize(table: pa.Table) -> Summary:
    """Aggregate one auction log (one row per task)."""
    rows = table.to_pylist()
    n = len(rows)
    verified = [r for r in rows if r["passed"] is not None]
    passed = sum(1 for r in verified if r["passed"])
    tokens = {p: sum(r[f"{p}_tokens"] or 0 for r in rows) for p in PHASES}
    auction_tokens = sum(tokens[p] for p in AUCTION_PHASES)
    winners = Counter(r["winner"] for r in rows if r["winner"])
    return Summary(
        tasks=n,
        passed=passed,
        verified=len(verified),
        pass_at_1=passed / len(verified) if verified else None,
        cost_usd=sum(r["cost_usd"] or 0.0 for r in rows),
        cost_usd_by_phase={p: sum(r[f"{p}_cost_usd"] or 0.0 for r in rows) for p in PHASES},
        tokens_by_phase=tokens,
        seconds_by_phase={
            p: (sum(r[f"{p}_s"] or 0.0 for r in rows) / n if n else 0.0) for p in PHASES
        },
        winner_share={a: c / n for a, c in sorted(winners.items())},
        auction_overhead=auction_tokens / tokens["execute"] if tokens["execute"] else None,
        errors=sum(1 for r in rows if r["error"]),
    )


def format_summary(s: Summary) -> str:
    """A fixed-layout text block; the last lines of ``sale-ray run``'s output."""
    p1 = "n/a" if s.pass_at_1 is None else f"{s.pass_at_1:.3f} ({s.passed}/{s.verified})"
    oh = "n/a" if s.auction_overhead is None else f"{s.auction_overhead:.2f}"
    lines = [
        "== sale-ray summary ==",
        f"tasks            {s.tasks}   errors {s.errors}",
        f"pass@1           {p1}",
        f"total cost       ${s.cost_usd:.8f}",
        f"auction overhead {oh}  (bid+jury+refine tokens / execution tokens)",
        "phase      tokens      cost_usd      mean_s/task",
    ]
    for p in PHASES:
        lines.append(
            f"{p:<9} {s.tokens_by_phase[p]:>7}  {s.cost_usd_by_phase[p]:>12.8f}  "
            f"{s.seconds_by_phase[p]:>10.2f}"
        )
    lines.append("winner share     " + ", ".join(f"{a} {v:.0%}" for a, v in s.winner_share.items()))
    return "\n".join(lines)
