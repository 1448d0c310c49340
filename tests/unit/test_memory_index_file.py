"""The index in a snapshot: written beside the data, loaded back instead of rebuilt, frozen
while it is written (rows written meanwhile are still found), and a bad file only costs a
rebuild - never the restore, never a wrong answer."""

import json
import logging

import numpy as np
import pytest

from sale_ray.memory import pool as shard_ops
from sale_ray.memory import snapshot as snap
from sale_ray.memory.index import IndexPolicy
from sale_ray.memory.shard import MemoryShard
from sale_ray.memory.store import SnapshotError, as_store
from tests.unit.test_memory_index import DIM, clustered, entries, ids, ivf_shard


def snapshot_of(shard, uri, sid="0000000000001-aaaaaaaa"):
    """One shard's files committed as a snapshot (what ShardedMemory.snapshot does per shard)."""
    store = as_store(str(uri))
    files = shard_ops.write_file(shard, store, sid, 0)
    return store, snap.commit(store, sid, files, dim=DIM, embedder=None, expected_pointer=None)


def restored_like(shard, store, manifest):
    fresh = MemoryShard(DIM, max_records=shard.max_records, index=shard.policy)
    shard_ops.restore_file(fresh, store, manifest, 0)
    return fresh


def test_a_snapshot_carries_the_index_and_a_restore_loads_it_instead_of_building(tmp_path):
    shard = ivf_shard()
    shard.write(entries(0, 3000), clustered(3000))
    store, manifest = snapshot_of(shard, tmp_path)
    (info,) = manifest.indexes
    assert info.rows == 3000 and info.path.startswith(f"data/{manifest.snapshot_id}/")
    back = restored_like(shard, store, manifest)
    assert back.stats()["index_source"] == "snapshot"
    assert back.stats()["index_loads"] == 1 and back.stats()["index_builds"] == 0
    for q in clustered(20, seed=3):
        assert ids(back, q) == ids(shard, q)  # same candidates, same exact scores


def test_labels_survive_evictions_across_a_persisted_index(tmp_path):
    shard = ivf_shard(max_records=2000)
    shard.write(entries(0, 1500), clustered(1500))
    shard.write(entries(1500, 1500), clustered(1500, seed=2))  # evicts the oldest
    assert shard.stats()["evicted"] > 0
    store, manifest = snapshot_of(shard, tmp_path)
    assert manifest.indexes[0].first_label == shard.stats()["evicted"]
    back = restored_like(shard, store, manifest)
    assert back.stats()["index_source"] == "snapshot"
    for q in clustered(20, seed=4):
        assert ids(back, q) == ids(shard, q)
    back.write(entries(9000, 1), clustered(1, seed=9))  # new rows get new labels after those
    assert ids(back, clustered(1, seed=9)[0], k=1) == ["a9000"]


def test_rows_written_while_the_index_is_frozen_are_found_and_then_indexed():
    shard = ivf_shard()
    shard.write(entries(0, 2000), clustered(2000))
    frozen, first = shard.freeze_index()
    before = frozen.ntotal
    new = clustered(5, seed=11)
    shard.write(entries(5000, 5), new)
    assert frozen.ntotal == before  # left alone while a snapshot serialises it
    assert ids(shard, new[2], k=1) == ["a5002"]  # searched exactly meanwhile
    shard.thaw_index()
    assert shard.index.ntotal == before + 5
    assert ids(shard, new[2], k=1) == ["a5002"]


def test_a_second_freeze_while_one_is_in_flight_persists_nothing():
    shard = ivf_shard()
    shard.write(entries(0, 2000), clustered(2000))
    assert shard.freeze_index() is not None
    assert shard.freeze_index() is None
    shard.thaw_index()
    assert shard.freeze_index() is not None


def test_a_corrupt_index_file_is_reported_and_rebuilt_not_fatal(tmp_path, caplog):
    shard = ivf_shard()
    shard.write(entries(0, 3000), clustered(3000))
    store, manifest = snapshot_of(shard, tmp_path)
    path = tmp_path / manifest.indexes[0].path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="sale_ray.memory.pool"):
        back = restored_like(shard, store, manifest)
    assert "checksum mismatch" in caplog.text and manifest.indexes[0].path in caplog.text
    assert back.stats()["index_source"] == "built" and len(back) == 3000
    for q in clustered(10, seed=5):
        assert ids(back, q, exact=True) == ids(shard, q, exact=True)


def test_an_index_holding_other_rows_than_the_data_is_refused(tmp_path):
    from sale_ray.memory.index_file import read_index_file

    shard = ivf_shard()
    shard.write(entries(0, 3000), clustered(3000))
    store, manifest = snapshot_of(shard, tmp_path)
    with pytest.raises(SnapshotError, match="holds 3000 rows, the shard's data has 2999"):
        read_index_file(store, manifest, 0, rows=2999, dim=DIM, nprobe=8)
    index, first = read_index_file(store, manifest, 0, rows=3000, dim=DIM, nprobe=8)
    assert index.ntotal == 3000 and first == 0
    assert np.array_equal(
        index.candidates(clustered(2), 8), shard.index.candidates(clustered(2), 8)
    )


def test_without_index_persist_snapshots_carry_no_index_and_restores_build(tmp_path):
    shard = MemoryShard(DIM, max_records=10_000, index=IndexPolicy("ivf", persist=False))
    shard.write(entries(0, 3000), clustered(3000))
    store, manifest = snapshot_of(shard, tmp_path)
    assert manifest.indexes == []
    assert restored_like(shard, store, manifest).stats()["index_source"] == "built"


def test_an_exact_memory_ignores_a_persisted_index(tmp_path):
    shard = ivf_shard()
    shard.write(entries(0, 3000), clustered(3000))
    store, manifest = snapshot_of(shard, tmp_path)
    exact = MemoryShard(DIM, max_records=10_000, index=IndexPolicy("exact"))
    shard_ops.restore_file(exact, store, manifest, 0)
    assert exact.index is None and len(exact) == 3000


def test_a_manifest_whose_index_path_leaves_the_snapshot_is_refused(tmp_path):
    shard = ivf_shard()
    shard.write(entries(0, 3000), clustered(3000))
    store, manifest = snapshot_of(shard, tmp_path)
    body = json.loads(manifest.model_dump_json())
    body["indexes"][0]["path"] = "data/other/index-00000.faiss"
    with pytest.raises(ValueError, match="not confined"):
        snap.Manifest.model_validate(body)
    body["indexes"] = [manifest.indexes[0].model_dump()] * 2
    with pytest.raises(ValueError, match="more than one index file"):
        snap.Manifest.model_validate(body)
