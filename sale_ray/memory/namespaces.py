"""Memory namespaces: one tenant's auctions never reach another tenant's prompts.

With ``memory.isolation: namespace`` every namespace (a tenant, as the HTTP door's API keys name
them) is a memory of its own: its own shards (actors ``<prefix>.<namespace>-<i>`` when named) and
its own snapshot prefix (``<snapshot_uri>/ns=<namespace>``). Isolation is structural, not a filter
on a shared index: a query of tenant A is sent only to A's shards, so no bug in scoring, merging
or an approximate index can hand it B's records, and a snapshot or a restore of one namespace
never touches another. The price is a set of shards per active namespace (an actor is ~60 MiB,
RAY_NOTES.md): meant for a handful of tenants, not thousands.

With ``isolation: shared`` (the default) every namespace maps to the one shared memory.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

from .config import MemoryConfig, StorageConfig
from .sharded import ShardedMemory

NAMESPACE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
DEFAULT = "default"
MakeMemory = Callable[[MemoryConfig, StorageConfig | None], ShardedMemory]


def namespace_config(
    cfg: MemoryConfig, storage: StorageConfig | None, namespace: str
) -> tuple[MemoryConfig, StorageConfig | None]:
    """The config of one namespace's memory: its actor names and snapshot prefix."""
    if not NAMESPACE.match(namespace):
        raise ValueError(f"namespace must be 1-64 letters, digits, _ . - (got {namespace!r})")
    prefix = f"{cfg.actor_name_prefix}.{namespace}"[:64] if cfg.actor_name_prefix else None
    ns_cfg = cfg.model_copy(update={"actor_name_prefix": prefix})
    if storage is None or not storage.snapshot_uri:
        return ns_cfg, storage
    uri = f"{storage.snapshot_uri.rstrip('/')}/ns={namespace}"
    return ns_cfg, storage.model_copy(update={"snapshot_uri": uri})


class NamespacedMemory:
    """Memories by namespace, created on first use (``make`` builds one from its config)."""

    def __init__(self, cfg: MemoryConfig, storage: StorageConfig | None, make: MakeMemory) -> None:
        self.cfg, self.storage, self._make = cfg, storage, make
        self._memories: dict[str, ShardedMemory] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str | None = None) -> ShardedMemory:
        """The memory serving ``namespace`` (None = the default one). Under ``shared`` that is
        the same memory for every namespace."""
        ns = namespace or DEFAULT
        key = ns if self.cfg.isolation == "namespace" else DEFAULT
        with self._lock:
            if key not in self._memories:
                if self.cfg.isolation == "namespace":
                    self._memories[key] = self._make(*namespace_config(self.cfg, self.storage, ns))
                else:
                    self._memories[key] = self._make(self.cfg, self.storage)
            return self._memories[key]

    def namespaces(self) -> list[str]:
        """Namespaces with a memory in this process."""
        return sorted(self._memories)

    def snapshot_all(self) -> dict[str, str]:
        """Snapshot every namespace's memory; returns snapshot ids by namespace."""
        return {ns: m.snapshot().snapshot_id for ns, m in sorted(self._memories.items())}


def local_namespaced(
    cfg: MemoryConfig, storage: StorageConfig | None = None, embedder=None
) -> NamespacedMemory:
    """In-process namespaced memories (no Ray), sharing one embedder."""
    from .embed import make_embedder

    emb = embedder or make_embedder(cfg.embedder)
    return NamespacedMemory(cfg, storage, lambda c, s: ShardedMemory.local(c, s, embedder=emb))
