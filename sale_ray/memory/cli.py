"""``sale-ray snapshot``: take, list, inspect, export and prune auction-memory snapshots.

    sale-ray snapshot take   [--config FILE] [--to URI] [--address ADDR] [--namespace NS]
    sale-ray snapshot ls     URI
    sale-ray snapshot show   URI [--verify]
    sale-ray snapshot export URI --out FILE.parquet [--with-embedding] [--force]
    sale-ray snapshot prune  URI --keep N

URI is a local folder, ``file://…`` or ``s3://bucket/prefix`` (layout in :mod:`.snapshot`);
``ls``, ``show``, ``export`` and ``prune`` take ``--endpoint-url`` / ``--region`` for S3.
Credentials come only from the standard AWS chain and are never printed. Everything that reads
goes through the pointer and the verified readers of :mod:`.snapshot`, so what is shown is what a
restore would load. See docs/memory.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..errors import InfraError, SaleRayError, UserError
from .config import MemoryConfig, StorageConfig
from .manifest import read_manifest_file
from .shard import EMBEDDING, storage_schema
from .snapshot import (
    Manifest,
    SnapshotError,
    SnapshotStore,
    prune_snapshots,
    read_manifest,
    read_shard_file,
)

Command = Callable[[argparse.Namespace], int]


# --- parser -----------------------------------------------------------------------------------
def add_snapshot_parser(sub: Any) -> None:
    """Register ``sale-ray snapshot`` and its subcommands (wired into :mod:`sale_ray.cli`)."""
    p = sub.add_parser("snapshot", help="take, list, inspect, export and prune memory snapshots")
    actions = p.add_subparsers(dest="action", required=True)
    s3 = argparse.ArgumentParser(add_help=False)
    s3.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (http://…)")
    s3.add_argument(
        "--region", default=None, help="S3 region (default: $AWS_REGION, else us-east-1)"
    )

    t = actions.add_parser("take", help="snapshot the running memory of a Ray cluster now")
    t.add_argument("--config", default=None, help="YAML config the memory was started with")
    t.add_argument("--to", default=None, help="snapshot URI (default: storage.snapshot_uri)")
    t.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    t.add_argument("--namespace", default=None, help="Ray namespace of the shard actors")
    t.set_defaults(func=cmd_take)

    ls = actions.add_parser("ls", parents=[s3], help="list snapshots, newest first")
    ls.add_argument("uri", help="folder or s3://bucket/prefix")
    ls.set_defaults(func=cmd_ls)

    sh = actions.add_parser("show", parents=[s3], help="the latest snapshot's manifest")
    sh.add_argument("uri", help="folder or s3://bucket/prefix")
    sh.add_argument("--verify", action="store_true", help="read and check every data file")
    sh.set_defaults(func=cmd_show)

    ex = actions.add_parser("export", parents=[s3], help="the latest snapshot as one Parquet file")
    ex.add_argument("uri", help="folder or s3://bucket/prefix")
    ex.add_argument("--out", required=True, help="local .parquet file to write")
    ex.add_argument("--with-embedding", action="store_true", help="keep the embedding column")
    ex.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    ex.set_defaults(func=cmd_export)

    pr = actions.add_parser("prune", parents=[s3], help="delete all but the newest N snapshots")
    pr.add_argument("uri", help="folder or s3://bucket/prefix")
    pr.add_argument("--keep", type=_positive, required=True, help="committed snapshots to keep")
    pr.set_defaults(func=cmd_prune)


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def _storage_errors(fn: Command) -> Command:
    """Storage failures (S3 unreachable, no such bucket, a local permission error) become
    InfraError: one line and exit 1 from sale_ray.cli.main, not a traceback."""

    @functools.wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except SaleRayError:
            raise
        except OSError as e:
            raise InfraError(str(e)) from e
        except Exception as e:
            # botocore is imported lazily by the store; recognise its errors without importing it
            if type(e).__module__.startswith("botocore"):
                raise InfraError(f"S3: {e}") from e
            raise

    return run


def _store(args: argparse.Namespace) -> SnapshotStore:
    """The snapshot store named on the command line (URI and S3 options validated)."""
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    fields = {"snapshot_uri": args.uri, "endpoint_url": args.endpoint_url}
    storage = _validated_storage({**fields, **({"region": region} if region else {})})
    return SnapshotStore(args.uri, storage)


def _validated_storage(fields: dict[str, Any]) -> StorageConfig:
    from ..config import format_validation_error

    try:
        return StorageConfig.model_validate(fields)
    except ValidationError as e:
        raise UserError(format_validation_error(e)) from None


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _latest(store: SnapshotStore) -> Manifest:
    """The manifest LATEST names; a location without one is an error (exit 1)."""
    manifest = read_manifest(store)
    if manifest is None:
        raise SnapshotError(f"no snapshot at {store.uri} (no {store.display('LATEST')})")
    return manifest


# --- take -------------------------------------------------------------------------------------
@_storage_errors
def cmd_take(args: argparse.Namespace) -> int:
    """Snapshot the live named shard actors to ``--to`` or ``storage.snapshot_uri``."""
    from ..config import load_config

    config = load_config(args.config)
    if not config.memory.actor_name_prefix:
        where = args.config or "the default config"
        raise UserError(
            f"{where}: memory.actor_name_prefix is not set; `snapshot take` finds the running "
            "shard actors by that name (set it in the config the memory is started with)"
        )
    storage = config.storage
    if args.to:
        storage = _validated_storage({**storage.model_dump(), "snapshot_uri": args.to})
    if not storage.snapshot_uri:
        raise UserError("nowhere to write: pass --to URI or set storage.snapshot_uri")
    import ray

    started = _connect_ray(args.address)
    try:
        manifest = _attach(config.memory, storage, args.namespace).snapshot()
    finally:
        if started:  # we only connected: this disconnects, the cluster keeps running
            ray.shutdown()
    print(
        f"snapshot {manifest.snapshot_id} committed to {storage.snapshot_uri}: "
        f"rows {manifest.total_rows}, files {len(manifest.files)}, "
        f"bytes {sum(f.bytes for f in manifest.files)}"
    )
    return 0


def _connect_ray(address: str) -> bool:
    """Join the cluster at ``address`` (never start one: a fresh cluster holds no memory).
    An already initialised Ray (a job driver, a test) is reused. True if we connected."""
    import ray

    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, log_to_driver=False)
    except ConnectionError as e:
        raise InfraError(f"no running Ray cluster at {address!r}: {e}") from None
    return True


def _attach(cfg: MemoryConfig, storage: StorageConfig, namespace: str | None) -> Any:
    """The running memory, attached by actor name, checked against the config."""
    import ray

    from .remote import connect_memory

    prefix, where = cfg.actor_name_prefix, f"namespace {namespace or '(this job)'}"
    try:
        mem = connect_memory(cfg, storage, namespace=namespace)
    except ValueError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InfraError(
            f"memory '{prefix}' ({cfg.shards} shards) not found in {where}: {first}"
        ) from None
    try:  # one shard more than configured would be silently left out of the snapshot
        ray.get_actor(f"{prefix}-{cfg.shards}", namespace=namespace)
    except ValueError:
        pass
    else:
        raise UserError(
            f"memory.shards is {cfg.shards} but shard actor '{prefix}-{cfg.shards}' is running: "
            "use the config the memory was started with"
        )
    dims = {s["dim"] for s in mem.stats()["shards"]}
    if dims != {mem.embedder.dim}:
        raise UserError(
            f"memory.embedder {cfg.embedder!r} has dim {mem.embedder.dim} but the running "
            f"shards hold dim {sorted(dims)}: use the config the memory was started with"
        )
    return mem


# --- ls ---------------------------------------------------------------------------------------
@dataclass
class Listed:
    """One snapshot id found under a URI: committed (with its manifest) or not."""

    snapshot_id: str
    manifest: Manifest | None
    latest: bool
    note: str = ""


def list_snapshots(store: SnapshotStore) -> list[Listed]:
    """Every snapshot id under ``store`` (manifests and data folders), newest first."""
    current = _pointer_id(store)
    manifests = {n[: -len(".json")] for n in store.list_names("manifests") if n.endswith(".json")}
    out = []
    for sid in sorted(manifests | set(store.list_names("data")), reverse=True):  # ids: ms first
        manifest, note = _read_listed_manifest(store, sid) if sid in manifests else (None, "")
        if current is None or sid > current:
            # the pointer is the commit: anything it has not reached yet is not a snapshot
            note = "uncommitted (in progress or crashed)"
        elif sid not in manifests:
            note = "debris (uncommitted)"
        out.append(Listed(sid, manifest, sid == current, note))
    return out


def _pointer_id(store: SnapshotStore) -> str | None:
    raw, _ = store.read_pointer()
    if raw is None:
        return None
    try:
        sid = json.loads(raw).get("snapshot_id")
    except (ValueError, AttributeError):
        sid = None
    if not isinstance(sid, str):
        # listing stays useful with a broken pointer; `show` reports it as an error
        print(f"sale-ray: warning: {store.display('LATEST')} is unreadable", file=sys.stderr)
        return None
    return sid


def _read_listed_manifest(store: SnapshotStore, sid: str) -> tuple[Manifest | None, str]:
    rel = f"manifests/{sid}.json"
    try:
        return read_manifest_file(store, rel, None), ""  # size-capped before it is read
    except (SnapshotError, ValidationError) as e:
        return None, f"unreadable manifest ({str(e).splitlines()[0]})"


@_storage_errors
def cmd_ls(args: argparse.Namespace) -> int:
    """Print the snapshots under a URI, newest first; ``*`` marks the one LATEST names."""
    rows = list_snapshots(_store(args))
    if not rows:
        print(f"no snapshots at {args.uri}", file=sys.stderr)
        return 0
    print(f"  {'snapshot_id':<24} {'created (UTC)':<20} {'shards':>6} {'rows':>10} {'bytes':>12}")
    for r in rows:
        m = r.manifest
        cols = (
            f"{_utc(m.created_at):<20} {m.shards:>6} {m.total_rows:>10} "
            f"{sum(f.bytes for f in m.files):>12}"
            if m is not None
            else ""
        )
        line = " ".join(x for x in (r.snapshot_id.ljust(24), cols, r.note) if x)
        print(f"{'*' if r.latest else ' '} {line}".rstrip())
    return 0


# --- show -------------------------------------------------------------------------------------
@_storage_errors
def cmd_show(args: argparse.Namespace) -> int:
    """Print the latest manifest; with ``--verify``, read and check every data file."""
    store = _store(args)
    m = _latest(store)
    print(f"snapshot        {m.snapshot_id} (LATEST)")
    print(f"created         {_utc(m.created_at)}")
    print(f"schema_version  {m.schema_version}")
    print(f"embedder        {m.embedder or '(not recorded)'}")
    print(f"dim             {m.dim}")
    print(f"shards          {m.shards}")
    print(f"rows            {m.total_rows}")
    print(f"bytes           {sum(f.bytes for f in m.files)}")
    print(f"  {'path':<52} {'shard':>5} {'rows':>9} {'bytes':>11}  sha256")
    for f in m.files:
        print(f"  {f.path:<52} {f.shard:>5} {f.rows:>9} {f.bytes:>11}  {f.sha256[:12]}")
    if args.verify:
        _verify(store, m)
    return 0


def _verify(store: SnapshotStore, manifest: Manifest) -> None:
    """Read every file through the verified reader; report each, raise if any failed."""
    from concurrent.futures import ThreadPoolExecutor

    def check(f: Any) -> str | None:
        try:
            read_shard_file(store, f, manifest.dim)  # sha256, Parquet, columns, row count
        except SnapshotError as e:
            return str(e)
        return None

    # file by file (not read_snapshot_tables) so that every bad file is named, not the first
    with ThreadPoolExecutor(max(1, min(8, len(manifest.files)))) as pool:
        errors = [e for e in pool.map(check, manifest.files) if e]
    if errors:
        for e in errors:
            print(f"verify: FAILED {e}")
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SnapshotError(f"verify failed: {errors[0]}{more}")
    print(f"verify: OK ({len(manifest.files)} files, {manifest.total_rows} rows)")


# --- export -----------------------------------------------------------------------------------
@_storage_errors
def cmd_export(args: argparse.Namespace) -> int:
    """Write the latest snapshot's rows (all shards) to one local Parquet file."""
    out = Path(args.out)
    if "://" in args.out:
        raise UserError(f"--out {args.out}: must be a local file path")
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; pass --force to overwrite it")
    store = _store(args)
    manifest = _latest(store)
    rows = export_snapshot(store, manifest, out, with_embedding=args.with_embedding)
    print(f"wrote {out}: {rows} rows from snapshot {manifest.snapshot_id}")
    return 0


def export_snapshot(
    store: SnapshotStore, manifest: Manifest, out: Path, *, with_embedding: bool = False
) -> int:
    """Stream a snapshot's files, verified, into one Parquet file at ``out``; returns rows.

    One data file is held at a time, so exports of any size stay within memory. The file
    appears complete or not at all (written beside ``out``, then renamed).
    """
    import pyarrow.parquet as pq

    schema = storage_schema(manifest.dim)
    if not with_embedding:
        schema = schema.remove(schema.get_field_index(EMBEDDING))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd") as w:
            for f in sorted(manifest.files, key=lambda f: (f.shard, f.part)):
                table = read_shard_file(store, f, manifest.dim).select(schema.names)
                w.write_table(table)
                rows += table.num_rows
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


# --- prune ------------------------------------------------------------------------------------
@_storage_errors
def cmd_prune(args: argparse.Namespace) -> int:
    """Delete all but the newest ``--keep`` committed snapshots (and older debris)."""
    store = _store(args)
    committed = {n[: -len(".json")] for n in store.list_names("manifests")}
    deleted = prune_snapshots(store, args.keep)
    for sid in deleted:
        print(f"deleted {sid}" + ("" if sid in committed else " (debris)"))
    print(f"pruned {len(deleted)}; kept the newest {args.keep} committed and anything newer")
    return 0
