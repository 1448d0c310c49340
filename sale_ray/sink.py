"""Incremental, resumable Parquet results: local folder or ``s3://bucket/prefix``.

Layout under the output ``OUT``::

    OUT/parts/part-<run>-<seq>.parquet   written while the run goes (each one complete)
    OUT/auctions.parquet                 the final file: every part merged, one row per task id

Every file appears atomically: locally it is written under a dot-name and renamed; on S3 a PUT
(multipart included) only becomes visible when complete. Readers ignore dot-names, so a crash
at any point leaves only whole files. Resuming reads the ``task_id`` of the final file and of
every part; those ids are done (except rows refused for lack of budget, which a rerun retries).
:meth:`ResultSink.finalize` merges final + parts (first good row per task id wins), writes the
final file, and only then deletes the parts: a crash in between leaves duplicates that the next
merge removes, never a gap.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import InfraError
from .types import AUCTION_SCHEMA, AuctionRecord, records_table

FINAL = "auctions.parquet"
PARTS = "parts"
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
    import os

    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def _is_done(errors: Iterable[str | None]) -> list[bool]:
    return [not (e or "").startswith(_BUDGET_REFUSED) for e in errors]


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

    def _read(self, path: str, columns: list[str] | None = None) -> pa.Table:
        try:
            return pq.read_table(path, filesystem=self.fs, columns=columns)
        except (OSError, pa.ArrowInvalid) as e:
            raise InfraError(f"{path}: unreadable results file ({type(e).__name__})") from None

    def done_ids(self) -> set[str]:
        """Task ids that already have a result (budget refusals excluded: those may rerun)."""
        done: set[str] = set()
        for f in self._files():
            t = self._read(f, ["task_id", "error"])
            ids = t.column("task_id").to_pylist()
            done.update(
                i for i, ok in zip(ids, _is_done(t.column("error").to_pylist()), strict=True) if ok
            )
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
        if self.local:
            d, name = path.rsplit("/", 1)
            tmp = f"{d}/.{name}.{uuid.uuid4().hex[:6]}.tmp"
            pq.write_table(table, tmp, filesystem=self.fs)
            self.fs.move(tmp, path)  # rename(2): atomic on one filesystem
        else:
            pq.write_table(table, path, filesystem=self.fs)  # an S3 PUT is atomic per key

    def merged(self) -> tuple[pa.Table, int]:
        """Every row so far, one per task id (first done row wins, else the last refusal), and
        the number of duplicate rows dropped."""
        files = self._files()
        tables = [self._read(f).select(AUCTION_SCHEMA.names).cast(AUCTION_SCHEMA) for f in files]
        if not tables:
            return AUCTION_SCHEMA.empty_table(), 0
        t = pa.concat_tables(tables)
        ids = t.column("task_id").to_pylist()
        done = _is_done(t.column("error").to_pylist())
        pick: dict[str, int] = {}
        for i, tid in enumerate(ids):
            j = pick.get(tid)
            if j is None or not done[j]:  # a done row is final; a refusal is replaced
                pick[tid] = i
        keep = sorted(pick.values())
        return t.take(pa.array(keep, pa.int64())), len(ids) - len(keep)

    def finalize(self) -> tuple[str, pa.Table, int]:
        """Flush, merge into ``auctions.parquet`` (atomically), then delete the merged parts.
        Returns (uri of the final file, its table, duplicates dropped)."""
        self.flush()
        parts = [f for f in self._files() if not f.endswith(f"/{FINAL}")]
        table, dupes = self.merged()
        final = f"{self.root}/{FINAL}"
        self._write_atomic(table, final)
        for p in parts:  # the final file now holds them; a crash here only leaves duplicates
            self.fs.delete_file(p)
        shown = final if self.local else f"s3://{final}"
        return shown, table, dupes

    def reset(self) -> None:
        """Forget earlier results under this output (a fresh run, ``--no-resume``)."""
        for f in self._files():
            self.fs.delete_file(f)
