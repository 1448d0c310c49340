"""Snapshot throughput: ``ShardedMemory.snapshot()`` / restore vs raw ``pyarrow.parquet`` I/O.

    python benchmarks/snapshot_throughput.py --records 100000 --json          # moto S3 on 127.0.0.1
    python benchmarks/snapshot_throughput.py --records 100000 --local /tmp/x --json

The memory holds ``--records`` entries (3 bids with ~300-character plans, a 384-d float32
embedding) over ``--shards`` in-process shards. In the same run and against the same store:

* ``mb_per_s``: a full snapshot (each shard's table form, Parquet + streamed sha256, a HEAD
  check per file, manifest, conditional pointer write), shards written in parallel;
* ``raw_mb_per_s``: a plain ``pyarrow.parquet.ParquetWriter`` with the snapshot writer's own
  options (snappy, dictionary encoding and statistics off for the embedding column and on for
  the rest, 65,536-row row groups: see ``write_shard_file`` in ``sale_ray/memory/snapshot.py``)
  of the same rows cut into the same files as the snapshot (shards over 64 MB span several),
  one writer per file, on as many threads as there are shards (the snapshot writes shards in
  parallel too). What is left between the two is the snapshot's own work: streamed sha256, a
  HEAD check per file, the manifest and the pointer;
* ``restore_mb_per_s``: ``restore_snapshot`` (read, verify checksums, decode, check schema);
  ``raw_restore_mb_per_s``: ``pyarrow.parquet.read_table`` of the raw files (one call).

MB are the in-memory Arrow bytes of the data (the same numerator for every path), so the ratios
are ratios of time. Each figure is the median of ``--repeat`` runs; ``ratio`` and
``restore_ratio`` are medians of per-run ratios (the two paths run back to back each time).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sale_ray.memory import snapshot as snap  # noqa: E402
from sale_ray.memory.config import MemoryConfig, StorageConfig  # noqa: E402
from sale_ray.memory.entry import BID_TYPE, ENTRY_SCHEMA  # noqa: E402
from sale_ray.memory.shard import EMBEDDING  # noqa: E402
from sale_ray.memory.sharded import ShardedMemory  # noqa: E402
from sale_ray.memory.snapshot import ROW_GROUP_SIZE, writer_options  # noqa: E402

DIM = 384
WORDS = (
    "parse input build graph run bfs return distance handle empty edge cases sort dedupe".split()
)


class _NoEmbedder:
    name, dim = "bench", DIM

    def encode(self, texts):
        raise NotImplementedError


def synthetic(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS)
    plans = [" ".join(vocab[rng.integers(0, len(vocab), 50)]) for _ in range(997)]  # ~300 chars
    bids = [
        [
            {"agent": a, "plan": plans[(i * 3 + j) % 997], "refined": False, "won": j == 2}
            for j, a in enumerate(("small", "mid", "big"))
        ]
        for i in range(n)
    ]
    vecs = rng.standard_normal((n, DIM), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    t = pa.table(
        {
            "auction_id": [f"a{i}" for i in range(n)],
            "task_id": [f"t{i}" for i in range(n)],
            "task_text": [plans[i % 997][:120] for i in range(n)],
            "created_at": np.arange(n, dtype=np.float64),
            "winner": ["big"] * n,
            "passed": [bool(i % 2) for i in range(n)],
            "bids": pa.array(bids, type=pa.list_(BID_TYPE)),
        },
        schema=ENTRY_SCHEMA,
    )
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)), DIM)
    return t.append_column(EMBEDDING, emb)


def start_moto() -> tuple[StorageConfig, str, subprocess.Popen]:
    """moto's S3 server in its own process on 127.0.0.1: a server thread inside this process
    would compete for the GIL with the code being measured."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        os.environ.setdefault(k, v)
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    for _ in range(200):
        try:
            client.create_bucket(Bucket="bench")
            break
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    storage = StorageConfig(snapshot_uri="s3://bench/memory", endpoint_url=url, keep_snapshots=1)
    return storage, "bench/raw", proc


# The snapshot writer's own options (one function, imported): the baseline must pay for the
# same encoding work, or the ratio compares encoders rather than snapshots.
COMPRESSION = writer_options(pa.schema([]))["compression"]


def raw_write_file(table: pa.Table, path: str, fs) -> None:
    with pq.ParquetWriter(path, table.schema, filesystem=fs, **writer_options(table.schema)) as w:
        w.write_table(table, row_group_size=ROW_GROUP_SIZE)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--local", metavar="DIR", help="snapshot to this folder instead of moto S3")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args()

    server = None
    if args.local:
        root = os.path.abspath(args.local)
        storage = StorageConfig(snapshot_uri=os.path.join(root, "memory"), keep_snapshots=1)
        raw_dir = os.path.join(root, "raw")
        os.makedirs(raw_dir, exist_ok=True)
    else:
        storage, raw_dir, server = start_moto()
    store = snap.SnapshotStore(storage.snapshot_uri, storage)
    fs = store.fs

    cfg = MemoryConfig(
        shards=args.shards, max_records_per_shard=args.records, restore_on_start=False
    )
    mem = ShardedMemory.local(cfg, storage, embedder=_NoEmbedder())
    mem.write_table(synthetic(args.records))
    tables = mem.shard_tables()  # the same rows, outside the timer
    mb = sum(t.nbytes for t in tables) / 2**20

    snap_s, raw_s, rest_s, raw_rest_s = [], [], [], []
    snap_bytes = raw_bytes = 0
    for r in range(args.repeat):
        manifest = None

        def do_snapshot():
            nonlocal manifest
            manifest = mem.snapshot()

        snap_s.append(timed(do_snapshot))
        snap_bytes = sum(f.bytes for f in manifest.files)
        # raw: the same rows cut into the same files, one writer per file
        pieces, at = [], {}
        for f in manifest.files:
            start = at.get(f.shard, 0)
            pieces.append(
                (f"{raw_dir}/r{r}-{f.shard}-{f.part}.parquet", tables[f.shard].slice(start, f.rows))
            )
            at[f.shard] = start + f.rows

        def raw_write(pieces=pieces):  # as parallel as the snapshot: one thread per shard
            with ThreadPoolExecutor(args.shards) as ex:
                list(ex.map(lambda pt: raw_write_file(pt[1], pt[0], fs), pieces))

        raw_s.append(timed(raw_write))
        paths = [p for p, _ in pieces]
        raw_bytes = sum(fs.get_file_info(p).size for p in paths)
        back: list[pa.Table] = []
        rest_s.append(timed(lambda out=back: out.extend(snap.restore_snapshot(store))))
        assert sum(t.num_rows for t in back) == args.records
        raw_rest_s.append(timed(lambda p=paths: pq.read_table(p, filesystem=fs)))
        del back
        for p in paths:  # moto keeps objects in RAM: leave one copy at a time
            fs.delete_file(p)

    med = statistics.median
    out = {
        "records": args.records,
        "shards": args.shards,
        "target": "local" if args.local else "moto-s3",
        "data_mb": round(mb, 1),
        "mb_per_s": round(mb / med(snap_s), 1),
        "raw_mb_per_s": round(mb / med(raw_s), 1),
        # paired per repeat (raw and snapshot run back to back), robust to load drifting
        "ratio": round(med([r / s for r, s in zip(raw_s, snap_s, strict=True)]), 3),
        "restore_mb_per_s": round(mb / med(rest_s), 1),
        "raw_restore_mb_per_s": round(mb / med(raw_rest_s), 1),
        "restore_ratio": round(med([r / s for r, s in zip(raw_rest_s, rest_s, strict=True)]), 3),
        "snapshot_s": round(med(snap_s), 3),
        "raw_s": round(med(raw_s), 3),
        "snapshot_file_mb": round(snap_bytes / 2**20, 1),
        "raw_file_mb": round(raw_bytes / 2**20, 1),
        "goal_ratio": 0.7,
        "raw_writer": {
            "compression": COMPRESSION,
            "row_group_size": ROW_GROUP_SIZE,
            "embedding_dictionary": False,
            "embedding_statistics": False,
        },
        "repeat": args.repeat,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
    }
    if server is not None:
        server.terminate()
        server.wait(10)
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
