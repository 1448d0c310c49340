"""Named DuckDB queries over the logs, run in place (local folder, one file, or ``s3://``).

Each :class:`Query` is plain SQL over the views :mod:`sale_ray.logdb` defines (``auctions``,
``decisions``, ``matrix``, ``memory``), with ``$name`` parameters; docs/queries.md lists them
with their SQL and how to run them from the ``duckdb`` CLI. From Python::

    from sale_ray.queries import run_query
    run_query("spend_per_agent_per_day", "runs/demo")                  # a pyarrow Table
    run_query("reliance_on_largest", "s3://bucket/runs/x", bucket_s=3600,
              endpoint_url="http://127.0.0.1:9000")

and from the shell: ``python -m sale_ray.queries NAME SRC [--param k=v] [--endpoint-url URL]``
(``--list``: the queries; ``--sql NAME``: one's SQL; ``--views SRC``: the views, for the CLI).
``sale-ray report`` is built on the ``method_*`` / ``winner_share_over_stream`` queries below.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .errors import UserError
from .logdb import COST_PHASES, LogDB, open_logs

_TOKENS = ", ".join(f"sum(coalesce({p}_tokens, 0))::BIGINT AS {p}_tokens" for p in COST_PHASES)
_COSTS = ", ".join(f"fsum(coalesce({p}_cost_usd, 0.0)) AS {p}_cost_usd" for p in COST_PHASES)
_DAY = "CAST(make_timestamp(CAST(started_at * 1e6 AS BIGINT)) AS DATE)"  # UTC, any TimeZone


@dataclass(frozen=True)
class Query:
    """A named, documented SQL query over one of :mod:`sale_ray.logdb`'s views."""

    name: str
    view: str
    doc: str
    sql: str
    params: dict[str, Any] = field(default_factory=dict)


_ALL = (
    # --- auction logs (sale-ray run) ---------------------------------------------------------
    Query(
        "spend_per_agent_per_day",
        "auctions",
        "$ per UTC day per agent: its bids (bids[].cost_usd, refined bids excluded) plus the "
        "executions it won (execute_cost_usd). The jury and refinement phases belong to no "
        "single agent: they are the agent '(jury+refine)'. A day's rows add up to its spend.",
        f"""
WITH a AS (SELECT *, {_DAY} AS day FROM auctions WHERE started_at IS NOT NULL),
spend AS (
    SELECT day, b.agent AS agent, coalesce(b.cost_usd, 0.0) AS bid_usd, 0.0 AS execute_usd,
           0.0 AS jury_refine_usd
    FROM (SELECT day, unnest(bids) AS b FROM a)
    WHERE NOT coalesce(b.refined, false)
    UNION ALL
    SELECT day, winner, 0.0, coalesce(execute_cost_usd, 0.0), 0.0 FROM a WHERE winner IS NOT NULL
    UNION ALL
    SELECT day, '(jury+refine)', 0.0, 0.0,
           coalesce(jury_cost_usd, 0.0) + coalesce(refine_cost_usd, 0.0)
    FROM a
)
SELECT day, agent, fsum(bid_usd) AS bid_usd, fsum(execute_usd) AS execute_usd,
       fsum(jury_refine_usd) AS jury_refine_usd,
       fsum(bid_usd + execute_usd + jury_refine_usd) AS spend_usd
FROM spend GROUP BY day, agent
ORDER BY day, agent
""",
    ),
    Query(
        "reliance_on_largest",
        "auctions",
        "Per time bucket ($bucket_s seconds from the epoch; 86400 = UTC days): auctions, and "
        "the share the largest agent won. The largest agent is the one with the highest bid "
        "price ($ per token), as the log does not carry the pool.",
        """
SELECT to_timestamp(floor(started_at / $bucket_s) * $bucket_s) AS bucket_start,
       count(*) AS auctions,
       avg(CASE WHEN largest THEN 1.0 ELSE 0.0 END) AS largest_share
FROM run_decisions WHERE started_at IS NOT NULL
GROUP BY bucket_start ORDER BY bucket_start
""",
        {"bucket_s": 86400},
    ),
    Query(
        "winner_share_over_time",
        "auctions",
        "Per time bucket ($bucket_s seconds) and agent: the share of that bucket's auctions it "
        "won (agent NULL: no winner).",
        """
SELECT bucket_start, agent, count(*) AS won,
       count(*) / sum(count(*)) OVER (PARTITION BY bucket_start) AS share
FROM (
    SELECT to_timestamp(floor(started_at / $bucket_s) * $bucket_s) AS bucket_start,
           winner AS agent
    FROM auctions WHERE started_at IS NOT NULL
)
GROUP BY bucket_start, agent ORDER BY bucket_start, agent
""",
        {"bucket_s": 86400},
    ),
    Query(
        "pass_at_1_per_bin",
        "auctions",
        "Per complexity bin: auctions, how many a verifier judged, pass@1 among those, $ spent.",
        """
SELECT bin, count(*) AS auctions, count(passed) AS verified,
       count(*) FILTER (WHERE passed) AS passed,
       count(*) FILTER (WHERE passed) / nullif(count(passed), 0) AS pass_at_1,
       fsum(coalesce(cost_usd, 0.0)) AS cost_usd
FROM auctions GROUP BY bin ORDER BY bin NULLS LAST
""",
    ),
    Query(
        "spend_per_phase",
        "auctions",
        "Per auction phase: tokens, $ and mean seconds per auction, over the whole log.",
        " UNION ALL ".join(
            f"SELECT '{p}' AS phase, sum(coalesce({p}_tokens, 0))::BIGINT AS tokens, "
            f"fsum(coalesce({p}_cost_usd, 0.0)) AS cost_usd, avg(coalesce({p}_s, 0.0)) AS mean_s "
            "FROM auctions"
            for p in (*COST_PHASES, "evaluate")
        ),
    ),
    # --- evaluation logs (sale-ray eval; a run log reads as method 'run') -------------------
    Query(
        "method_summary",
        "decisions",
        "Per method: tasks, passed, pass@1, $, reliance on the largest agent, executions per "
        "task, tokens and $ per phase (the report's Methods table).",
        f"""
SELECT method, count(*) AS tasks, count(*) FILTER (WHERE passed) AS passed,
       avg(CASE WHEN passed THEN 1.0 ELSE 0.0 END) AS pass_at_1,
       fsum(coalesce(cost_usd, 0.0)) AS cost_usd,
       avg(CASE WHEN largest THEN 1.0 ELSE 0.0 END) AS largest_share,
       avg(coalesce(len(executed), 0)) AS executions_per_task,
       {_TOKENS}, {_COSTS}
FROM decisions GROUP BY method ORDER BY method
""",
    ),
    Query(
        "method_pass_at_1_per_bin",
        "decisions",
        "Per method and complexity bin: tasks, pass@1, $, reliance on the largest agent.",
        """
SELECT method, bin, count(*) AS tasks,
       avg(CASE WHEN passed THEN 1.0 ELSE 0.0 END) AS pass_at_1,
       fsum(coalesce(cost_usd, 0.0)) AS cost_usd,
       avg(CASE WHEN largest THEN 1.0 ELSE 0.0 END) AS largest_share
FROM decisions GROUP BY method, bin ORDER BY method, bin NULLS LAST
""",
    ),
    Query(
        "method_winner_share",
        "decisions",
        "Per method and executing agent: the share of the method's tasks that agent won.",
        """
SELECT method, agent, share FROM (
    SELECT method, agent, count(*) / sum(count(*)) OVER (PARTITION BY method) AS share
    FROM decisions GROUP BY method, agent
) WHERE agent IS NOT NULL AND agent <> '' ORDER BY method, agent
""",
    ),
    Query(
        "method_notes",
        "decisions",
        "Per method: its most frequent notes (errors, skips), with counts, at most $top each.",
        """
SELECT method, note, k, n FROM (
    SELECT method, note, count(*) AS k, any_value(n) AS n,
           row_number() OVER (PARTITION BY method ORDER BY count(*) DESC, note) AS r
    FROM (SELECT *, count(*) OVER (PARTITION BY method) AS n FROM decisions)
    WHERE note IS NOT NULL AND note <> ''
    GROUP BY method, note
) WHERE r <= $top ORDER BY method, r
""",
        {"top": 5},
    ),
    Query(
        "winner_share_over_stream",
        "decisions",
        "The held-out stream (tasks in order) cut into $buckets equal parts: per method, part "
        "and executing agent, tasks won; 'tasks' is the part's size.",
        """
WITH d AS (
    SELECT method, agent,
           row_number() OVER (PARTITION BY method ORDER BY "order") - 1 AS i,
           count(*) OVER (PARTITION BY method) AS n
    FROM decisions
),
q AS (SELECT *, ($buckets * (i + 1) + n - 1) // n - 1 AS part FROM d)
SELECT method, part, agent, count(*) AS won,
       sum(count(*)) OVER (PARTITION BY method, part)::BIGINT AS tasks
FROM q GROUP BY method, part, agent ORDER BY method, part, agent NULLS LAST
""",
        {"buckets": 4},
    ),
    Query(
        "matrix_signal_cells",
        "matrix",
        "The matrix's numeric columns the signal AUCs need, and each verdict's scores only "
        "(prompts, plans and answers stay on disk).",
        """
SELECT task_id, agent, bin, passed, entropy, jury_mean, jury_self, plan_tokens, self_check,
       jury_error, direct_passed, direct_self_check, direct_entropy,
       CASE WHEN verdict_json IS NULL OR verdict_json = '' THEN NULL ELSE
            json_object('scores', json_extract(verdict_json, '$.scores'),
                        'error', json_extract(verdict_json, '$.error'))::VARCHAR
       END AS verdict_json
FROM matrix
""",
    ),
    # --- memory exports (sale-ray snapshot export) --------------------------------------------
    Query(
        "memory_agents",
        "memory",
        "Per agent in a memory export: bids kept, auctions won, and how many of those passed.",
        """
SELECT b.agent AS agent, count(*) AS bids,
       count(*) FILTER (WHERE b.won) AS won,
       count(*) FILTER (WHERE b.won AND passed) AS won_and_passed
FROM (SELECT passed, unnest(bids) AS b FROM memory)
GROUP BY b.agent ORDER BY b.agent
""",
    ),
)
QUERIES: dict[str, Query] = {q.name: q for q in _ALL}


def query_db(db: LogDB, name: str, **params: Any) -> pa.Table:
    """Run the named query on an open :class:`~sale_ray.logdb.LogDB`; UserError when the
    source lacks the view it reads, or ``params`` names one the query does not take."""
    q = QUERIES.get(name)
    if q is None:
        raise UserError(f"unknown query {name!r}; known: {', '.join(QUERIES)}")
    if q.view not in db.views:
        raise UserError(
            f"{db.src}: query {name!r} needs a {q.view!r} log; found {sorted(db.views)}"
        )
    unknown = set(params) - set(q.params)
    if unknown:
        raise UserError(f"query {name!r} takes {sorted(q.params) or 'no parameters'}")
    return db.sql(q.sql, {**q.params, **params}).to_arrow_table()


def view_statements(db: LogDB) -> str:
    """The ``CREATE VIEW`` statements behind ``db``'s views, to paste into the ``duckdb`` CLI
    (after ``LOAD httpfs`` and a ``CREATE SECRET`` for S3): the same views, the same queries."""
    rows = db.sql(
        "SELECT sql FROM duckdb_views() WHERE NOT internal ORDER BY view_name = 'decisions'"
    ).fetchall()
    return "\n".join(r[0].strip() for r in rows)


def markdown() -> str:
    """Every query as a Markdown section (docs/queries.md's "The queries" holds this text)."""
    out = []
    for q in _ALL:
        ps = ", ".join(f"`${k}` (default {v})" for k, v in q.params.items())
        out.append(
            f"### `{q.name}`\n\nView `{q.view}`. {q.doc}"
            + (f" Parameters: {ps}." if ps else "")
            + f"\n\n```sql\n{q.sql.strip()}\n```\n\n"
        )
    return "".join(out)


def run_query(name: str, src: str, *, endpoint_url: str | None = None, **params: Any) -> pa.Table:
    """Run the named query against ``src`` (folder, ``.parquet`` file or ``s3://…``)."""
    with open_logs(src, endpoint_url) as db:
        return query_db(db, name, **params)


def main(argv: list[str] | None = None) -> int:
    """``python -m sale_ray.queries NAME SRC``: print a named query's result (or ``--list``)."""
    p = argparse.ArgumentParser(
        prog="python -m sale_ray.queries", description=__doc__.split("\n")[0]
    )
    p.add_argument("name", nargs="?", help="query name (--list shows them)")
    p.add_argument("src", nargs="?", help="log folder, .parquet file or s3://bucket/prefix")
    p.add_argument("--param", action="append", default=[], help="k=v (e.g. bucket_s=3600)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (http://…)")
    p.add_argument("--list", action="store_true", help="list the queries and exit")
    p.add_argument("--sql", action="store_true", help="print the query's SQL instead")
    p.add_argument(
        "--markdown", action="store_true", help="the queries as docs/queries.md lists them"
    )
    p.add_argument(
        "--views",
        action="store_true",
        help="print SRC's CREATE VIEW statements (for the duckdb CLI)",
    )
    args = p.parse_args(argv)
    if args.views:
        with open_logs(args.name or ".", args.endpoint_url) as db:  # the one argument is SRC
            print(view_statements(db))
        return 0
    if args.markdown:
        print(markdown(), end="")
        return 0
    if args.list or not args.name:
        for q in _ALL:
            print(f"{q.name:<28} [{q.view}] {q.doc}")
        return 0
    if args.sql:
        print(QUERIES[args.name].sql.strip() if args.name in QUERIES else "")
        return 0 if args.name in QUERIES else 2
    params = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        params[k] = float(v) if "." in v else int(v) if v.lstrip("-").isdigit() else v
    try:
        table = run_query(args.name, args.src or ".", endpoint_url=args.endpoint_url, **params)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import duckdb

    duckdb.from_arrow(table).show(max_rows=10_000, max_width=200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
