"""Ray Data's batch door against today's batch path, on the same scripted tasks, in one run.

    .venv/bin/python benchmarks/ray_data_batch.py --tasks 200

Both paths read the same ``--tasks``-row JSONL file (same ids, same prompts), start the same
scripted pool (``cluster/pools/scripted.yaml``, memory off, ``--latency-ms`` per call) and
write the same log layout (``auctions.parquet`` + ``summary.json``), timed end to end:

* ``batch_auctions_per_s``: :func:`sale_ray.batch.run_batch` (the driver streams chunks into
  the auctioneer actor and a ResultSink);
* ``data_auctions_per_s``: :mod:`sale_ray.data` (``read_tasks`` -> ``auction`` with
  ``--concurrency`` Ray Data actors x ``--batch-size`` tasks -> ``write_auctions``);
* ``data_over_batch``: their ratio; ``same_winners``: every task's winner equal in both logs.

Each path is warmed once on 20 other tasks first (worker processes, imports), then timed.
Prints one JSON object (one line).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow.parquet as pq  # noqa: E402

from sale_ray.batch import run_batch  # noqa: E402
from sale_ray.config import load_config  # noqa: E402
from sale_ray.data import AuctionSession, auction, read_tasks, write_auctions  # noqa: E402
from sale_ray.runtime import connect  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def write_tasks(path: Path, n: int, prefix: str) -> None:
    with open(path, "w") as f:
        for i in range(n):
            row = {"id": f"{prefix}{i:06d}", "prompt": f"task {i}", "kind": "answer"}
            f.write(json.dumps(dict(row, expected="x", bin=i % 5)) + "\n")


def winners(path: str) -> dict[str, str | None]:
    t = pq.read_table(path, columns=["task_id", "winner"])
    return dict(zip(*(t.column(c).to_pylist() for c in ("task_id", "winner")), strict=True))


def via_batch(src: Path, out: Path, config) -> str:
    return asyncio.run(run_batch(str(src), str(out), config, progress=False)).path


def via_data(src: Path, out: Path, config, concurrency: int, batch_size: int) -> str:
    with AuctionSession(config) as s:
        records = auction(read_tasks(str(src)), s, concurrency=concurrency, batch_size=batch_size)
        return write_auctions(records, str(out)).path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--latency-ms", type=float, default=0.0, help="scripted latency per call")
    p.add_argument("--concurrency", type=int, default=4, help="Ray Data actors")
    p.add_argument("--batch-size", type=int, default=64, help="tasks per Ray Data batch")
    p.add_argument("--config", default=str(ROOT / "cluster/pools/scripted.yaml"))
    a = p.parse_args()

    config = load_config(a.config)
    agents = [
        s.model_copy(
            update={"scripted": s.scripted.model_copy(update={"latency_ms": (a.latency_ms,) * 2})}
        )
        for s in config.pool.agents
    ]
    config = config.model_copy(update={"pool": config.pool.model_copy(update={"agents": agents})})
    connect()
    d = Path(tempfile.mkdtemp(prefix="sale-ray-data-bench-"))
    write_tasks(d / "warm.jsonl", 20, "w")
    write_tasks(d / "tasks.jsonl", a.tasks, "t")
    via_batch(d / "warm.jsonl", d / "warm-batch", config)
    via_data(d / "warm.jsonl", d / "warm-data", config, a.concurrency, a.batch_size)

    t0 = time.perf_counter()
    batch_log = via_batch(d / "tasks.jsonl", d / "batch", config)
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data_log = via_data(d / "tasks.jsonl", d / "data", config, a.concurrency, a.batch_size)
    data_s = time.perf_counter() - t0

    wb, wd = winners(batch_log), winners(data_log)
    out = {
        "tasks": a.tasks,
        "latency_ms": a.latency_ms,
        "concurrency": a.concurrency,
        "batch_size": a.batch_size,
        "batch_s": round(batch_s, 3),
        "data_s": round(data_s, 3),
        "batch_auctions_per_s": round(a.tasks / batch_s, 2),
        "data_auctions_per_s": round(a.tasks / data_s, 2),
        "data_over_batch": round(batch_s / data_s, 3),
        "same_winners": wb == wd and len(wb) == a.tasks,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
