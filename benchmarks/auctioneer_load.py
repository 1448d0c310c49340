"""Load test of the auctioneer on a private local Ray cluster, with scripted agents.

    python benchmarks/auctioneer_load.py --tasks 10000 --json
    python benchmarks/auctioneer_load.py --tasks 2000 --latency-ms 50 500 \\
        --concurrency 50 200 800 --json

Zero-latency mode (the default) measures the orchestration ceiling: N tasks submitted at once
through a pool of scripted agents, against Ray's raw one-call-at-a-time actor rate measured in
the same run. An auctioneer making one Ray call per agent call is capped near
``raw_calls_per_s / calls_per_auction``; the goal is >= 2x that. ``--unbatched N`` also runs N
tasks through the same auctioneer with batching off, to measure that cap directly.

Latency mode gives every agent call a deterministic uniform [lo, hi] ms delay and runs the
tasks once per ``--concurrency`` value (auctions in flight): throughput should grow with
concurrency, not with the number of tasks.

Printed with ``--json``: one JSON object (the last line of stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time

from sale_ray.agents.scripted import _unit
from sale_ray.batch import drive
from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    AuctioneerConfig,
    PoolSpec,
    SaleConfig,
    ScriptedSpec,
)
from sale_ray.memory.config import MemoryConfig
from sale_ray.runtime import connect, start_agents, start_auctioneer
from sale_ray.types import Task

PRICES = [0.05, 0.09, 0.16, 0.36]


# --- memory of every Ray process we started (the driver and its descendants) ---------------------
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_rss_mib(root: int) -> float:
    kids, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(x.split()[1]) for x in f if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


class PeakRSS(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self._halt = 0.0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, tree_rss_mib(os.getpid()))
            self._halt.wait(0.25)

    def stop(self) -> float:
        self._halt.set()
        self.join()
        return self.peak


# --- the run ------------------------------------------------------------------------------------
def make_config(n_agents: int, latency: tuple[float, float], in_flight: int) -> SaleConfig:
    agents = [
        AgentSpec(
            name=f"s{i}",
            backend="scripted",
            model="scripted",
            price_in_per_mtok=PRICES[i % 4],
            price_out_per_mtok=PRICES[i % 4],
            max_concurrency=1024,
            scripted=ScriptedSpec(latency_ms=latency, seed=i),
        )
        for i in range(n_agents)
    ]
    # memory off: this measures orchestration (the memory has its own benchmark)
    return SaleConfig(
        pool=PoolSpec(agents=agents),
        memory=MemoryConfig(enabled=False),
        auction=AuctionConfig(bid_timeout_s=120, jury_timeout_s=120, execute_timeout_s=120),
        auctioneer=AuctioneerConfig(
            max_in_flight=in_flight, max_queued=1_000_000, max_batch=512, batches_in_flight=4
        ),
    )


def tasks(n: int, tag: str) -> list[Task]:
    return [
        Task(id=f"{tag}-{i}", prompt=f"load test task {i}", kind="answer", expected="x")
        for i in range(n)
    ]


def raw_rate(actor, seconds: float) -> float:
    """Ray's one-call-at-a-time actor rate: synchronous round trips of one scripted bid."""
    import ray

    t = tasks(1, "raw")[0]
    ray.get(actor.bid.remote(t))
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ray.get(actor.bid.remote(t))
        n += 1
    return n / (time.perf_counter() - t0)


def simulated_path_ms(cfg: SaleConfig, rec) -> float:
    """The scripted latency on an auction's critical path: slowest bid + slowest juror + the
    winner's execution (what the agents cost; the rest is what orchestration added)."""
    lat = {}
    for a in cfg.pool.agents:
        lo, hi = a.scripted.latency_ms
        lat[a.name] = lambda tid, m, a=a, lo=lo, hi=hi: (
            lo + (hi - lo) * _unit(a.scripted.seed, a.name, tid, m)
        )
    names = list(lat)
    path = max(lat[n](rec.task_id, "bid") for n in names)
    if rec.verdicts:
        path += max(lat[n](rec.task_id, "judge") for n in names)
    if rec.winner:
        path += lat[rec.winner](rec.task_id, "execute")
    return path


async def run_once(cfg: SaleConfig, pool, batch: list[Task], *, batched: bool = True) -> dict:
    import ray

    auc = start_auctioneer(cfg, pool, batched=batched)
    await auc.ping.remote()
    got: dict[str, object] = {}
    dupes = 0

    def on_group(g: dict) -> bool:
        nonlocal dupes
        for r in g["records"]:
            dupes += r.task_id in got
            got[r.task_id] = r
        return True

    t0 = time.perf_counter()
    await drive(
        auc,
        [batch[i : i + 1000] for i in range(0, len(batch), 1000)],
        on_group,
        streams_in_flight=len(batch) // 1000 + 1,
    )
    wall = time.perf_counter() - t0
    timings = await auc.take_timings.remote()
    stats = await auc.stats.remote()
    ray.kill(auc)
    added = sorted(
        run_s * 1e3 - simulated_path_ms(cfg, got[tid]) for tid, _, run_s in timings if tid in got
    )
    pick = (
        (lambda q: round(added[min(len(added) - 1, int(q * len(added)))], 2))
        if added
        else (lambda q: None)
    )
    return {
        "tasks": len(batch),
        "wall_s": round(wall, 3),
        "auctions_per_s": round(len(got) / wall, 1),
        "p50_added_ms": pick(0.5),
        "p99_added_ms": pick(0.99),
        "lost": len(batch) - len(got),
        "duplicate_records": dupes,
        "winners": sum(1 for r in got.values() if r.winner),
        "mean_batch": {n: round(b["mean_batch"], 1) for n, b in stats["batching"].items()},
    }


async def main(args: argparse.Namespace) -> dict:
    import ray

    latency = tuple(args.latency_ms)
    cfg = make_config(args.agents, latency, args.concurrency[0])
    pool = await start_agents(cfg)
    raw = raw_rate(next(iter(pool.actors.values())), args.raw_seconds)
    calls_per_auction = 2 * args.agents + 1  # a bid and a verdict per agent, one execution
    out: dict = {
        "tasks": args.tasks,
        "agents": args.agents,
        "latency_ms": list(latency),
        "raw_calls_per_s": round(raw, 1),
        "calls_per_auction": calls_per_auction,
        "unbatched_ceiling": round(raw / calls_per_auction, 1),
    }
    rss = PeakRSS()
    rss.start()
    runs = []
    for c in args.concurrency:
        run_cfg = make_config(args.agents, latency, c)
        r = await run_once(run_cfg, pool, tasks(args.tasks, f"c{c}"))
        runs.append({"concurrency": c, **r})
    if args.unbatched:
        u = await run_once(
            make_config(args.agents, latency, args.concurrency[-1]),
            pool,
            tasks(args.unbatched, "unbatched"),
            batched=False,
        )
        out["unbatched_measured"] = {
            "tasks": args.unbatched,
            **{k: u[k] for k in ("auctions_per_s", "p50_added_ms", "p99_added_ms", "lost")},
        }
    execs = await asyncio.gather(*(a.executions.remote() for a in pool.actors.values()))
    out["peak_rss_mib"] = round(rss.stop(), 1)
    per_task: dict[str, int] = {}
    for e in execs:
        for tid, n in e.items():
            per_task[tid] = per_task.get(tid, 0) + n
    best = max(runs, key=lambda r: r["auctions_per_s"])
    out.update(
        {
            k: best[k]
            for k in ("auctions_per_s", "p50_added_ms", "p99_added_ms", "wall_s", "mean_batch")
        }
    )
    out["speedup_vs_ceiling"] = round(best["auctions_per_s"] / out["unbatched_ceiling"], 2)
    out["lost"] = sum(r["lost"] for r in runs)
    out["double_awards"] = sum(r["duplicate_records"] for r in runs) + sum(
        1 for n in per_task.values() if n > 1
    )
    if len(runs) > 1:
        out["scaling"] = [
            {
                k: r[k]
                for k in ("concurrency", "auctions_per_s", "p50_added_ms", "p99_added_ms", "wall_s")
            }
            for r in runs
        ]
    await pool.stop()
    ray.shutdown()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--latency-ms", type=float, nargs=2, default=[0.0, 0.0], metavar=("LO", "HI"))
    ap.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[2000],
        help="auctions in flight; several values = a scaling sweep",
    )
    ap.add_argument("--unbatched", type=int, default=0, help="also run N tasks unbatched")
    ap.add_argument("--raw-seconds", type=float, default=3.0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    connect(num_cpus=2)
    result = asyncio.run(main(a))
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>20}: {v}")
    sys.exit(0 if result["lost"] == 0 and result["double_awards"] == 0 else 1)
