"""Tenant isolation: with ``memory.isolation: namespace`` one tenant's auctions never reach
another tenant's retrieval, contrast pairs or snapshots."""

import pytest

from sale_ray.memory.config import MemoryConfig, StorageConfig
from sale_ray.memory.entry import MemoryBid, MemoryEntry
from sale_ray.memory.namespaces import local_namespaced, namespace_config

from .test_memory_sharded import FixedEmbedder


def auction(i, plan):
    return MemoryEntry(
        auction_id=f"a{i}",
        task_id=f"t{i}",
        task_text=f"v{i}",
        created_at=float(i),
        winner="big",
        bids=[MemoryBid(agent="small", plan="lost"), MemoryBid(agent="big", plan=plan, won=True)],
    )


def cfg(isolation):
    return MemoryConfig(shards=2, embedder="hashing", isolation=isolation)


def test_a_tenants_auctions_never_reach_another_tenants_retrieval_or_contrast():
    mems = local_namespaced(cfg("namespace"), embedder=FixedEmbedder())
    mems.get("acme").write([auction(i, "ACME SECRET PLAN") for i in range(20)])
    other = mems.get("globex")
    assert other.search(["v3"], k=8) == [[]]
    assert other.contrast("v3", ["small"]) == {"small": []}
    own = mems.get("acme").contrast("v3", ["small"])["small"]
    assert own and all(p.winning_plan == "ACME SECRET PLAN" for p in own)


def test_shared_isolation_is_one_memory_for_everyone():
    mems = local_namespaced(cfg("shared"), embedder=FixedEmbedder())
    mems.get("acme").write([auction(i, "plan") for i in range(5)])
    assert mems.get("globex") is mems.get("acme") is mems.get(None)
    assert len(mems.get("globex").search(["v1"], k=3)[0]) == 3


def test_namespaces_snapshot_and_restore_apart(tmp_path):
    st = StorageConfig(snapshot_uri=str(tmp_path / "snap"))
    mems = local_namespaced(cfg("namespace"), st, embedder=FixedEmbedder())
    mems.get("acme").write([auction(i, "plan") for i in range(10)])
    mems.get("globex").write([auction(i, "plan") for i in range(100, 103)])
    assert set(mems.snapshot_all()) == {"acme", "globex"}
    again = local_namespaced(cfg("namespace"), st, embedder=FixedEmbedder())
    assert again.get("acme").stats()["records"] == 10
    assert again.get("globex").stats()["records"] == 3
    assert again.get("initech").stats()["records"] == 0


def test_namespace_names_are_checked_and_map_to_their_own_actors_and_prefix():
    c = MemoryConfig(actor_name_prefix="mem", isolation="namespace")
    ns_cfg, ns_st = namespace_config(c, StorageConfig(snapshot_uri="s3://b/p/"), "acme")
    assert ns_cfg.actor_name_prefix == "mem.acme" and ns_st.snapshot_uri == "s3://b/p/ns=acme"
    with pytest.raises(ValueError):
        namespace_config(c, None, "../other")
