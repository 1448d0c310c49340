"""Ray Data as the batch door: tasks read, auctioned and logged as Ray Datasets.

::

    from sale_ray.data import AuctionSession, auction, read_tasks, write_auctions

    tasks = read_tasks("s3://bucket/tasks.jsonl")            # rows validated into Task
    with AuctionSession(config) as session:                   # agents + auctioneer actor
        records = auction(tasks, session, concurrency=4)      # lazy: one row per task
        result = write_auctions(records, "s3://bucket/run1")  # streams, then merges

The auctions go through the same auctioneer actor as ``sale-ray run``
(:func:`sale_ray.batch.run_batch`); only the driver's loop is replaced by Ray Data.

**Backpressure.** :func:`auction` is a ``map_batches`` over a callable class
(:class:`_AuctionCaller`) that holds the auctioneer's handle, run by a fixed pool of
``concurrency`` Ray Data actors. Each actor takes one batch of ``batch_size`` tasks at a time
and returns its records, so at most ``concurrency x batch_size`` auctions are ever submitted;
Ray Data's streaming executor stops reading when those actors' queues and the object store
budget are full, and slows the map when the writer lags. It was chosen over ``iter_batches``
feeding :func:`~sale_ray.batch.drive` because the records stay a Dataset: they stream
straight into ``write_parquet`` (or any further transform) on the workers, never through the
driver. The auctioneer's own ``max_in_flight`` still bounds what runs at once.

**The log** is the batch path's: rows in :data:`~sale_ray.types.AUCTION_SCHEMA`, written by
Ray Data as ``OUT/parts/part-*.parquet`` (the :mod:`sale_ray.sink` layout), then merged by
:meth:`~sale_ray.sink.ResultSink.finalize` into ``OUT/auctions.parquet`` plus
``summary.json``, so ``sale-ray report``, :mod:`sale_ray.queries` and a resumed run read it
unchanged. A task refused for lack of money is a row whose ``error`` starts with
``budget exhausted`` and whose ``failure`` is ``retriable`` (nothing spent; a rerun runs it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .admission import BUDGET_REFUSED
from .batch import _task, jsonl_tasks
from .config import SaleConfig
from .datasets import TASK_SCHEMA
from .errors import UserError
from .sink import ResultSink, filesystem
from .summary import Summary, summarize
from .types import AUCTION_SCHEMA, AuctionRecord, Task, records_table

TASK_FIELDS = tuple(Task.model_fields)
assert set(TASK_SCHEMA.names) == set(TASK_FIELDS), "TASK_SCHEMA must follow Task"
_RETRY_S = 0.2  # a batch the auctioneer's queue turned away is resubmitted after this


# --- tasks as a Dataset ------------------------------------------------------------------------
def tasks_table(tasks: Iterable[Task]) -> pa.Table:
    """Arrow table of tasks in :data:`TASK_SCHEMA` (what :func:`read_tasks` yields)."""
    return pa.Table.from_pylist([t.model_dump() for t in tasks], schema=TASK_SCHEMA)


def _task_files_datasource() -> type:
    """The datasource class (built lazily: importing Ray Data costs seconds)."""
    from ray.data.datasource import FileBasedDatasource

    class TaskFiles(FileBasedDatasource):
        """JSONL / Parquet task files, read and validated exactly as the batch path does
        (:func:`sale_ray.batch.iter_tasks`: strict JSONL, Parquet's extra columns ignored), so
        a bad row fails the read with the same message, naming the file and its line or row."""

        _FILE_EXTENSIONS = ["jsonl", "json", "parquet"]

        def __init__(self, paths: Any, *, rows: int = 256, **kw: Any) -> None:
            super().__init__(paths, file_extensions=self._FILE_EXTENSIONS, **kw)
            self.rows = rows

        def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> Any:
            if path.endswith(".parquet"):  # Parquet needs random access, not a stream
                return filesystem.open_input_file(path)
            return super()._open_input_source(filesystem, path, **open_args)

        def _read_stream(self, f: Any, path: str) -> Iterator[pa.Table]:
            where = path if "://" in path or path.startswith("/") else f"s3://{path}"
            out: list[Task] = []
            for t in _validated(f, path, where):
                out.append(t)
                if len(out) >= self.rows:
                    yield tasks_table(out)
                    out = []
            if out:
                yield tasks_table(out)

    return TaskFiles


def _validated(f: Any, path: str, where: str) -> Iterator[Task]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        cols = [c for c in pf.schema_arrow.names if c in TASK_FIELDS]
        n = 0
        for rb in pf.iter_batches(columns=cols):
            for row in rb.to_pylist():
                n += 1
                yield _task(_plain(row), f"{where}: row {n}")
        return
    yield from jsonl_tasks(f, where)


def read_tasks(
    uri: str | list[str],
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    rows_per_block: int = 256,
) -> Any:
    """A Ray Dataset of the tasks in ``uri``: ``.jsonl`` / ``.parquet`` files or a folder of
    them, local or ``s3://`` (``endpoint_url``: an S3-compatible server such as MinIO or moto).

    Rows are validated into :class:`~sale_ray.types.Task` while they are read, with the batch
    path's rules; a bad row fails the Dataset with a :class:`TaskValidationError` naming the
    file and the line (JSONL) or row (Parquet). Nothing is read until the Dataset is consumed.
    """
    import ray.data

    uris = [uri] if isinstance(uri, str) else list(uri)
    if not uris:
        raise UserError("read_tasks: no task files given")
    fs, _ = filesystem(uris[0], endpoint_url=endpoint_url, region=region)
    paths = [filesystem(u, endpoint_url=endpoint_url, region=region)[1] for u in uris]
    source = _task_files_datasource()(paths, filesystem=fs, rows=rows_per_block)
    return ray.data.read_datasource(source)


def _plain(row: dict) -> dict:
    """An Arrow row as :class:`Task` input: nulls dropped, a map column back to a dict."""
    out = {k: v for k, v in row.items() if v is not None}
    meta = out.get("metadata")
    if isinstance(meta, list):  # Arrow map -> [(k, v), ...]
        out["metadata"] = dict(meta)
    return out


def batch_tasks(batch: pa.Table) -> list[Task]:
    """The tasks of one Arrow batch of any Dataset: the :class:`Task` columns are read,
    others (a dataset's solutions, Ray Data's ``path``) ignored; a bad row is a
    :class:`TaskValidationError` naming its id (or its place in the batch when it has none)."""
    cols = [c for c in batch.column_names if c in TASK_FIELDS]
    out = []
    for i, row in enumerate(batch.select(cols).to_pylist()):
        name = f"task id {row['id']!r}" if isinstance(row.get("id"), str) else f"batch row {i}"
        out.append(_task(_plain(row), f"row with {name}"))
    return out


def without_ids(ds: Any, ids: Iterable[str]) -> Any:
    """``ds`` without the rows whose ``id`` is in ``ids`` (a resumed run skips what is done)."""
    done = pa.array(sorted(set(ids)), pa.string())
    if not len(done):
        return ds

    def keep(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=done)))

    return ds.map_batches(keep, batch_format="pyarrow", zero_copy_batch=True)


def user_error(e: BaseException) -> UserError | None:
    """The :class:`UserError` (a bad task row) behind a Ray Data failure, as it was raised:
    Ray wraps what a worker raised (``RayTaskError(TaskValidationError)``, its traceback in
    the message) and keeps the original as ``cause``."""
    from ray.exceptions import RayTaskError

    x: BaseException | None = e
    for _ in range(10):  # a chain of wrappers, never a cycle
        if x is None:
            return None
        if isinstance(x, UserError) and not isinstance(x, RayTaskError):
            return x
        x = getattr(x, "cause", None) or x.__cause__
    return None


def _consume(run: Any) -> Any:
    """``run()``, a bad row's error re-raised as itself rather than inside Ray's wrappers."""
    try:
        return run()
    except Exception as e:
        bad = user_error(e)
        if bad is None or bad is e:
            raise
        raise bad from None  # the worker's own exception: its message, not Ray's traceback


# --- the agents and the auctioneer for a Dataset ------------------------------------------------
def _sync(coro: Any) -> Any:
    """Run a coroutine to its end from sync code, even where an event loop already runs
    (a notebook): there, in a helper thread with its own loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


class AuctionSession:
    """The service a Dataset is auctioned through, for the length of a ``with`` block (Ray
    must be connected): the running service ``config.service.name`` when one is up (then its
    limits, memory and log are shared with every other door), else private agent actors and
    an auctioneer for this block. Every Dataset auctioned in the block shares them: one
    budget, one memory, one pool. On exit a private memory is snapshotted and its agents
    stopped; an attached service is only flushed."""

    def __init__(self, config: SaleConfig) -> None:
        self.config = config
        self.pool: Any = None
        self.auctioneer: Any = None
        self.attached: str | None = None  # the running service's name, when attached

    def start(self) -> AuctionSession:
        from .runtime import start_agents, start_auctioneer
        from .service.handle import ServiceNotFound, attach_for

        mode = self.config.service.attach
        if mode != "never":
            try:
                self.auctioneer = _sync(attach_for(self.config)).actor
                self.attached = self.config.service.name
                return self
            except ServiceNotFound:
                if mode == "always":
                    raise

        pool = _sync(start_agents(self.config))
        try:
            self.auctioneer = start_auctioneer(self.config, pool)
        except BaseException:
            _sync(pool.stop())
            raise
        self.pool = pool
        return self

    def stats(self) -> dict[str, Any]:
        """The auctioneer's counters (admitted, finished, refused, spent_usd, ...)."""
        import ray

        return ray.get(self.auctioneer.stats.remote())

    def close(self) -> None:
        import ray

        if self.attached is not None:
            ray.get(self.auctioneer.flush.remote())
            self.auctioneer = self.attached = None
            return
        if self.pool is None:
            return
        try:
            ray.get(self.auctioneer.snapshot.remote())  # the memory dies with these actors
        finally:
            ray.kill(self.auctioneer)
            _sync(self.pool.stop())
            self.pool = self.auctioneer = None

    def __enter__(self) -> AuctionSession:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AuctionCaller:
    """The ``map_batches`` callable: one batch of tasks in, their records out, in task order.
    A task the auctioneer's queue turned away is resubmitted (backpressure, not an error);
    one refused for lack of money becomes a ``budget exhausted`` row."""

    def __init__(self, auctioneer: Any) -> None:
        self.auctioneer = auctioneer

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        tasks = batch_tasks(batch)
        got: dict[str, AuctionRecord] = {}
        pending = tasks
        while pending:
            refused: dict[str, str] = {}
            for ref in self.auctioneer.stream.remote(pending):
                group = ray.get(ref)
                got.update((r.task_id, r) for r in group["records"])
                refused.update(group["refused"])
            for t in pending:
                if refused.get(t.id, "").startswith(BUDGET_REFUSED):
                    got[t.id] = _refusal(t, refused[t.id])
            pending = [t for t in pending if t.id not in got]
            if pending:
                time.sleep(_RETRY_S)
        return records_table([got[t.id] for t in tasks])


def _refusal(task: Task, why: str) -> AuctionRecord:
    return AuctionRecord(
        auction_id=f"{task.id}#refused",
        task_id=task.id,
        kind=task.kind,
        bin=task.bin,
        error=why,
        failure="retriable",  # nothing ran: a rerun (resume) tries again
        started_at=time.time(),
    )


def auction(
    ds: Any,
    session: AuctionSession | SaleConfig,
    *,
    concurrency: int = 4,
    batch_size: int = 64,
) -> Any:
    """Auction every task row of ``ds``; a Dataset of their records, one row per task, in
    :data:`~sale_ray.types.AUCTION_SCHEMA` (the ``auctions.parquet`` row).

    With an :class:`AuctionSession` the result is lazy: it runs as it is consumed, which must
    happen inside the session's block. With a :class:`~sale_ray.config.SaleConfig` a session
    is started for this call and the records are materialized before it stops (they are then
    held in the object store: for large runs use a session and stream them to
    :func:`write_auctions`).

    ``concurrency`` Ray Data actors each auction one batch of ``batch_size`` tasks at a time,
    so ``concurrency * batch_size`` bounds the auctions submitted at once (keep it at or above
    ``auctioneer.max_in_flight`` to use the pool fully)."""
    import ray.data

    if concurrency < 1 or batch_size < 1:
        raise UserError("auction: concurrency and batch_size must be at least 1")
    if isinstance(session, SaleConfig):
        with AuctionSession(session) as s:
            lazy = auction(ds, s, concurrency=concurrency, batch_size=batch_size)
            return _consume(lazy.materialize)
    if session.auctioneer is None:
        raise UserError("auction: the AuctionSession is not started (use it in a with block)")
    out = ds.map_batches(
        _AuctionCaller,
        fn_constructor_kwargs={"auctioneer": session.auctioneer},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=0,  # the callers only wait on the auctioneer: they must not take agents' CPUs
    )
    # a bad row raises its TaskValidationError, not an opaque UserCodeException (this
    # context is shared with ``ds``'s plan: it changes how errors are wrapped, nothing else)
    out.context.raise_original_map_exception = True
    return out


# --- the log -----------------------------------------------------------------------------------
@dataclass
class DataResult:
    """What :func:`write_auctions` wrote: the merged log, its summary, and the tasks not run."""

    path: str
    summary: Summary
    rows: int
    retriable: int  # rows a rerun runs again (refused for lack of money, crashed)
    duplicates_dropped: int


def _part_names() -> Any:
    from ray.data.datasource import FilenameProvider

    run = f"{int(time.time())}-data"

    class PartNames(FilenameProvider):
        """``part-<run>-<write>-<task>-<block>.parquet``: the sink's names, in write order."""

        def get_filename_for_block(
            self, block: Any, write_uuid: str, task_index: int, block_index: int
        ) -> str:
            return f"part-{run}-{write_uuid[:8]}-{task_index:06d}-{block_index:06d}.parquet"

    return PartNames()


def write_auctions(
    records: Any,
    out: str,
    *,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
) -> DataResult:
    """Write a records Dataset (from :func:`auction`) to ``out`` (a folder or
    ``s3://bucket/prefix``) the way ``sale-ray run`` does: Ray Data writes the parts as the
    auctions finish, then they are merged into ``OUT/auctions.parquet`` (one row per task id)
    and ``OUT/summary.json``. Parts already there (an earlier, interrupted run) are merged too.
    """
    fs, root = filesystem(out, endpoint_url=endpoint_url, region=region)
    sink = ResultSink(out, endpoint_url=endpoint_url, region=region)  # creates OUT/parts
    _consume(
        lambda: records.write_parquet(
            f"{root}/parts",
            filesystem=fs,
            filename_provider=_part_names(),
            schema=AUCTION_SCHEMA,  # every part in the canonical schema, all-null columns too
        )
    )
    path, table, dropped = sink.finalize()
    summary = summarize(table)
    with fs.open_output_stream(f"{root}/summary.json") as f:
        f.write(json.dumps(summary.model_dump(), indent=2).encode())
    retriable = table.column("failure").to_pylist().count("retriable")
    return DataResult(path, summary, table.num_rows, retriable, dropped)
