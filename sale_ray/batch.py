"""Batch runs: tasks streamed from a file (or a list) through the auctioneer actor into Parquet.

Used by ``sale-ray run`` and ``jobs/run_auctions.py`` alike (and so by ``ray job submit``)::

    task file (JSONL / Parquet, local or s3://) --chunks--> Auctioneer actor --groups--> ResultSink

The driver keeps a few chunks in flight (one streaming Ray call each), so it never holds the
whole input, and the auctioneer's admission bounds the rest. Results are written as they
arrive (:mod:`sale_ray.sink`); rerunning with the same ``--out`` skips every task id already
written, so a killed job resumes where it stopped, without duplicates.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pydantic import ValidationError

from .auctioneer import budget_refused
from .config import SaleConfig, format_validation_error
from .datasets import MAX_LINE_BYTES as _DATASET_MAX_LINE
from .errors import InfraError, TaskValidationError
from .evaluators.verifier import make_evaluator  # noqa: F401  (where callers found it)
from .progress import BatchProgress, pending_total
from .sink import ResultSink, filesystem
from .summary import Summary, summarize
from .types import AuctionRecord, Task, records_table

_TASK_FIELDS = set(Task.model_fields)
MAX_LINE_BYTES = _DATASET_MAX_LINE  # one cap for every JSONL task reader


# --- reading tasks -------------------------------------------------------------------------------
def _task(row: dict, where: str) -> Task:
    try:
        return Task.model_validate({k: v for k, v in row.items() if v is not None})
    except ValidationError as e:
        raise TaskValidationError(f"{where}: {format_validation_error(e)}") from None


def jsonl_tasks(stream: Any, where: str) -> Iterator[Task]:
    """The tasks of a JSONL byte stream, each validated; errors name ``where`` and the line."""
    for n, raw in _lines(stream, where):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as e:
            raise TaskValidationError(f"{where}: line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise TaskValidationError(f"{where}: line {n}: not a JSON object")
        yield _task(row, f"{where}: line {n}")


def _lines(
    stream: Any, where: str, max_line: int | None = None, block: int = 1 << 20
) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a byte stream, read ``block`` bytes at a time.

    The cap is enforced while reading: as soon as a line has grown past ``max_line`` bytes
    (default :data:`MAX_LINE_BYTES`) without a newline, it is an error naming ``where`` and the
    line, so no more than ``max_line + block`` bytes are ever held, however long the line."""
    cap = MAX_LINE_BYTES if max_line is None else max_line
    n, rest = 0, b""
    while chunk := stream.read(block):
        rest += chunk
        *lines, rest = rest.split(b"\n")
        for line in lines:
            n += 1
            if len(line) > cap:
                raise TaskValidationError(f"{where}: line {n}: longer than {cap} bytes")
            yield n, line
        if len(rest) > cap:  # the line is not finished and already too long: stop reading it
            raise TaskValidationError(f"{where}: line {n + 1}: longer than {cap} bytes")
    if rest:
        yield n + 1, rest


def iter_tasks(
    uri: str, *, batch_size: int = 256, endpoint_url: str | None = None, region: str = "us-east-1"
) -> Iterator[list[Task]]:
    """Stream a task file (``.jsonl`` / ``.parquet``, local or ``s3://``) in chunks.

    JSONL rows are strict (an unknown key is an error naming the line); Parquet files may carry
    extra columns (a dataset's solutions, say): only the :class:`Task` fields are read."""
    fs, path = filesystem(uri, endpoint_url=endpoint_url, region=region)
    try:
        if path.endswith(".parquet"):
            pf = pq.ParquetFile(fs.open_input_file(path))
            cols = [c for c in pf.schema_arrow.names if c in _TASK_FIELDS]
            row_no = 0
            for rb in pf.iter_batches(batch_size=batch_size, columns=cols):
                out = []
                for row in rb.to_pylist():
                    row_no += 1
                    out.append(_task(row, f"{uri}: row {row_no}"))
                yield out
            return
        if not path.endswith((".jsonl", ".json")):
            raise TaskValidationError(f"{uri}: task files are .jsonl or .parquet")
        out = []
        with fs.open_input_stream(path) as f:
            for task in jsonl_tasks(f, uri):
                out.append(task)
                if len(out) >= batch_size:
                    yield out
                    out = []
        if out:
            yield out
    except FileNotFoundError:
        raise TaskValidationError(f"{uri}: task file not found") from None


def task_ids(
    uri: str, *, endpoint_url: str | None = None, region: str = "us-east-1"
) -> Iterator[Any] | None:
    """The ``id`` of every row of a task file, in order, unvalidated and read lazily (for
    counting: the real read reports bad rows and missing files). None where counting costs a
    second download: JSONL on S3 (a Parquet file's id column is read alone, wherever it is)."""
    if uri.startswith("s3://") and not uri.endswith(".parquet"):
        return None

    def ids() -> Iterator[Any]:
        fs, path = filesystem(uri, endpoint_url=endpoint_url, region=region)
        if path.endswith(".parquet"):
            pf = pq.ParquetFile(fs.open_input_file(path))
            for rb in pf.iter_batches(columns=["id"]):
                yield from rb.column(0).to_pylist()
            return
        with fs.open_input_stream(path) as f:
            for _, raw in _lines(f, uri):
                if raw.strip():
                    yield json.loads(raw).get("id")

    return ids()


def _chunks(tasks: Iterable[Task], size: int) -> Iterator[list[Task]]:
    out: list[Task] = []
    for t in tasks:
        out.append(t)
        if len(out) >= size:
            yield out
            out = []
    if out:
        yield out


# --- driving the auctioneer ----------------------------------------------------------------------
@dataclass
class BatchResult:
    """What a batch run did: where the results are and how every input task was accounted for."""

    path: str = ""
    summary: Summary | None = None
    written: int = 0  # results written by this run
    skipped_done: int = 0  # already in the output (resume)
    duplicate_input: int = 0  # the same id twice in the input: run once
    refused: dict[str, str] = field(default_factory=dict)  # id -> why it was not run
    duplicates_dropped: int = 0  # rows the final merge removed (crash between merge and cleanup)
    quarantined: list[str] = field(default_factory=list)  # unreadable result files moved aside
    service: str | None = None  # the running service it attached to (None: a private one)

    def describe(self) -> str:
        parts = [f"written {self.written}", f"skipped (already done) {self.skipped_done}"]
        if self.service:
            parts.append(f"through service {self.service!r}")
        if self.duplicate_input:
            parts.append(f"duplicate ids in input {self.duplicate_input}")
        if self.refused:
            why = next(iter(self.refused.values()))
            parts.append(f"not run {len(self.refused)} ({why}; rerun to continue)")
        if self.quarantined:
            parts.append(
                f"unreadable result files moved aside {len(self.quarantined)} "
                f"(their tasks ran again; first: {self.quarantined[0]})"
            )
        return "run: " + ", ".join(parts)


async def drive(
    auctioneer: Any,
    chunks: Iterable[list[Task]],
    on_group: Callable[[dict[str, Any]], bool],
    *,
    streams_in_flight: int = 4,
) -> None:
    """Send chunks to the auctioneer actor, ``streams_in_flight`` at a time, and hand every
    group it streams back to ``on_group``; stop sending when ``on_group`` returns False."""
    slots = asyncio.Semaphore(streams_in_flight)
    stop = False
    running: set[asyncio.Task] = set()

    async def consume(chunk: list[Task]) -> None:
        nonlocal stop
        try:
            async for ref in auctioneer.stream.remote(chunk):
                if not on_group(await ref):
                    stop = True
        except BaseException:
            stop = True  # the auctioneer is gone or broken: send nothing more
            raise
        finally:
            slots.release()

    for chunk in chunks:
        await slots.acquire()
        if stop:
            slots.release()
            break
        running.add(asyncio.ensure_future(consume(chunk)))
    results = await asyncio.gather(*running, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


async def run_batch(
    source: str | Iterable[Task],
    out: str,
    config: SaleConfig,
    *,
    limit: int | None = None,
    resume: bool = True,
    progress: bool = True,
    chunk: int = 256,
    streams_in_flight: int = 4,
    endpoint_url: str | None = None,
    region: str = "us-east-1",
    flush_rows: int = 1000,
    flush_s: float = 5.0,
) -> BatchResult:
    """Auction every task of ``source`` (its first ``limit`` rows) not yet in ``out`` and write
    the results (Ray must be connected). Agents and the auctioneer live for this call only. A
    part file is written every ``flush_rows`` results or ``flush_s`` seconds: what a crash can
    lose (a rerun redoes). The progress bar has a total when the source can be counted."""
    from .service.handle import open_service

    sink = ResultSink(
        out, endpoint_url=endpoint_url, region=region, flush_rows=flush_rows, flush_s=flush_s
    )
    if not resume:
        sink.reset()
    done = sink.done_ids()
    res = BatchResult()
    seen: set[str] = set()
    s3 = dict(endpoint_url=endpoint_url, region=region)
    if isinstance(source, str):
        tasks = iter_tasks(source, batch_size=chunk, **s3)
        if limit is not None:
            tasks = _chunks(itertools.islice(itertools.chain.from_iterable(tasks), limit), chunk)
        ids = task_ids(source, **s3) if progress else None
    else:
        tasks = _chunks(itertools.islice(source, limit), chunk)
        ids = (t.id for t in source) if progress and isinstance(source, Sequence) else None

    def fresh() -> Iterator[list[Task]]:
        for c in tasks:
            keep = []
            for t in c:
                if t.id in done:
                    res.skipped_done += 1
                elif t.id in seen:
                    res.duplicate_input += 1
                else:
                    seen.add(t.id)
                    keep.append(t)
            if keep:
                yield keep

    bar = BatchProgress(pending_total(ids, done, limit=limit), enabled=progress)

    def on_group(g: dict[str, Any]) -> bool:
        recs: list[AuctionRecord] = []
        for r in g["records"]:
            if budget_refused(r) and not r.cost_usd:
                res.refused[r.task_id] = r.error or ""  # nothing spent, nothing to keep: not run
            else:
                recs.append(r)  # (a refusal that spent money is kept; a rerun retries it)
        sink.add(recs)
        res.written += len(recs)
        res.refused.update(g["refused"])
        bar.add(recs, not_run=len(res.refused))
        # money is gone: stop feeding (what is in flight finishes; a rerun continues)
        return not any(w.startswith("budget exhausted") for w in g["refused"].values())

    try:
        # a running service (`sale-ray up`) if there is one, else a private one for this run
        # whose budget ledger sits beside the results, so a resumed run continues its budget
        async with open_service(config, ledger_uri=sink.ledger_uri, **s3) as svc:
            res.service = svc.name
            try:
                await drive(svc.actor, fresh(), on_group, streams_in_flight=streams_in_flight)
                # a shared service: its ledger and log written now; a private one does that,
                # and snapshots its memory (which dies with it), when it stops below
                await svc.flush()
            except Exception as e:
                sink.flush()  # keep what finished: a rerun resumes from it
                raise InfraError(
                    f"batch run failed ({type(e).__name__}: {str(e)[:200]}); "
                    f"{res.written} results kept in {out}, rerun to resume"
                ) from e
    finally:
        bar.close()
    res.path, table, res.duplicates_dropped = sink.finalize()
    res.quarantined = list(sink.quarantined)
    res.summary = summarize(table)
    _write_summary(sink, res.summary)
    return res


def _write_summary(sink: ResultSink, summary: Summary) -> None:
    with sink.fs.open_output_stream(f"{sink.root}/summary.json") as f:
        f.write(json.dumps(summary.model_dump(), indent=2).encode())


# --- in-memory API (tests, notebooks) ------------------------------------------------------------
async def run_tasks(
    tasks: list[Task],
    config: SaleConfig,
    *,
    concurrency: int = 2,
    progress: bool = True,
) -> list[AuctionRecord]:
    """Auction ``tasks`` through the auctioneer actor and return their records in task order
    (Ray must be connected). ``concurrency``: auctions in flight."""
    from .service.handle import open_service

    cfg = config.model_copy(
        update={"auctioneer": config.auctioneer.model_copy(update={"max_in_flight": concurrency})}
    )
    got: dict[str, AuctionRecord] = {}

    def on_group(g: dict[str, Any]) -> bool:
        got.update((r.task_id, r) for r in g["records"])
        return True

    async with open_service(cfg) as svc:
        await drive(svc.actor, _chunks(tasks, 256), on_group)
    return [got[t.id] for t in tasks if t.id in got]


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
