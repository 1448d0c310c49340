"""Where snapshots live: a local folder or ``s3://bucket/prefix``, and the pointer to the latest.

Data files and manifests go through ``pyarrow.fs`` (S3FileSystem with the endpoint from our
:class:`~.config.StorageConfig`: pyarrow ignores ``AWS_ENDPOINT_URL``). The pointer goes through
boto3, because compare-and-swap needs S3 conditional writes, which pyarrow does not expose.
Credentials come from the standard AWS chain and never appear in config, logs or errors.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from ..errors import InfraError
from .config import StorageConfig

POINTER = "LATEST"
MAX_POINTER_READ = 64 * 2**10  # the pointer is ~200 bytes; see manifest.MAX_POINTER_BYTES


class SnapshotError(InfraError):
    """A snapshot file is missing, malformed or fails its checksum; the message names it."""


class SnapshotVersionError(SnapshotError):
    """A snapshot was written by a newer sale-ray (schema_version above ours)."""


class SnapshotConflict(InfraError):
    """Another writer moved the pointer while this snapshot was being written."""


class SnapshotStore:
    """A snapshot root: local folder or ``s3://bucket/prefix`` (endpoint from our config only)."""

    def __init__(self, uri: str, storage: StorageConfig | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.storage = storage or StorageConfig()
        self.is_s3 = uri.startswith("s3://")
        if self.is_s3:
            self.bucket, _, prefix = uri[len("s3://") :].partition("/")
            self.prefix = prefix.strip("/")
            self.root = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        else:
            path = uri[len("file://") :] if uri.startswith("file://") else uri
            self.root = os.path.abspath(path)
        self._fs: pafs.FileSystem | None = None
        self._s3: Any = None

    def __getstate__(self) -> dict:  # clients are per process: ship the recipe only
        return {"uri": self.uri, "storage": self.storage}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"], state["storage"])  # type: ignore[misc]

    @property
    def fs(self) -> pafs.FileSystem:
        if self._fs is None:
            if self.is_s3:
                kw: dict[str, Any] = {"region": self.storage.region}
                ep = self.storage.endpoint_url
                if ep:  # pyarrow ignores AWS_ENDPOINT_URL: pass host and scheme explicitly
                    scheme, _, host = ep.partition("://")
                    kw.update(endpoint_override=host.rstrip("/"), scheme=scheme)
                self._fs = pafs.S3FileSystem(**kw)
            else:
                self._fs = pafs.LocalFileSystem()
        return self._fs

    @property
    def s3(self) -> Any:
        """boto3 client for the pointer (pyarrow has no conditional writes)."""
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client(
                "s3", endpoint_url=self.storage.endpoint_url, region_name=self.storage.region
            )
        return self._s3

    def full(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def display(self, rel: str) -> str:
        """The file as users name it (in errors)."""
        return f"{self.uri}/{rel}"

    def open_output(self, rel: str) -> pa.NativeFile:
        if not self.is_s3:  # S3 has no directories: creating them would write empty keys
            self.fs.create_dir(os.path.dirname(self.full(rel)), recursive=True)
        return self.fs.open_output_stream(self.full(rel))

    def read_bytes(self, rel: str) -> bytes:
        try:
            # A random-access file reads in one ranged GET of known size; a stream's readall()
            # issued many small requests (measured 40x slower on a 37 MB object).
            with self.fs.open_input_file(self.full(rel)) as f:
                return f.read()
        except FileNotFoundError:
            raise SnapshotError(f"{self.display(rel)}: file not found") from None
        except OSError as e:
            raise SnapshotError(f"{self.display(rel)}: cannot read: {e}") from None

    def list_names(self, rel: str) -> list[str]:
        """Base names of the entries directly under ``rel`` ([] if there is none)."""
        sel = pafs.FileSelector(self.full(rel), allow_not_found=True, recursive=False)
        return [i.base_name for i in self.fs.get_file_info(sel)]

    def delete_file(self, rel: str) -> None:
        try:
            self.fs.delete_file(self.full(rel))
        except FileNotFoundError:
            pass

    def delete_dir(self, rel: str) -> None:
        try:
            self.fs.delete_dir(self.full(rel))
        except FileNotFoundError:
            pass

    def write_bytes(self, rel: str, data: bytes) -> None:
        with self.open_output(rel) as f:
            f.write(data)

    # --- the pointer ------------------------------------------------------------------------------
    def read_pointer(self, max_bytes: int = MAX_POINTER_READ) -> tuple[bytes | None, str | None]:
        """Raw pointer bytes and a version tag for compare-and-swap (None, None if absent).

        At most ``max_bytes + 1`` bytes are read, so an oversized pointer is detectable by
        its length without being held in memory whole."""
        if self.is_s3:
            key = f"{self.prefix}/{POINTER}" if self.prefix else POINTER
            try:
                obj = self.s3.get_object(Bucket=self.bucket, Key=key)
            except self.s3.exceptions.NoSuchKey:
                return None, None
            body = obj["Body"]
            try:
                return body.read(max_bytes + 1), obj["ETag"]
            finally:
                body.close()  # the rest of an oversized object is not downloaded
        path = self.full(POINTER)
        try:
            with open(path, "rb") as f:
                data = f.read(max_bytes + 1)
        except FileNotFoundError:
            return None, None
        return data, hashlib.sha256(data).hexdigest()

    def write_pointer(self, data: bytes, expected: str | None) -> None:
        """Replace the pointer iff it still has version ``expected`` (None: must not exist)."""
        if self.is_s3:
            key = f"{self.prefix}/{POINTER}" if self.prefix else POINTER
            kw: dict[str, Any] = {}
            if self.storage.conditional_pointer:
                kw = {"IfMatch": expected} if expected else {"IfNoneMatch": "*"}
            try:
                self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, **kw)
            except self.s3.exceptions.ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                    raise SnapshotConflict(
                        f"{self.display(POINTER)}: moved by another writer; snapshot not committed"
                    ) from None
                raise
            return
        current, tag = self.read_pointer()
        if tag != expected:
            raise SnapshotConflict(f"{self.display(POINTER)}: moved by another writer")
        tmp = self.full(f".{POINTER}.{uuid.uuid4().hex}.tmp")
        os.makedirs(self.root, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.full(POINTER))  # atomic on POSIX


def as_store(
    uri_or_store: str | SnapshotStore, storage: StorageConfig | None = None
) -> SnapshotStore:
    return (
        uri_or_store
        if isinstance(uri_or_store, SnapshotStore)
        else SnapshotStore(uri_or_store, storage)
    )
