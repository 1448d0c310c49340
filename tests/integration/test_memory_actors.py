"""Memory shards as real Ray actors, snapshotted to a real S3 server (RELIABILITY.md row 3)."""

from __future__ import annotations

import time

import pytest

from sale_ray.memory.config import MemoryConfig
from sale_ray.memory.embed import HashingEmbedder
from sale_ray.memory.entry import MemoryBid, MemoryEntry
from sale_ray.memory.sharded import shard_for
from tests.conftest_s3 import s3_bucket, s3_server, s3_storage  # noqa: F401 - until registered

pytestmark = pytest.mark.integration


def entries(ids):
    return [
        MemoryEntry(
            auction_id=f"a{i}",
            task_id=f"t{i}",
            task_text=f"task {i} about {['graphs', 'strings', 'math'][i % 3]}",
            created_at=float(i),
            winner="big",
            passed=True,
            bids=[
                MemoryBid(agent="small", plan=f"s{i}"),
                MemoryBid(agent="big", plan=f"b{i}", won=True),
            ],
        )
        for i in ids
    ]


def _kill(ray, handle) -> None:
    """Kill a shard actor and wait until its process is gone: the GCS calls it dead a moment
    before the process exits, and until then its direct search line still answers."""
    import os

    pid = ray.get(handle.stats.remote(), timeout=30)["pid"]
    ray.kill(handle, no_restart=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError("shard actor did not die")


def test_kill_shard_between_write_and_snapshot_restores_and_reports(ray_cluster, s3_storage):  # noqa: F811
    ray = ray_cluster
    from sale_ray.memory.remote import start_memory

    cfg = MemoryConfig(shards=2, embedder="hashing")
    mem = start_memory(cfg, s3_storage, embedder=HashingEmbedder())
    assert mem.write(entries(range(40))) == 40
    mem.snapshot()  # files written by the shard actors themselves, then manifest + pointer
    at_snapshot = mem.shard_tables()
    assert mem.write(entries(range(40, 60))) == 20  # not in any snapshot

    # the records really live in the object store, as immutable segments
    refs = ray.get(mem.pool.handles[0].segment_refs.remote())
    assert refs and sum(ray.get(r).num_rows for r in refs) == at_snapshot[0].num_rows + sum(
        1 for i in range(40, 60) if shard_for(f"t{i}", 2) == 0
    )

    victim = shard_for("t41", 2)
    old_pid = ray.get(mem.pool.handles[victim].stats.remote())["pid"]
    _kill(ray, mem.pool.handles[victim])

    hits = mem.search(["task 7 about strings"], k=5)[0]  # recovers the shard, then answers
    assert len(hits) == 5
    (report,) = mem.losses
    lost = sorted(f"a{i}" for i in range(40, 60) if shard_for(f"t{i}", 2) == victim)
    assert report.shard == victim and sorted(report.lost_auction_ids) == lost and lost
    assert report.restored_from == mem.last_snapshot
    assert ray.get(mem.pool.handles[victim].stats.remote())["pid"] != old_pid
    assert mem.shard_tables()[victim].equals(at_snapshot[victim])
    # the survivor kept its post-snapshot writes; a retried write of the lost ones is accepted
    assert mem.stats()["records"] == 60 - len(lost)
    assert mem.write(entries(range(40, 60))) == len(lost)


def test_memory_survives_a_restart_through_s3(ray_cluster, s3_storage):  # noqa: F811
    ray = ray_cluster
    from sale_ray.memory.remote import start_memory

    cfg = MemoryConfig(shards=3, embedder="hashing", snapshot_every_n_writes=30)
    mem = start_memory(cfg, s3_storage, embedder=HashingEmbedder())
    mem.write(entries(range(35)))  # periodic snapshot fires at >= 30 new records
    assert mem.last_snapshot is not None
    query = ["task 4 about strings"]
    before = [h.entry.auction_id for h in mem.search(query)[0]]
    for h in mem.pool.handles:
        ray.kill(h, no_restart=True)

    fresh = start_memory(cfg, s3_storage, embedder=HashingEmbedder())
    assert fresh.last_snapshot == mem.last_snapshot
    assert fresh.stats()["records"] == 35
    assert [h.entry.auction_id for h in fresh.search(query)[0]] == before
    pairs = fresh.contrast(query[0], ["small"], k=4)["small"]
    assert len(pairs) == 4 and all(p.winning_plan.startswith("b") for p in pairs)
    for h in fresh.pool.handles:
        ray.kill(h, no_restart=True)


def test_named_shards_connect_and_restart(ray_cluster, s3_storage):  # noqa: F811
    ray = ray_cluster
    from sale_ray.memory import snapshot as snap
    from sale_ray.memory.remote import connect_memory, start_memory

    cfg = MemoryConfig(shards=2, embedder="hashing", actor_name_prefix="mem-test")
    owner = start_memory(cfg, s3_storage, embedder=HashingEmbedder())
    owner.write(entries(range(12)))
    other = connect_memory(cfg, s3_storage, embedder=HashingEmbedder())  # e.g. `sale-ray snapshot`
    manifest = other.snapshot()
    assert manifest.total_rows == 12
    assert (
        snap.read_manifest(s3_storage.snapshot_uri, s3_storage).snapshot_id == manifest.snapshot_id
    )
    _kill(ray, owner.pool.handles[0])
    assert owner.stats()["records"] == 12  # shard 0 restarted under its name, restored
    assert ray.get_actor("mem-test-0") is not None
    for h in owner.pool.handles:
        ray.kill(h, no_restart=True)


def test_a_search_is_answered_while_a_snapshot_of_the_same_shard_is_being_written(ray_cluster):
    """The snapshot runs off the actor's event loop: here its store blocks until the test has
    had its search answered (if the snapshot ran on the loop, the search would wait forever)."""
    ray = ray_cluster
    import os
    import tempfile

    from sale_ray.memory.remote import start_memory

    gate = os.path.join(tempfile.mkdtemp(), "release")

    class BlockingStore:  # defined here so Ray ships it by value to the actor
        def __init__(self, gate):
            self.gate = gate

        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            while not os.path.exists(self.gate):
                time.sleep(0.01)
            raise RuntimeError("store released")

    mem = start_memory(MemoryConfig(shards=1, embedder="hashing"), embedder=HashingEmbedder())
    mem.write(entries(range(30)))
    shard = mem.pool.handles[0]
    snapshot = shard.snapshot_files.remote(BlockingStore(gate), "sid", 0)
    q = HashingEmbedder().encode(["task 3 about math"])
    hits = ray.get(shard.search_rows.remote(q, 3), timeout=120)
    ready, _ = ray.wait([snapshot], timeout=0)
    assert len(hits[0]) == 3 and not ready  # answered while the snapshot was still blocked
    assert mem.write(entries(range(30, 35))) == 5  # writes go on too
    open(gate, "w").close()
    with pytest.raises(ray.exceptions.RayTaskError, match="store released"):
        ray.get(snapshot, timeout=120)


def test_shard_actors_build_the_index_in_the_background_and_find_new_writes(ray_cluster):
    ray = ray_cluster
    from sale_ray.memory.remote import start_memory

    cfg = MemoryConfig(shards=2, embedder="hashing", index="ivf", index_nprobe=64)
    mem = start_memory(cfg, embedder=HashingEmbedder())
    assert mem.write(entries(range(3000))) == 3000
    stats = ray.get([h.settle.remote() for h in mem.pool.handles])
    assert all(s["index"] == "ivf" for s in stats)
    mem.write(entries([5000]))
    (hit,) = mem.search(["task 5000 about math"], k=1)[0]  # 5000 % 3 == 2: math
    assert hit.entry.auction_id == "a5000"
    exact = mem.search_vectors(HashingEmbedder().encode(["task 7 about strings"]), 8, exact=True)
    approx = mem.search_vectors(HashingEmbedder().encode(["task 7 about strings"]), 8)
    assert exact[0][0].entry.auction_id == approx[0][0].entry.auction_id


def test_the_direct_search_line_answers_what_actor_calls_answer(ray_cluster):
    from sale_ray.memory.remote import start_memory

    mem = start_memory(MemoryConfig(shards=2, embedder="hashing"), embedder=HashingEmbedder())
    assert mem.cfg.search_transport == "direct"  # the default
    mem.write(entries(range(60)))
    texts = ["task 7 about strings", "task 12 about graphs"]
    line, mem.pool.direct = mem.pool.direct, None
    by_calls = mem.search(texts)
    mem.pool.direct = line
    by_line = mem.search(texts)
    assert [[(h.score, h.entry) for h in r] for r in by_line] == [
        [(h.score, h.entry) for h in r] for r in by_calls
    ]
    assert line.searches == 1 and line.fallbacks == 0


def test_a_wrong_key_is_refused_and_the_line_keeps_serving(ray_cluster):
    ray = ray_cluster
    import socket
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    from sale_ray.memory.remote import start_memory

    mem = start_memory(MemoryConfig(shards=1, embedder="hashing"), embedder=HashingEmbedder())
    mem.write(entries(range(10)))
    _, address, key = ray.get(mem.pool.handles[0].search_endpoint.remote())
    assert address[0] == "127.0.0.1"
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        Client(address, authkey=bytes(b ^ 1 for b in key))
    silent = socket.create_connection(address)  # connects, never answers the challenge
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1)
    try:  # a search held up by the silent client fails here instead of hanging the run
        hits = pool.submit(mem.search, ["task 3 about graphs"], 1).result(timeout=60)
    finally:
        pool.shutdown(wait=False)
    assert hits[0][0].entry.auction_id == "a3"
    assert mem.pool.direct.searches == 1  # over the line: the silent client held up nobody
    silent.close()


def test_a_killed_shard_falls_back_to_calls_is_recovered_and_the_line_reconnects(
    ray_cluster,
    s3_storage,  # noqa: F811
):
    ray = ray_cluster
    from sale_ray.memory.remote import start_memory

    cfg = MemoryConfig(shards=2, embedder="hashing")
    mem = start_memory(cfg, s3_storage, embedder=HashingEmbedder())
    mem.write(entries(range(40)))
    mem.snapshot()
    assert mem.search(["task 4 about strings"])  # over the line
    _kill(ray, mem.pool.handles[0])
    hits = mem.search(["task 4 about strings"], k=40)[0]  # line fails -> calls -> recovery
    assert len(hits) == 40 and len(mem.losses) == 1 and mem.losses[0].lost_auction_ids == []
    assert mem.pool.direct.fallbacks == 1
    mem.search(["task 5 about graphs"])
    assert mem.pool.direct.searches == 2  # the line reconnected to the restarted shard


def test_a_restore_through_the_actors_loads_the_persisted_indexes(ray_cluster, s3_storage):  # noqa: F811
    ray = ray_cluster
    from sale_ray.memory.remote import start_memory

    cfg = MemoryConfig(shards=2, embedder="hashing", index="ivf", restore_on_start=False)
    mem = start_memory(cfg, s3_storage, embedder=HashingEmbedder())
    mem.write(entries(range(3000)))
    ray.get([h.settle.remote() for h in mem.pool.handles])
    before = mem.search(["task 7 about strings", "task 2999 about graphs"])
    manifest = mem.snapshot()
    assert sorted(i.shard for i in manifest.indexes) == [0, 1]
    mem.restore()
    stats = mem.stats()["shards"]
    assert [s["index_source"] for s in stats] == ["snapshot", "snapshot"]
    assert sum(s["index_builds"] for s in stats) == 0
    after = mem.search(["task 7 about strings", "task 2999 about graphs"])
    assert [[h.entry.auction_id for h in r] for r in after] == [
        [h.entry.auction_id for h in r] for r in before
    ]
