"""Incremental, resumable Parquet results: local folder or ``s3://bucket/prefix``.

Layout under the output ``OUT``::

    OUT/parts/part-<run>-<seq>.parquet   written while the run goes (each one complete)
    OUT/parts/_quarantine/<ns>-<name>    files found unreadable, moved aside (never deleted)
    OUT/auctions.parquet                 the final file: every part merged, one row per task id

Every file appears under its final name only when complete. It is serialised in memory first
(so an exception mid-write never reaches storage), uploaded under a dot-name, its stored size
checked, and only then renamed (locally: ``rename(2)``; on S3: a server-side copy, then the
dot-name is deleted). This matters on S3: closing a pyarrow S3 stream after an exception
*completes* the upload, so writing under the final name could publish a truncated file.
Readers ignore dot- and underscore-names, so a crash at any point leaves only whole files
(and perhaps a dot-named temp, which nothing reads).

Resuming reads every file whole; those ids are done (except rows refused for lack of budget,
which a rerun retries). A file that cannot be decoded is **quarantined**: moved to
``parts/_quarantine/``, logged as a warning and counted in :attr:`ResultSink.quarantined`, and its
tasks run again: one bad file never blocks a resume. An I/O error (storage unreachable) is
not corruption: it raises, and nothing is moved.

:meth:`ResultSink.finalize` merges final + parts (first good row per task id wins), writes the
final file, and only then deletes the parts it merged: a crash in between leaves duplicates
that the next merge removes, never a gap.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterable
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import InfraError
from .types import AUCTION_SCHEMA, AuctionRecord, records_table

log = logging.getLogger(__name__)

FINAL = "auctions.parquet"
PARTS = "parts"
QUARANTINE = "_quarantine"  # under PARTS: the leading "_" keeps readers out
LEDGER = "ledger.json"  # the budget ledger of a run's private service (service/ledger.py)
_BUDGET_REFUSED = "budget exhausted"  # same prefix as sale_ray.auctioneer.BUDGET_REFUSED


def filesystem(
    uri: str, *, endpoint_url: str | None = None, region: str = "us-east-1"
) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or ``s3://bucket/prefix``.

    pyarrow ignores ``AWS_ENDPOINT_URL``, so an S3-compatible endpoint (moto, MinIO) must be
    passed here explicitly; credentials come from the standard AWS chain, never from us."""
    if uri.startswith("s3://"):
        kw: dict = {"region": region}
        if endpoint_url:
            u = urlparse(endpoint_url)
            kw.update(endpoint_override=u.netloc or u.path, scheme=u.scheme or "https")
        return pafs.S3FileSystem(**kw), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _conform(t: pa.Table) -> pa.Table:
    """``t`` in :data:`AUCTION_SCHEMA` order and types, or ValueError saying why not. A
    nullable column the file predates is added as nulls (a schema that grew must not make old
    results unreadable)."""
    cols = []
    for f in AUCTION_SCHEMA:
        if f.name in t.column_names:
            cols.append(t.column(f.name))
        elif f.nullable:
            cols.append(pa.nulls(t.num_rows, f.type))
        else:
            raise ValueError(f"lacks the required column {f.name!r}")
    try:
        return pa.Table.from_arrays(cols, names=AUCTION_SCHEMA.names).cast(AUCTION_SCHEMA)
    except (pa.ArrowException, ValueError) as e:
        raise ValueError(f"does not match the results schema ({str(e)[:200]})") from None


def _is_done(t: pa.Table) -> list[bool]:
    """Per row: has the task a result a rerun must keep? Not when its ``failure`` is
    ``retriable``; rows written before that column existed are judged by their error text
    (only a budget refusal was retried then)."""
    errors = t.column("error").to_pylist()
    failures = t.column("failure").to_pylist()
    return [
        f != "retriable" if f is not None else not (e or "").startswith(_BUDGET_REFUSED)
        for e, f in zip(errors, failures, strict=True)
    ]


class ResultSink:
    """Buffers auction records and writes them as Parquet part files; merges at the end.

    ``flush_rows`` / ``flush_s``: a part is written when this many rows are buffered or this
    long has passed since the last part, whichever first (so a killed job loses at most that)."""

    def __init__(
        self,
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        flush_rows: int = 1000,
        flush_s: float = 5.0,
    ) -> None:
        self.uri = uri
        self.fs, self.root = filesystem(uri, endpoint_url=endpoint_url, region=region)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self._run = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self._buf: list[AuctionRecord] = []
        self._last = time.monotonic()
        self.rows_written = 0
        self.quarantined: list[str] = []  # files moved aside as unreadable (warned, counted)
        self.fs.create_dir(f"{self.root}/{PARTS}", recursive=True)

    # -- reading -----------------------------------------------------------------------------
    def _files(self) -> list[str]:
        """The final file (if any) first, then the parts in name (= write) order."""
        out = []
        final = f"{self.root}/{FINAL}"
        if self.fs.get_file_info(final).type == pafs.FileType.File:
            out.append(final)
        sel = pafs.FileSelector(f"{self.root}/{PARTS}", allow_not_found=True)
        parts = sorted(
            i.path
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith((".", "_"))
        )
        return out + parts

    def _show(self, path: str) -> str:
        return path if self.local else f"s3://{path}"

    def _load(self, path: str) -> pa.Table | None:
        """One results file, decoded whole and cast to :data:`AUCTION_SCHEMA`; None (and the
        file quarantined) if its bytes are not a results file."""
        try:
            with self.fs.open_input_file(path) as f:
                data = f.read()
        except OSError as e:  # storage, not the file: raise, move nothing
            raise InfraError(
                f"{self._show(path)}: cannot read results file ({type(e).__name__})"
            ) from None
        try:
            t = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError, ValueError) as e:
            self._quarantine(path, f"not readable Parquet ({type(e).__name__})")
            return None
        missing = [c for c in ("task_id", "error") if c not in t.column_names]
        if missing or t.column("task_id").null_count:
            self._quarantine(path, f"no usable task ids (missing {missing or 'values'})")
            return None
        try:
            return _conform(t)
        except ValueError as e:  # Parquet, but not (or no longer) a results file
            self._quarantine(path, str(e))
            return None

    def _quarantine(self, path: str, why: str) -> None:
        """Move an undecodable file aside (never delete: it may be inspected or repaired) so
        that it cannot block this resume or the next; its tasks are simply run again."""
        dest_dir = f"{self.root}/{PARTS}/{QUARANTINE}"
        dest = f"{dest_dir}/{time.time_ns()}-{path.rsplit('/', 1)[-1]}"
        try:
            if self.local:
                self.fs.create_dir(dest_dir, recursive=True)
            self.fs.move(path, dest)
        except OSError as e:
            raise InfraError(
                f"{self._show(path)}: {why}, and it could not be moved aside "
                f"({type(e).__name__}); move or delete it, then rerun"
            ) from None
        self.quarantined.append(self._show(dest))
        log.warning(
            "%s: %s; moved to %s, its tasks will run again", self._show(path), why, self._show(dest)
        )

    def _load_all(self) -> list[tuple[str, pa.Table]]:
        """(path, table) of every readable results file, final first; bad ones quarantined."""
        out = []
        for f in self._files():
            t = self._load(f)
            if t is not None:
                out.append((f, t))
        return out

    def done_ids(self) -> set[str]:
        """Task ids that already have a result (retriable failures excluded: those rerun).

        Files are decoded whole, not just their id column: a file whose ids read but whose
        other columns do not would count its tasks done here and lose them at the merge."""
        done: set[str] = set()
        for _, t in self._load_all():
            ids = t.column("task_id").to_pylist()
            done.update(i for i, ok in zip(ids, _is_done(t), strict=True) if ok)
        return done

    # -- writing -----------------------------------------------------------------------------
    def add(self, records: Iterable[AuctionRecord]) -> None:
        self._buf.extend(records)
        if len(self._buf) >= self.flush_rows or time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> str | None:
        """Write the buffered rows as one part file (atomically); returns its path."""
        self._last = time.monotonic()
        if not self._buf:
            return None
        table = records_table(self._buf)
        self._seq += 1
        path = f"{self.root}/{PARTS}/part-{self._run}-{self._seq:06d}.parquet"
        self._write_atomic(table, path)
        self.rows_written += len(self._buf)
        self._buf = []
        return path

    def _write_atomic(self, table: pa.Table, path: str) -> None:
        """Make ``path`` appear only complete (see the module docstring for why on S3)."""
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)  # an exception here has touched no storage at all
        data = buf.getvalue()
        d, name = path.rsplit("/", 1)
        tmp = f"{d}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            # closing may have completed a partial upload without raising: check what is stored
            size = self.fs.get_file_info(tmp).size
            if size != data.size:
                raise InfraError(f"{self._show(tmp)}: stored {size} bytes, wrote {data.size}")
            self.fs.move(tmp, path)  # local: rename(2); S3: server-side copy, then delete
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass  # a dot-name: readers never see it
            raise

    def merged(self) -> tuple[pa.Table, int]:
        """Every row so far, one per task id (first done row wins, else the last refusal), and
        the number of duplicate rows dropped."""
        table, dupes, _ = self._merge()
        return table, dupes

    def _merge(self) -> tuple[pa.Table, int, list[str]]:
        loaded = self._load_all()
        if not loaded:
            return AUCTION_SCHEMA.empty_table(), 0, []
        t = pa.concat_tables([t for _, t in loaded])
        ids = t.column("task_id").to_pylist()
        done = _is_done(t)
        pick: dict[str, int] = {}
        for i, tid in enumerate(ids):
            j = pick.get(tid)
            if j is None or not done[j]:  # a done row is final; a refusal is replaced
                pick[tid] = i
        keep = sorted(pick.values())
        return t.take(pa.array(keep, pa.int64())), len(ids) - len(keep), [p for p, _ in loaded]

    def finalize(self) -> tuple[str, pa.Table, int]:
        """Flush, merge into ``auctions.parquet`` (atomically), then delete the merged parts.
        Returns (uri of the final file, its table, duplicates dropped).

        Only parts whose rows are in the final file are deleted, and only after it is written:
        a crash in between leaves duplicates (dropped by the next merge), never a gap."""
        self.flush()
        table, dupes, merged = self._merge()
        final = f"{self.root}/{FINAL}"
        self._write_atomic(table, final)
        for p in merged:
            if p != final:
                self.fs.delete_file(p)
        return self._show(final), table, dupes

    def reset(self) -> None:
        """Forget earlier results under this output (a fresh run, ``--no-resume``), and the
        budget ledger beside them: a fresh run starts its budget at $0."""
        for f in self._files():
            self.fs.delete_file(f)
        if self.fs.get_file_info(self.ledger_path).type != pafs.FileType.NotFound:
            self.fs.delete_file(self.ledger_path)

    @property
    def ledger_path(self) -> str:
        """Where a private service of this run keeps its budget ledger."""
        return f"{self.root}/{LEDGER}"

    @property
    def ledger_uri(self) -> str:
        """:attr:`ledger_path` as a URI (``s3://…`` for S3 outputs)."""
        return f"{self.uri.rstrip('/')}/{LEDGER}"
