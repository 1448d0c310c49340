"""The approximate index inside a shard: recall, exact scores, writes and evictions kept
consistent, background builds that catch up, and maintenance that works on immutable views."""

import numpy as np
import pytest
from pydantic import ValidationError

from sale_ray.memory.config import MemoryConfig
from sale_ray.memory.entry import MemoryEntry
from sale_ray.memory.index import IndexPolicy, IVFIndex, nlist_for
from sale_ray.memory.shard import MemoryShard, merge_segments, normalise_rows

DIM = 32


def clustered(n, seed=0, centres=40):
    """Unit vectors around a few centres, like embeddings of related task texts."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return normalise_rows(x)


def entries(start, n):
    return [
        MemoryEntry(auction_id=f"a{i}", task_id=f"t{i}", task_text=f"task {i}", created_at=i)
        for i in range(start, start + n)
    ]


def ivf_shard(max_records=10_000, **kw):
    policy = IndexPolicy("ivf", nprobe=kw.pop("nprobe", 8), candidates=kw.pop("candidates", 64))
    return MemoryShard(DIM, max_records=max_records, index=policy, **kw)


def ids(shard, q, k=8, exact=False):
    return [h[1]["auction_id"] for h in shard.search_rows(q, k, exact=exact)[0]]


def test_ivf_recall_against_exact_scan_on_clustered_vectors():
    vecs = clustered(4000)
    shard = ivf_shard()
    shard.write(entries(0, 4000), vecs)
    assert shard.stats()["index"] == "ivf"
    queries = clustered(50, seed=1)
    hit = [len(set(ids(shard, q)) & set(ids(shard, q, exact=True))) / 8 for q in queries]
    assert np.mean(hit) >= 0.95


def test_ivf_scores_are_exact_cosines_of_the_rows_returned():
    vecs = clustered(3000)
    shard = ivf_shard()
    shard.write(entries(0, 3000), vecs)
    q = clustered(1, seed=2)[0]
    for score, row in shard.search_rows(q, 8)[0]:
        i = int(row["auction_id"][1:])
        assert score == pytest.approx(float(vecs[i] @ q), abs=1e-5)


def test_a_write_after_the_index_is_built_is_found_at_once():
    shard = ivf_shard()
    shard.write(entries(0, 2000), clustered(2000))
    assert shard.index is not None
    new = normalise_rows(np.random.default_rng(9).standard_normal((1, DIM)))
    shard.write(entries(2000, 1), new)
    assert ids(shard, new[0], k=1) == ["a2000"]
    assert shard.index.ntotal == len(shard)


def test_evicted_records_leave_the_index_too():
    shard = ivf_shard(max_records=2000)
    vecs = clustered(3000)
    shard.write(entries(0, 1500), vecs[:1500])
    shard.write(entries(1500, 1500), vecs[1500:])  # past the bound: the oldest are evicted
    assert len(shard) < 3000
    assert shard.index is not None and shard.index.ntotal == len(shard)
    oldest_kept = 3000 - len(shard)
    for q in vecs[:50]:  # queries that are exactly evicted vectors
        assert all(int(a[1:]) >= oldest_kept for a in ids(shard, q))


def test_auto_scans_exactly_below_the_cross_over_and_indexes_above():
    policy = IndexPolicy("auto", min_records=1500)
    shard = MemoryShard(DIM, index=policy)
    shard.write(entries(0, 1000), clustered(1000))
    assert shard.stats()["index"] == "exact"
    shard.write(entries(1000, 1000), clustered(1000, seed=3))
    assert shard.stats()["index"] == "ivf"


def test_exact_never_builds_an_index():
    shard = MemoryShard(DIM, index=IndexPolicy("exact"))
    shard.write(entries(0, 3000), clustered(3000))
    assert shard.index is None and shard.stats()["index_builds"] == 0


def test_a_background_build_catches_up_with_writes_and_evictions_made_meanwhile():
    shard = ivf_shard(max_records=3000, defer_maintenance=True)
    vecs = clustered(5000)
    shard.write(entries(0, 2500), vecs[:2500])
    job = shard.index_plan()
    assert job is not None and shard.index is None  # deferred: the owner builds it
    shard.write(entries(2500, 2500), vecs[2500:])  # evicts, while the build "runs"
    shard.install_index(shard.policy.build(*job), job[1])
    assert shard.index.ntotal == len(shard)
    assert ids(shard, vecs[4999], k=1) == ["a4999"]
    oldest_kept = 5000 - len(shard)
    assert all(int(a[1:]) >= oldest_kept for a in ids(shard, vecs[0]))


def test_index_grows_cells_as_the_shard_grows():
    shard = ivf_shard(max_records=100_000)
    shard.write(entries(0, 1100), clustered(1100))
    first = shard.index.nlist
    shard.write(entries(1100, 4000), clustered(4000, seed=4))  # > 4x: rebuilt with more cells
    assert shard.stats()["index_builds"] == 2 and shard.index.nlist > first
    assert nlist_for(4_000) <= 4_000 / 39 and nlist_for(1_000_000) == 2048


def test_restore_rebuilds_the_index_and_answers_the_same():
    shard = ivf_shard()
    vecs = clustered(3000)
    shard.write(entries(0, 3000), vecs)
    restored = MemoryShard(DIM, max_records=10_000, index=shard.policy)
    restored.load_table(shard.to_table())
    assert restored.index is not None and restored.index.ntotal == 3000
    q = clustered(1, seed=5)[0]
    assert ids(restored, q, exact=True) == ids(shard, q, exact=True)


def test_a_view_is_unchanged_by_later_writes_and_evictions():
    shard = MemoryShard(DIM, max_records=100)
    shard.write(entries(0, 80), clustered(80))
    view = shard.view()
    before = view.to_table()
    shard.write(entries(80, 80), clustered(80, seed=6))  # evicts most of what the view holds
    assert view.to_table().equals(before)
    assert before.column("auction_id")[0].as_py() == "a0"


def test_a_merge_is_dropped_if_an_eviction_changed_its_sources():
    shard = MemoryShard(DIM, max_records=100, defer_maintenance=True)
    for s in range(0, 60, 20):
        shard.write(entries(s, 20), clustered(20, seed=s))
    plan = shard.compaction_plan()
    assert plan is not None and plan[0] == 0
    merged = merge_segments(plan[1], lambda t: (t, None))
    shard.write(entries(60, 60), clustered(60, seed=7))  # evicts: segment 0 is sliced
    assert not shard.finish_compaction(plan, merged)
    assert shard.to_table().column("auction_id").to_pylist()[0] != "a0"


def test_a_merge_computed_aside_is_swapped_in_when_its_sources_are_intact():
    shard = MemoryShard(DIM, max_records=1000, defer_maintenance=True)
    for s in range(0, 60, 20):
        shard.write(entries(s, 20), clustered(20, seed=s))
    assert shard.stats()["segments"] == 3
    plan = shard.compaction_plan()
    assert shard.finish_compaction(plan, merge_segments(plan[1], lambda t: (t, None)))
    assert shard.stats()["segments"] == 1
    assert shard.to_table().column("auction_id").to_pylist() == [f"a{i}" for i in range(60)]


def test_a_persisted_index_loads_back_with_the_same_candidates():
    vecs = clustered(2000)
    index = IVFIndex.build(vecs, 0, nprobe=4)
    again = IVFIndex.deserialize(index.serialize(), nprobe=4)
    q = clustered(3, seed=8)
    assert (again.candidates(q, 16) == index.candidates(q, 16)).all()
    assert again.storage == "sq8" and again.ntotal == 2000


def test_config_names_the_index_and_refuses_unknown_ones():
    assert MemoryConfig().index == "auto"
    assert MemoryConfig(index="ivf", index_storage="flat").index_storage == "flat"
    with pytest.raises(ValidationError):
        MemoryConfig(index="hnsw")
