"""The Parquet logs as a DuckDB database, queried in place: a local folder or ``s3://…``.

:func:`open_logs` returns a DuckDB connection with a view per log found under the source
(nothing is copied or loaded; DuckDB reads the files, column by column, when a query runs):

* ``auctions`` — a ``sale-ray run`` log: ``auctions.parquet`` *and* the ``parts/part-*.parquet``
  of a run still going, one row per task id, deduplicated exactly as
  :meth:`~sale_ray.sink.ResultSink.finalize` merges them (first done row wins, else the last
  retriable failure); files written before a column existed read it as NULL.
* ``run_decisions`` — ``auctions`` in the columns of ``decisions`` (method ``run``, the winner
  as the executing agent, ``largest`` inferred from the bids' prices), plus ``started_at``.
* ``decisions`` — ``decisions.parquet`` of ``sale-ray eval`` (one row per method x task), or,
  for a plain run log, ``run_decisions``.
* ``matrix`` — ``matrix.parquet`` of ``sale-ray eval`` (every agent on every task).
* ``memory`` — a ``sale-ray snapshot export`` file (``SRC`` is then that ``.parquet`` file).

S3 goes through DuckDB's own ``httpfs`` extension, loaded from the ``duckdb-extension-httpfs``
wheel (PyPI) that pins the same DuckDB version: DuckDB's ``INSTALL httpfs`` downloads from
DuckDB's extension site at run time, which air-gapped machines (and this project's CI) cannot
reach, while a wheel installs with everything else. Credentials come from boto3's standard
chain (environment, ``~/.aws``, instance role) into an in-memory DuckDB secret: never printed,
never written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import InfraError, UserError

FINAL, PARTS = "auctions.parquet", "parts"  # sale_ray.sink's layout
_REFUSED = "budget exhausted"  # sale_ray.sink._BUDGET_REFUSED: how rows before `failure` said so
COST_PHASES = ("bid", "jury", "refine", "execute")


@dataclass
class LogDB:
    """An open DuckDB connection and the views it has over ``src``."""

    con: Any
    src: str
    views: set[str] = field(default_factory=set)
    listing: set[str] = field(default_factory=set)  # the files directly under src (a folder)

    def sql(self, query: str, params: dict[str, Any] | None = None) -> Any:
        """Run ``query`` (with ``$name`` parameters); the DuckDB result (``.arrow()``,
        ``.fetchall()``)."""
        return self.con.execute(query, params or {})

    def text(self, name: str) -> str | None:
        """A small text file beside the logs (``summary.json``), or None if absent."""
        path = f"{self.src}/{name}"
        if path not in self.listing:
            return None
        return self.con.execute("SELECT content FROM read_text($p)", {"p": path}).fetchone()[0]

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> LogDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def httpfs_path() -> Path:
    """The ``httpfs`` extension file shipped by the ``duckdb-extension-httpfs`` wheel (its
    version folder must match the installed DuckDB's, which the wheel pins)."""
    import duckdb

    try:
        import duckdb_extension_httpfs as ext
    except ImportError:
        raise InfraError(
            "s3:// needs the duckdb-extension-httpfs package (pip install -e '.[report]')"
        ) from None
    path = Path(ext.__file__).parent / "extensions" / f"v{duckdb.__version__}"
    path = path / "httpfs.duckdb_extension"
    if not path.is_file():
        raise InfraError(f"{path}: no httpfs extension for DuckDB {duckdb.__version__}")
    return path


def connect(s3: bool = False, endpoint_url: str | None = None) -> Any:
    """A fresh in-memory DuckDB connection; with ``s3``, httpfs loaded and credentials set."""
    try:
        import duckdb
    except ImportError:
        raise InfraError("the log queries need duckdb (pip install -e '.[report]')") from None
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")  # a report prints its own lines, not bars
    if s3:
        con.execute(f"LOAD '{_quote(str(httpfs_path()))}'")
        try:
            con.execute(_s3_secret(endpoint_url or os.environ.get("AWS_ENDPOINT_URL")))
        except duckdb.Error as e:  # its message may quote the statement: keys stay out of it
            con.close()
            raise InfraError(f"DuckDB refused the S3 settings ({type(e).__name__})") from None
    return con


def _quote(s: str) -> str:
    return s.replace("'", "''")


def _s3_secret(endpoint_url: str | None) -> str:
    """``CREATE SECRET`` for S3 from boto3's credential chain. pyarrow and DuckDB both ignore
    ``AWS_ENDPOINT_URL`` and ``~/.aws`` on their own; boto3 is the one reader of both here."""
    import boto3

    session = boto3.Session()
    opts = {"TYPE": "s3", "REGION": session.region_name or "us-east-1"}
    creds = session.get_credentials()
    if creds is not None:
        c = creds.get_frozen_credentials()
        opts.update(KEY_ID=c.access_key, SECRET=c.secret_key)
        if c.token:
            opts["SESSION_TOKEN"] = c.token
    if endpoint_url:  # S3-compatible (moto, MinIO): path-style URLs at host:port
        u = urlparse(endpoint_url)
        opts.update(ENDPOINT=u.netloc or u.path, URL_STYLE="path")
        opts["USE_SSL"] = "true" if u.scheme == "https" else "false"
    body = ", ".join(
        f"{k} {v}" if k in ("TYPE", "USE_SSL") else f"{k} '{_quote(v)}'" for k, v in opts.items()
    )
    return f"CREATE OR REPLACE SECRET sale_ray_s3 ({body})"


def _listing(con: Any, folder: str) -> set[str]:
    """The files directly under ``folder``. (On S3, DuckDB's glob of a name without wildcards
    returns it unchecked: existence must come from a listing.)"""
    return set(_files(con, f"{folder}/*"))


def _files(con: Any, pattern: str) -> list[str]:
    rows = con.execute("SELECT file FROM glob($p) ORDER BY file", {"p": pattern}).fetchall()
    return [r[0] for r in rows]


def _list(files: list[str]) -> str:
    return "[" + ", ".join(f"'{_quote(f)}'" for f in files) + "]"


def _auctions_view(con: Any, files: list[str], final: str | None) -> None:
    """``auctions``: every results file, one row per task id, as the sink's merge picks it.

    A row is *retried* (a later row replaces it) when its ``failure`` is ``retriable``; rows
    written before that column existed, when their error is a budget refusal
    (``sale_ray.sink._is_done``). The column is named only if some file has it."""
    fin = f"'{_quote(final)}'" if final else "NULL"
    cols = con.execute(
        f"DESCRIBE SELECT * FROM read_parquet({_list(files)}, union_by_name = true)"
    ).fetchall()
    old_style = f"coalesce(error, '') LIKE '{_REFUSED}%'"
    retried = (
        f"CASE WHEN failure IS NULL THEN {old_style} ELSE failure = 'retriable' END"
        if "failure" in {c[0] for c in cols}
        else old_style
    )
    con.execute(
        f"""
        CREATE VIEW auctions AS
        WITH f AS (
            SELECT *,
                   -- final file first, then the parts in name (= write) order
                   dense_rank() OVER (ORDER BY filename IS DISTINCT FROM {fin}, filename)
                       * 1e12 + file_row_number AS _rank,
                   {retried} AS _refused
            FROM read_parquet({_list(files)}, union_by_name = true,
                              filename = true, file_row_number = true)
            WHERE task_id IS NOT NULL
        )
        SELECT * EXCLUDE (filename, file_row_number, _rank, _refused) FROM f
        QUALIFY row_number() OVER (
            PARTITION BY task_id
            ORDER BY _refused, CASE WHEN _refused THEN -_rank ELSE _rank END) = 1
        """
    )


# A plain run log's decisions (method "run"), as analytics.decisions_from_auctions builds them:
# the largest agent is the one with the highest bid price ($ per token), since the log does not
# carry the pool.
_RUN_DECISIONS = f"""
CREATE VIEW run_decisions AS
WITH b AS (SELECT unnest(bids) AS b FROM auctions),
largest AS (
    SELECT b.agent AS agent FROM b
    WHERE coalesce(b.prompt_tokens, 0) + coalesce(b.plan_tokens, 0) > 0 AND b.cost_usd > 0
    GROUP BY b.agent
    ORDER BY max(b.cost_usd / (coalesce(b.prompt_tokens, 0) + coalesce(b.plan_tokens, 0))) DESC,
             b.agent
    LIMIT 1
)
SELECT 'run' AS method, task_id, bin,
       row_number() OVER (ORDER BY coalesce(started_at, 0.0), auction_id) - 1 AS "order",
       winner AS agent,
       CASE WHEN winner IS NULL THEN []::VARCHAR[] ELSE [winner] END AS executed,
       provisional_winner AS provisional,
       coalesce(passed, false) AS passed,
       coalesce(winner = (SELECT agent FROM largest), false) AS largest,
       {" + ".join(f"coalesce({p}_cost_usd, 0.0)" for p in COST_PHASES)} AS cost_usd,
       coalesce(error, '') AS note,
       {", ".join(f"coalesce({p}_tokens, 0) AS {p}_tokens" for p in COST_PHASES)},
       {", ".join(f"coalesce({p}_cost_usd, 0.0) AS {p}_cost_usd" for p in COST_PHASES)},
       started_at
FROM auctions
"""


def open_logs(src: str, endpoint_url: str | None = None) -> LogDB:
    """A :class:`LogDB` with views over whatever logs ``src`` holds (see the module docstring);
    UserError when it holds none. ``src``: a folder, ``s3://bucket/prefix``, or one ``.parquet``
    file (an auction log, a decisions file or a memory export, told apart by its columns)."""
    is_s3 = src.startswith("s3://")
    if not is_s3:
        src = str(Path(src).expanduser().resolve())
    src = src.rstrip("/")
    con = connect(is_s3, endpoint_url)
    db = LogDB(con, src)
    import duckdb

    try:
        if src.endswith(".parquet"):
            _one_file(db)
        else:
            _folder(db)
    except (duckdb.IOException, duckdb.HTTPException) as e:  # storage, not our input
        con.close()
        first = (str(e).strip().splitlines() or [""])[0]  # not DuckDB's echo of the SQL
        raise InfraError(f"{src}: cannot read the logs ({first[:300]})") from None
    except BaseException:
        con.close()
        raise
    if not db.views:
        con.close()
        raise UserError(f"{src}: no decisions.parquet, matrix.parquet or auctions.parquet there")
    return db


def _folder(db: LogDB) -> None:
    con, src = db.con, db.src
    db.listing = _listing(con, src)
    final = f"{src}/{FINAL}"
    final = final if final in db.listing else None
    results = ([final] if final else []) + _files(con, f"{src}/{PARTS}/part-*.parquet")
    if results:
        _auctions_view(con, results, final)
        db.views.add("auctions")
    for name in ("decisions", "matrix"):
        path = f"{src}/{name}.parquet"
        if path in db.listing:
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{_quote(path)}')")
            db.views.add(name)
    if "auctions" in db.views:
        _run_decisions(db)


def _run_decisions(db: LogDB) -> None:
    """``run_decisions`` from ``auctions``; it is also ``decisions`` when no eval wrote one."""
    db.con.execute(_RUN_DECISIONS)
    db.views.add("run_decisions")
    if "decisions" not in db.views:
        db.con.execute("CREATE VIEW decisions AS SELECT * EXCLUDE (started_at) FROM run_decisions")
        db.views.add("decisions")


def _one_file(db: LogDB) -> None:
    con, src = db.con, db.src
    if src not in _listing(con, src.rsplit("/", 1)[0]):
        raise UserError(f"{src}: no such file")
    cols = {
        r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet($p)", {"p": src}).fetchall()
    }
    q = f"'{_quote(src)}'"
    if {"task_text", "created_at"} <= cols:
        con.execute(f"CREATE VIEW memory AS SELECT * FROM read_parquet({q})")
        db.views.add("memory")
    elif "method" in cols:
        con.execute(f"CREATE VIEW decisions AS SELECT * FROM read_parquet({q})")
        db.views.add("decisions")
    elif "winner" in cols:
        _auctions_view(con, [src], src)
        db.views.add("auctions")
        _run_decisions(db)
    elif "agent" in cols and "split" in cols:
        con.execute(f"CREATE VIEW matrix AS SELECT * FROM read_parquet({q})")
        db.views.add("matrix")
