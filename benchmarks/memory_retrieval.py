"""Retrieval latency: top-k through N shard actors vs one in-process numpy brute-force search.

    python benchmarks/memory_retrieval.py --records 1000000 --json

Records carry random unit vectors (no need to embed a million texts); queries are single
384-d vectors, sent one at a time, as one auction does. The measured path is
``ShardedMemory.search_vectors`` over ``--shards`` Ray actors on a local cluster (fan-out, shard
scan + argpartition, entry materialisation, merge). The baseline, in the same run, is
``argpartition(M @ q)`` over the same matrix in this process. Both are exact, so the top-k ids
must agree (``exact_match``). ``batched_per_query_ms`` is the per-query cost when 32 queries
share one fan-out (what a busy auctioneer can do).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sale_ray.memory.config import MemoryConfig  # noqa: E402
from sale_ray.memory.entry import BID_TYPE, ENTRY_SCHEMA  # noqa: E402
from sale_ray.memory.shard import EMBEDDING  # noqa: E402
from sale_ray.memory.sharded import shard_for  # noqa: E402

DIM = 384


class _NoEmbedder:
    name, dim = "none", DIM

    def encode(self, texts):  # the benchmark sends vectors
        raise NotImplementedError


def synthetic(n: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """n entries (small plans) and their random unit vectors."""
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n, DIM), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [f"a{i}" for i in range(n)]
    bids = pa.array(
        [[{"agent": "big", "plan": "plan", "refined": False, "won": True}]] * n,
        type=pa.list_(BID_TYPE),
    )
    table = pa.table(
        {
            "auction_id": ids,
            "task_id": [f"t{i}" for i in range(n)],
            "task_text": pa.array(["task"] * n),
            "created_at": np.arange(n, dtype=np.float64),
            "winner": pa.array(["big"] * n),
            "passed": pa.array([True] * n),
            "bids": bids,
        },
        schema=ENTRY_SCHEMA,
    )
    return table, vecs


def pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(np.array(xs) * 1e3, p)), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args()
    n, k = args.records, args.k

    import ray

    from sale_ray.memory.remote import start_memory

    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=max(300 * 1024**2, min(4 * 1024**3, n * 2500)),
    )
    ray_init_s = time.perf_counter() - t0

    table, vecs = synthetic(n)
    cfg = MemoryConfig(shards=args.shards, k=k, max_records_per_shard=n, restore_on_start=False)
    mem = start_memory(cfg, embedder=_NoEmbedder())
    t0 = time.perf_counter()
    route = np.array([shard_for(t, args.shards) for t in table.column("task_id").to_pylist()])
    for s in range(args.shards):
        rows = np.flatnonzero(route == s)
        for c in range(0, len(rows), 50_000):  # bounded objects per call
            part = rows[c : c + 50_000]
            emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs[part].reshape(-1)), DIM)
            mem.pool.result(
                s, mem.pool.submit(s, "write_table", table.take(part).append_column(EMBEDDING, emb))
            )
    load_s = time.perf_counter() - t0
    del table

    rng = np.random.default_rng(1)
    queries = rng.standard_normal((args.queries, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for q in queries[:10]:  # warm up workers, BLAS threads, allocator
        mem.search_vectors(q, k)

    lat, got = [], []
    for q in queries:
        t = time.perf_counter()
        hits = mem.search_vectors(q, k)[0]
        lat.append(time.perf_counter() - t)
        got.append([int(h.entry.auction_id[1:]) for h in hits])

    base, want = [], []
    for q in queries:
        t = time.perf_counter()
        sims = vecs @ q
        top = np.argpartition(sims, n - k)[n - k :]
        top = top[np.argsort(-sims[top])]
        base.append(time.perf_counter() - t)
        want.append(top.tolist())

    batch = 32
    t = time.perf_counter()
    for s in range(0, args.queries, batch):
        mem.search_vectors(queries[s : s + batch], k)
    batched = (time.perf_counter() - t) / args.queries

    out = {
        "records": n,
        "shards": args.shards,
        "k": k,
        "queries": args.queries,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "baseline_p50_ms": pct(base, 50),
        "baseline_p99_ms": pct(base, 99),
        "batched_per_query_ms": round(batched * 1e3, 3),
        "exact_match": got == want,
        "goal_p99_ms": 25.0,
        "load_s": round(load_s, 2),
        "ray_init_s": round(ray_init_s, 2),
        "matrix_mb": round(n * DIM * 4 / 2**20, 1),
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    ray.shutdown()
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
