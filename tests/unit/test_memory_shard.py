"""MemoryShard: idempotent writes, the size bound, compaction, exact top-k, table round trip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from sale_ray.memory.entry import MemoryBid, MemoryEntry
from sale_ray.memory.shard import EMBEDDING, MemoryShard, normalise_rows

DIM = 16


def entries(start: int, n: int) -> list[MemoryEntry]:
    return [
        MemoryEntry(
            auction_id=f"a{i}",
            task_id=f"t{i}",
            task_text=f"task {i}",
            created_at=float(i),
            winner="big",
            passed=i % 2 == 0,
            bids=[
                MemoryBid(agent="small", plan=f"s{i}"),
                MemoryBid(agent="big", plan=f"b{i}", won=True),
            ],
        )
        for i in range(start, start + n)
    ]


def vecs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_write_is_idempotent_by_auction_id():
    s = MemoryShard(dim=DIM)
    assert s.write(entries(0, 10), vecs(10)) == 10
    assert s.write(entries(5, 10), vecs(10, 1)) == 5  # a5..a9 already there
    assert s.write(entries(0, 15), vecs(15, 2)) == 0  # a full retry
    dup = entries(20, 1) * 3  # repeated inside one batch
    assert s.write(dup, vecs(3)) == 1
    assert len(s) == 16
    st = s.stats()
    assert st["added"] == 16 and st["duplicates"] == 5 + 15 + 2 and st["writes"] == 4


def test_first_write_wins_and_vectors_are_kept():
    s = MemoryShard(dim=DIM)
    v = vecs(1)
    s.write(entries(0, 1), v)
    s.write(entries(0, 1), -v)
    (hit,) = s.search(v, k=1)[0]
    assert hit.entry.auction_id == "a0" and hit.score == pytest.approx(1.0, abs=1e-6)


def test_eviction_keeps_the_bound_and_drops_oldest():
    s = MemoryShard(dim=DIM, max_records=50)
    for b in range(20):  # 200 records in batches of 10
        s.write(entries(b * 10, 10), vecs(10, b))
        assert len(s) <= 50
    ids = set(s.to_table().column("auction_id").to_pylist())
    assert "a199" in ids and "a0" not in ids
    kept = sorted(int(a[1:]) for a in ids)
    assert kept == list(range(200 - len(kept), 200))  # a contiguous newest suffix
    assert len(kept) >= 45  # slack is 10 % of the bound
    assert s.stats()["evicted"] == 200 - len(kept)
    # an evicted id may come back; a present one may not
    assert s.write(entries(0, 1), vecs(1)) == 1
    assert s.write(entries(199, 1), vecs(1)) == 0


def test_eviction_of_a_batch_bigger_than_the_bound():
    s = MemoryShard(dim=DIM, max_records=5)
    s.write(entries(0, 12), vecs(12))
    assert len(s) <= 5
    assert s.to_table().column("auction_id").to_pylist()[-1] == "a11"


def test_search_matches_brute_force_and_survives_eviction():
    s = MemoryShard(dim=DIM, max_records=300)
    all_v = vecs(500, 3)
    for b in range(0, 500, 37):
        s.write(entries(b, min(37, 500 - b)), all_v[b : b + 37])
    table = s.to_table()
    held = [int(a[1:]) for a in table.column("auction_id").to_pylist()]
    m = normalise_rows(all_v[held])
    q = vecs(5, 9)
    got = s.search(q, k=8)
    for j, qv in enumerate(normalise_rows(q)):
        sims = m @ qv
        want = [held[i] for i in np.argsort(-sims)[:8]]
        assert [int(h.entry.auction_id[1:]) for h in got[j]] == want
        assert [h.score for h in got[j]] == pytest.approx(sorted(sims, reverse=True)[:8], abs=1e-5)


def test_search_edge_cases():
    s = MemoryShard(dim=DIM)
    assert s.search(vecs(2), k=8) == [[], []]
    s.write(entries(0, 3), vecs(3))
    assert len(s.search(vecs(1)[0], k=8)[0]) == 3  # 1-d query, k > records
    with pytest.raises(ValueError):
        s.search(np.ones(DIM + 1), k=1)
    with pytest.raises(ValueError):
        s.write(entries(10, 2), vecs(3))


def test_compaction_keeps_segments_logarithmic():
    s = MemoryShard(dim=DIM, max_records=10_000)
    for i in range(1000):  # one record per write: the worst case for segment count
        s.write(entries(i, 1), vecs(1, i))
    st = s.stats()
    assert st["segments"] <= 11 and sum(st["segment_rows"]) == 1000
    assert s.to_table().column("auction_id").to_pylist() == [f"a{i}" for i in range(1000)]


def test_max_segments_is_a_hard_cap():
    s = MemoryShard(dim=DIM, max_records=10_000, max_segments=2)
    for i, n in enumerate([64, 16, 4, 1]):  # each smaller than half the previous: no tiering
        s.write(entries(i * 100, n), vecs(n, i))
    assert s.stats()["segments"] <= 2


def test_seal_hook_sees_every_segment():
    sealed: list[int] = []

    def seal(t: pa.Table):
        sealed.append(t.num_rows)
        return t, object()

    s = MemoryShard(dim=DIM, seal=seal)
    s.write(entries(0, 4), vecs(4))
    s.write(entries(4, 4), vecs(4))  # equal size: merged into one sealed segment of 8
    assert sealed == [4, 4, 8] and s.stats()["segments"] == 1


def test_table_round_trip_is_exact():
    s = MemoryShard(dim=DIM, max_records=40)
    for b in range(5):
        s.write(entries(b * 13, 13), vecs(13, b))
    t = s.to_table()
    assert t.schema.field(EMBEDDING).type == pa.list_(pa.float32(), DIM)
    r = MemoryShard.from_table(t, max_records=40)
    assert r.to_table().equals(t)
    q = vecs(3, 7)
    assert [[h.entry.auction_id for h in hs] for hs in r.search(q, 5)] == [
        [h.entry.auction_id for h in hs] for hs in s.search(q, 5)
    ]
    assert s.missing(["a64", "nope"]) == ["nope"]
