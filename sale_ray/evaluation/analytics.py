"""Offline analytics: Parquet logs (local folder or ``s3://``) -> Markdown + HTML report with plots.

``sale-ray report DIR|s3://bucket/prefix`` reads what ``sale-ray eval`` wrote there
(``decisions.parquet``: one row per method x held-out task; ``matrix.parquet``: every agent's
bid, verdict and execution per task; ``summary.json``) — or a plain ``sale-ray run`` folder
(``auctions.parquet`` and/or the parts of a run still going) — with DuckDB queries over the
files in place (:mod:`sale_ray.queries`), and writes ``report.md``, ``report.html`` and PNG
plots (matplotlib, extra ``report``; without it the report has tables only).

The numbers (pass@1, cost, reliance on the largest agent, per-bin figures) are the ones
:func:`method_stats` gives the evaluation's ``summary.json``, computed in SQL
(:func:`method_stats_sql`; a test holds the two equal); signal AUCs come from :mod:`.signals`,
the comparisons with the largest agent, the oracle and the targets from :mod:`.comparison`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import UserError
from ..logdb import LogDB, open_logs
from .comparison import ratio
from .matrix import COST_PHASES
from .signals import auc, direct_signal_aucs, signal_aucs  # noqa: F401 - their old home

AUCTION_PHASES = ("bid", "jury", "refine")


# --- statistics ---------------------------------------------------------------------------------
def method_stats(
    rows: Iterable[dict[str, Any]], lengths: dict[str, str | None] | None = None
) -> dict[str, dict[str, Any]]:
    """Per method: pass@1, total cost, reliance on the largest agent, phase split, per bin —
    and per task length (``short`` / ``long``) where ``lengths`` maps task ids to them.

    ``rows`` are :data:`~.matrix.DECISION_SCHEMA` dicts.
    """
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_method[r["method"]].append(r)
    out: dict[str, dict[str, Any]] = {}
    for m, rs in by_method.items():
        n = len(rs)
        tokens = {p: int(sum(r[f"{p}_tokens"] or 0 for r in rs)) for p in COST_PHASES}
        cost = {p: float(sum(r[f"{p}_cost_usd"] or 0.0 for r in rs)) for p in COST_PHASES}
        auction_tokens = sum(tokens[p] for p in AUCTION_PHASES)
        winners: dict[str, float] = defaultdict(float)
        for r in rs:
            if r["agent"]:
                winners[r["agent"]] += 1 / n
        bins = {
            str(b): _group([r for r in rs if r["bin"] == b])
            for b in sorted({r["bin"] for r in rs}, key=lambda x: (x is None, x))
        }
        by_length: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rs:
            if lengths and lengths.get(r["task_id"]):
                by_length[str(lengths[r["task_id"]])].append(r)
        # "k/n": a note on one decision must not read as if it were the method's whole story
        counts = Counter(r["note"] for r in rs if r.get("note"))
        notes = [f"{t} ({k}/{n})" for t, k in sorted(counts.items(), key=lambda x: (-x[1], x[0]))]
        out[m] = {
            "pass_at_1": float(np.mean([bool(r["passed"]) for r in rs])) if n else None,
            "cost_usd": float(sum(r["cost_usd"] for r in rs)),
            "largest_share": float(np.mean([bool(r["largest"]) for r in rs])) if n else None,
            "tasks": n,
            "passed": int(sum(bool(r["passed"]) for r in rs)),
            "executions_per_task": float(np.mean([len(r["executed"] or []) for r in rs])),
            "tokens_by_phase": tokens,
            "cost_usd_by_phase": cost,
            "auction_overhead": ratio(auction_tokens, tokens["execute"]),
            "auction_cost_share": ratio(sum(cost[p] for p in AUCTION_PHASES), sum(cost.values())),
            "winner_share": dict(sorted(winners.items())),
            "per_bin": bins,
            "notes": notes[:5],
        }
        if lengths is not None:  # the decisions log has no length: only the run itself knows
            out[m]["per_length"] = {
                k: _group(v) for k, v in sorted(by_length.items(), reverse=True)
            }
    return out


def _group(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Tasks, pass@1, $ and reliance on the largest agent of some decisions of one method."""
    return {
        "tasks": len(rs),
        "pass_at_1": float(np.mean([bool(r["passed"]) for r in rs])),
        "cost_usd": float(sum(r["cost_usd"] for r in rs)),
        "largest_share": float(np.mean([bool(r["largest"]) for r in rs])),
    }


# --- reading logs (local or S3): DuckDB over the files in place (sale_ray.logdb) ----------------
def method_stats_sql(db: LogDB) -> dict[str, dict[str, Any]]:
    """:func:`method_stats` computed by DuckDB over the ``decisions`` view (the named queries
    ``method_*`` in :mod:`sale_ray.queries`): the same dict, without loading the rows."""
    from ..queries import query_db

    shares: dict[str, dict[str, float]] = defaultdict(dict)
    for r in query_db(db, "method_winner_share").to_pylist():
        shares[r["method"]][r["agent"]] = float(r["share"])
    bins: dict[str, dict[str, Any]] = defaultdict(dict)
    for r in query_db(db, "method_pass_at_1_per_bin").to_pylist():
        bins[r["method"]][str(r["bin"])] = {
            k: float(r[k]) if k != "tasks" else int(r[k])
            for k in ("tasks", "pass_at_1", "cost_usd", "largest_share")
        }
    notes: dict[str, list[str]] = defaultdict(list)
    for r in query_db(db, "method_notes").to_pylist():
        notes[r["method"]].append(f"{r['note']} ({r['k']}/{r['n']})")
    out: dict[str, dict[str, Any]] = {}
    for r in query_db(db, "method_summary").to_pylist():
        m = r["method"]
        tokens = {p: int(r[f"{p}_tokens"]) for p in COST_PHASES}
        cost = {p: float(r[f"{p}_cost_usd"]) for p in COST_PHASES}
        out[m] = {
            "pass_at_1": float(r["pass_at_1"]),
            "cost_usd": float(r["cost_usd"]),
            "largest_share": float(r["largest_share"]),
            "tasks": int(r["tasks"]),
            "passed": int(r["passed"]),
            "executions_per_task": float(r["executions_per_task"]),
            "tokens_by_phase": tokens,
            "cost_usd_by_phase": cost,
            "auction_overhead": ratio(sum(tokens[p] for p in AUCTION_PHASES), tokens["execute"]),
            "auction_cost_share": ratio(sum(cost[p] for p in AUCTION_PHASES), sum(cost.values())),
            "winner_share": dict(sorted(shares[m].items())),
            "per_bin": bins[m],
            "notes": notes[m],
        }
    return out


def stream_shares(db: LogDB, buckets: int) -> dict[str, list[dict[str, Any]]]:
    """Per method: the task stream (in order) cut into ``buckets`` parts, each
    ``{"part", "tasks", "won": {agent: tasks won}}`` (query ``winner_share_over_stream``)."""
    from ..queries import query_db

    parts: dict[tuple[str, int], dict[str, Any]] = {}
    for r in query_db(db, "winner_share_over_stream", buckets=buckets).to_pylist():
        p = parts.setdefault(
            (r["method"], r["part"]), {"part": r["part"], "tasks": int(r["tasks"]), "won": {}}
        )
        if r["agent"]:
            p["won"][r["agent"]] = int(r["won"])
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (m, _), p in sorted(parts.items()):
        out[m].append(p)
    return dict(out)


def decisions_from_auctions(table: pa.Table, method: str = "run") -> list[dict[str, Any]]:
    """Decision rows from a ``sale-ray run`` log. The largest agent is inferred from the bids'
    prices ($ per token), since the auction log does not carry the pool."""
    rows = table.to_pylist()
    price: dict[str, float] = {}
    for r in rows:
        for b in r["bids"] or []:
            toks = (b["prompt_tokens"] or 0) + (b["plan_tokens"] or 0)
            if toks and b["cost_usd"]:
                price[b["agent"]] = max(price.get(b["agent"], 0.0), b["cost_usd"] / toks)
    largest = max(price, key=lambda a: price[a]) if price else None
    out = []
    for i, r in enumerate(sorted(rows, key=lambda r: r["started_at"] or 0.0)):
        d = {
            "method": method,
            "task_id": r["task_id"],
            "bin": r["bin"],
            "order": i,
            "agent": r["winner"],
            "executed": [r["winner"]] if r["winner"] else [],
            "provisional": r["provisional_winner"],
            "passed": bool(r["passed"]),
            "largest": r["winner"] is not None and r["winner"] == largest,
            "note": r["error"] or "",
        }
        for p in COST_PHASES:
            d[f"{p}_tokens"] = r.get(f"{p}_tokens") or 0
            d[f"{p}_cost_usd"] = r.get(f"{p}_cost_usd") or 0.0
        d["cost_usd"] = sum(d[f"{p}_cost_usd"] for p in COST_PHASES)
        out.append(d)
    return out


# --- the report ---------------------------------------------------------------------------------
def _longest_stream(db: LogDB) -> int:
    return db.sql(
        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM decisions GROUP BY method)"
    ).fetchone()[0]


def write_report(
    src: str,
    out_dir: str | Path | None = None,
    *,
    endpoint_url: str | None = None,
    plots: bool = True,
) -> Path:
    """Read ``src`` and write ``report.md`` + ``report.html`` (+ PNGs) into ``out_dir``
    (default: ``src/report`` for a local folder). Returns the Markdown path.

    Every figure is a DuckDB query over the Parquet files in place (:mod:`sale_ray.queries`),
    so the report's memory is the size of its tables, not of the logs; only the matrix's
    numeric columns are loaded, for the signal AUCs."""
    from ..queries import query_db
    from .report_render import ReportData, build_blocks, render_html, render_markdown

    if out_dir is None:
        if src.startswith("s3://"):
            raise UserError("an s3:// source needs --out (a local folder for the report)")
        out_dir = Path(src) / "report"
    out = Path(out_dir)
    with open_logs(src, endpoint_url) as db:
        summary_text = db.text("summary.json")
        data = ReportData(
            stats=method_stats_sql(db),
            stream=stream_shares(db, 4),
            # parts of >= 3 tasks, at most 10: a share of 1 task in 1 says nothing
            stream_fine=stream_shares(db, max(1, min(10, _longest_stream(db) // 3))),
            matrix=query_db(db, "matrix_signal_cells").to_pylist() if "matrix" in db.views else [],
            summary=json.loads(summary_text) if summary_text else None,
        )
    out.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(data, out if plots else None)
    md = out / "report.md"
    md.write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks, title=f"sale-ray report: {src}"))
    return md


def add_report_parser(sub: Any) -> None:
    """``sale-ray report`` (wired into :mod:`sale_ray.cli`)."""
    r = sub.add_parser("report", help="Markdown + HTML report with plots from Parquet logs")
    r.add_argument("src", help="folder or s3://bucket/prefix written by `sale-ray eval` / `run`")
    r.add_argument("--out", default=None, help="report folder (default: SRC/report)")
    r.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (http://…)")
    r.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    r.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    path = write_report(args.src, args.out, endpoint_url=args.endpoint_url, plots=not args.no_plots)
    print(f"wrote {path} and {path.with_suffix('.html')}")
    return 0
