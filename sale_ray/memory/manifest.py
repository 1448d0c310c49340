"""What a snapshot's files say about each other, and the checks that keep a reader from trusting
them too far.

A snapshot location is durable storage that someone else may have written (another writer, a
restored backup, an attacker with write access to the bucket). Before any byte is used, the
reader checks, in this order:

* **the pointer** (``LATEST``): at most :data:`MAX_POINTER_BYTES`, a JSON object with
  ``schema_version >= 1``, a safe ``snapshot_id``, ``manifest == manifests/<snapshot_id>.json``
  and a **required** ``sha256`` of that manifest;
* **the manifest**: its size from a HEAD, at most :data:`MAX_MANIFEST_BYTES`, before it is read;
  then its sha256 against the pointer, ``schema_version >= 1``, and every data file path
  confined to ``data/<snapshot_id>/`` (no ``..``, no absolute path, no symlink out of a local
  folder);
* **each data file**: its size from a HEAD must equal the manifest's ``bytes`` and be at most
  :data:`MAX_DATA_FILE_BYTES` before it is read (then sha256, Parquet, columns, rows).

Every failure is a :class:`~.store.SnapshotError` whose message names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from typing import Any

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .store import MAX_POINTER_READ, POINTER, SnapshotError, SnapshotStore, SnapshotVersionError

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 64 * 2**20  # Arrow bytes per data file written (a shard may span several)
# Read caps: generous multiples of what a writer produces, small enough that a hostile or
# corrupt location cannot make a reader allocate without bound (8 files are read in parallel).
MAX_DATA_FILE_BYTES = 4 * MAX_FILE_BYTES
MAX_MANIFEST_BYTES = 16 * 2**20  # ~80k files of ~200 bytes of JSON each
MAX_POINTER_BYTES = MAX_POINTER_READ  # the pointer is ~200 bytes

# Snapshot ids become path components: no separators, no dot-names ("." / ".." / hidden).
SNAPSHOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class FileInfo(BaseModel):
    """One data file of a snapshot."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Relative to the snapshot root, under data/<snapshot_id>/.")
    shard: int = Field(ge=0)
    part: int = Field(default=0, ge=0, description="Order of this file within its shard.")
    rows: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256.pattern)


class IndexFileInfo(BaseModel):
    """A shard's approximate index, persisted beside its data (``memory.index_persist``)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="Relative to the snapshot root, under data/<snapshot_id>/.")
    shard: int = Field(ge=0)
    first_label: int = Field(ge=0, description="Label of the shard's first row (see index.py).")
    rows: int = Field(ge=0, description="Rows the index holds: every row of the shard's data.")
    storage: str = Field(description="IVF codes: 'sq8' or 'flat'.")
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256.pattern)


class Manifest(BaseModel):
    """What a snapshot contains; the pointer names exactly one manifest."""

    model_config = ConfigDict(extra="forbid")
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1)
    snapshot_id: str = Field(pattern=SNAPSHOT_ID.pattern)
    created_at: float
    shards: int = Field(ge=1)
    dim: int = Field(ge=1)
    embedder: str | None = Field(
        default=None, description="Vector space of the embeddings, e.g. all-MiniLM-L6-v2/384."
    )
    files: list[FileInfo]
    total_rows: int = Field(ge=0)
    indexes: list[IndexFileInfo] = Field(
        default_factory=list,
        description="Persisted approximate indexes, at most one per shard (optional: a "
        "restore without one rebuilds it).",
    )

    @model_validator(mode="after")
    def _files_stay_inside(self) -> Manifest:
        # A manifest names files relative to the snapshot root; one that points elsewhere
        # (``../``, an absolute path, another snapshot's folder that prune may delete) is refused.
        for f in [*self.files, *self.indexes]:
            confine(f.path, f"data/{self.snapshot_id}/")
        if len({i.shard for i in self.indexes}) != len(self.indexes):
            raise ValueError("more than one index file for a shard")
        return self


def confine(rel: str, prefix: str) -> str:
    """``rel`` if it is a plain relative path strictly under ``prefix``; else ValueError.

    Checked lexically, before any filesystem call: no empty, ``.`` or ``..`` component, no
    leading ``/``, no backslash or NUL, no ``:`` (URI schemes, drive letters)."""
    bad = (
        not rel
        or rel.startswith("/")
        or any(c in rel for c in ("\\", "\x00", ":"))
        or any(p in ("", ".", "..") for p in rel.split("/"))
        or posixpath.normpath(rel) != rel
        or not rel.startswith(prefix)
        or len(rel) == len(prefix)
    )
    if bad:
        raise ValueError(f"path {rel[:200]!r} is not confined to {prefix!r}")
    return rel


def check_version(obj: Any, where: str) -> None:
    """``obj`` is a JSON object with an integer ``schema_version`` this sale-ray reads."""
    if not isinstance(obj, dict):
        raise SnapshotError(f"{where}: not a JSON object")
    v = obj.get("schema_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise SnapshotError(f"{where}: missing or invalid schema_version")
    if v < 1:
        raise SnapshotError(f"{where}: schema_version {v} is invalid (must be >= 1)")
    if v > SCHEMA_VERSION:
        raise SnapshotVersionError(
            f"{where}: schema_version {v} is newer than this sale-ray reads ({SCHEMA_VERSION}); "
            "upgrade sale-ray to restore it"
        )


def load_json(data: bytes, where: str) -> dict:
    """Parse a pointer or manifest and check its schema_version."""
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SnapshotError(f"{where}: not valid JSON ({str(e)[:200]})") from None
    check_version(obj, where)
    return obj


def parse_pointer(raw: bytes, store: SnapshotStore) -> tuple[str, str, str]:
    """(snapshot_id, manifest path, manifest sha256) of a pointer, every field required."""
    where = store.display(POINTER)
    if len(raw) > MAX_POINTER_BYTES:
        raise SnapshotError(f"{where}: {len(raw)} bytes, more than {MAX_POINTER_BYTES}")
    pointer = load_json(raw, where)
    sid, rel, sha = pointer.get("snapshot_id"), pointer.get("manifest"), pointer.get("sha256")
    if not isinstance(sid, str) or not SNAPSHOT_ID.match(sid):
        raise SnapshotError(f"{where}: missing or invalid snapshot_id")
    # The pointer may name only its own snapshot's manifest: nothing outside manifests/.
    if rel != f"manifests/{sid}.json":
        raise SnapshotError(f"{where}: no valid 'manifest' entry (want manifests/{sid}.json)")
    # Without the hash, whoever can replace a manifest could change what is restored unnoticed.
    if not isinstance(sha, str) or not SHA256.match(sha):
        raise SnapshotError(f"{where}: missing or invalid sha256 of the manifest (required)")
    return sid, rel, sha


def _local_inside(store: SnapshotStore, rel: str) -> None:
    # Lexical confinement is not enough on a folder: a symlink inside it may lead anywhere.
    root = os.path.realpath(store.root)
    real = os.path.realpath(store.full(rel))
    if os.path.commonpath([root, real]) != root:
        raise SnapshotError(f"{store.display(rel)}: resolves outside the snapshot location")


def read_capped(store: SnapshotStore, rel: str, cap: int, expected: int | None = None) -> bytes:
    """The bytes of ``rel``, its size checked (``<= cap``; ``== expected`` when given) from a
    HEAD before anything is read, and never more than that size read."""
    where = store.display(rel)
    if not store.is_s3:
        _local_inside(store, rel)
    try:
        info = store.fs.get_file_info(store.full(rel))
    except OSError as e:
        raise SnapshotError(f"{where}: cannot read: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise SnapshotError(f"{where}: file not found")
    if info.type != pafs.FileType.File or info.size is None:
        raise SnapshotError(f"{where}: not a file")
    if info.size > cap:
        raise SnapshotError(f"{where}: {info.size} bytes, more than the {cap} a reader accepts")
    if expected is not None and info.size != expected:
        raise SnapshotError(
            f"{where}: {info.size} bytes, manifest says {expected} (file changed or truncated)"
        )
    try:
        with store.fs.open_input_file(store.full(rel)) as f:
            data = f.read(info.size)  # bounded even if the object grew since the HEAD
    except FileNotFoundError:
        raise SnapshotError(f"{where}: file not found") from None
    except OSError as e:
        raise SnapshotError(f"{where}: cannot read: {e}") from None
    if len(data) != info.size:
        raise SnapshotError(f"{where}: read {len(data)} bytes, expected {info.size} (truncated)")
    return data


def read_manifest_file(store: SnapshotStore, rel: str, sha256: str | None) -> Manifest:
    """A manifest, size-capped, checked against ``sha256`` (the pointer's), validated."""
    where = store.display(rel)
    body = read_capped(store, rel, MAX_MANIFEST_BYTES)
    if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
        raise SnapshotError(f"{where}: sha256 does not match the pointer")
    obj = load_json(body, where)
    try:
        manifest = Manifest.model_validate(obj)
    except ValidationError as e:
        err = e.errors(include_input=False)[0]
        loc = ".".join(str(x) for x in err["loc"])
        raise SnapshotError(f"{where}: malformed manifest: {loc}: {err['msg']}"[:600]) from None
    parts = sorted((f.shard, f.part) for f in manifest.files)
    counts = {s: sum(1 for f in manifest.files if f.shard == s) for s in range(manifest.shards)}
    want = [(s, p) for s in range(manifest.shards) for p in range(counts[s])]
    if parts != want:
        raise SnapshotError(
            f"{where}: files do not cover shards 0..{manifest.shards - 1} "
            "with parts numbered from 0"
        )
    return manifest
