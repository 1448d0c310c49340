"""Configuration of the auction memory (``memory:``) and of durable storage (``storage:``).

Both models follow the rules of :mod:`sale_ray.config`: every field has a default and a
description, unknown keys are errors. The lead hooks them into ``SaleConfig`` as the ``memory``
and ``storage`` sections; nothing here imports Ray, pyarrow or a model.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EmbedderName = Literal["minilm", "minilm-torch", "hashing"]
ContrastOn = Literal["verified", "auction", "outcome"]
IndexKind = Literal["auto", "exact", "ivf"]
Isolation = Literal["shared", "namespace"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryConfig(_Strict):
    """The shared auction memory: sharding, retrieval, bounds and snapshot cadence."""

    enabled: bool = Field(
        default=True,
        description="Use the memory at all: refinement (`bid: plan`) and outcome memory "
        "(`bid: answer` with `auction.answer_memory_k`).",
    )
    shards: int = Field(default=4, ge=1, le=256, description="Number of MemoryShard actors.")
    k: int = Field(default=8, ge=1, le=256, description="Past tasks retrieved per query.")
    max_pairs: int = Field(
        default=3,
        ge=1,
        le=64,
        description="Contrast pairs shown to a refining agent (the most similar first). Each "
        "pair is two plans of prompt: on short tasks more pairs cost more than they teach.",
    )
    max_records_per_shard: int = Field(
        default=250_000,
        ge=1,
        description="Bound per shard; past it the oldest records are evicted (see shard.py).",
    )
    max_segments: int = Field(
        default=32,
        ge=1,
        description="Arrow segments a shard keeps before compacting them into one.",
    )
    index: IndexKind = Field(
        default="auto",
        description="Search inside each shard. 'exact': scan the whole float32 matrix. 'ivf': an "
        "inverted-file index (faiss) proposes candidates, re-ranked exactly. 'auto': exact "
        "below index_min_records per shard (where exact is as fast), ivf above.",
    )
    index_min_records: int = Field(
        default=5_000,
        ge=1,
        description="Records per shard from which 'auto' (and 'ivf') build the index; below it "
        "a shard scans exactly (measured cross-over: benchmarks/results/memory_retrieval.md).",
    )
    index_nprobe: int = Field(
        default=16, ge=1, le=4096, description="IVF cells probed per query (recall vs time)."
    )
    index_candidates: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Candidates per query the index hands to exact re-ranking (at least k).",
    )
    index_storage: Literal["sq8", "flat"] = Field(
        default="sq8",
        description="Codes the IVF lists hold: 'sq8' int8 (384 B a 384-d record), 'flat' "
        "float32 (4x more, marginally better candidates). Re-ranking is always float32.",
    )
    search_transport: Literal["direct", "calls"] = Field(
        default="direct",
        description="How a query reaches shard actors on the caller's node. 'direct': a "
        "socket per shard on 127.0.0.1 (authenticated; 2-3x less latency per query than "
        "actor calls, measured in benchmarks/results/memory_retrieval.md); shards elsewhere, "
        "and any failure, fall back to actor calls. 'calls': one Ray actor call per shard "
        "(sale_ray/memory/direct.py).",
    )
    index_persist: bool = Field(
        default=True,
        description="Snapshots carry each shard's index (checksummed in the manifest) and a "
        "restore loads it instead of rebuilding it; a file that fails its checks is rebuilt "
        "(sale_ray/memory/index_file.py). Restore times of both: BENCHMARKS.md.",
    )
    isolation: Isolation = Field(
        default="shared",
        description="'shared': one memory for every caller. 'namespace': each tenant "
        "(namespace) gets its own shards and snapshot prefix, so no query can reach another "
        "tenant's auctions (see sale_ray/memory/namespaces.py).",
    )
    contrast_on: ContrastOn = Field(
        default="verified",
        description="'verified': where the task had a verifier, a winning plan must have "
        "passed it; where it had none, the auction's winner counts. 'auction': the auction's "
        "winner, passed or not (the paper). 'outcome': only winners that passed (tasks without "
        "a verifier give no exemplar). Measured in BENCHMARKS.md, 'Memory learning'.",
    )
    embedder: EmbedderName = Field(
        default="minilm",
        description="'minilm': all-MiniLM-L6-v2 in pure numpy (no torch). 'minilm-torch': the "
        "same model through sentence-transformers (extra 'embed'). 'hashing': fast "
        "dependency-free hashed n-grams (tests, fallback).",
    )
    snapshot_every_n_writes: int = Field(
        default=0,
        ge=0,
        description="Snapshot after this many new records (0 = only on demand).",
    )
    restore_on_start: bool = Field(
        default=True, description="Shards load the latest snapshot (if any) when they start."
    )
    actor_name_prefix: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
        description="Name shard actors '<prefix>-<i>' (detached lookups); None = anonymous.",
    )


class StorageConfig(_Strict):
    """Where durable copies go: memory snapshots (and, later, auction logs).

    Credentials are never part of the config: boto3 and pyarrow read them from the standard
    AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or a profile / role).
    """

    snapshot_uri: str | None = Field(
        default=None,
        description="Local folder or s3://bucket/prefix for memory snapshots; None = none.",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (http://127.0.0.1:9000); None = AWS. pyarrow "
        "ignores AWS_ENDPOINT_URL, so this is the only place it is read from.",
    )
    region: str = Field(default="us-east-1", description="S3 region.")
    keep_snapshots: int = Field(
        default=3,
        ge=0,
        description="Committed snapshots kept; older ones (and debris of crashed ones) are "
        "deleted after each new commit. 0 = keep all.",
    )
    conditional_pointer: bool = Field(
        default=True,
        description="Compare-and-swap the snapshot pointer with S3 conditional writes "
        "(If-Match / If-None-Match); turn off for stores that refuse them.",
    )

    @field_validator("snapshot_uri")
    @classmethod
    def _check_uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("must not be blank (use null for no snapshots)")
        if "://" in v and not v.startswith(("s3://", "file://")):
            raise ValueError("only local paths, file:// and s3:// URIs are supported")
        if v.startswith("s3://") and not v[len("s3://") :].split("/", 1)[0]:
            raise ValueError("s3 URI needs a bucket: s3://bucket/prefix")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _check_endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v
