"""Load test of the auctioneer with scripted agents: batched vs unbatched vs no Ray at all.

    python benchmarks/auctioneer_load.py --tasks 2000 --json
    python benchmarks/auctioneer_load.py --tasks 2000 --no-memory --json

Throughput (zero-latency scripted agents, the same ``--tasks`` tasks — same ids, same prompts —
submitted at once to each of three runs, in the same process and the same run, with BLAS
threads as in a Ray worker, ``OMP_NUM_THREADS=1``):

* ``auctions_per_s``: the batched auctioneer actor (the product), over 4 agent actors;
* ``unbatched_auctions_per_s``: the same auctioneer actor with batching off (one Ray call per
  agent call), over the same agent actors;
* ``inprocess_auctions_per_s``: the same :class:`~sale_ray.auctioneer.Auctioneer` and protocol
  over the same scripted agents as plain objects in this process, no Ray (what the auctioneer
  could reach if Ray cost nothing). The goal is ``batched_over_inprocess >= 0.5``.

The memory is **on** (the product default: ``MemoryConfig()``, 4 shards, all-MiniLM-L6-v2): in
the Ray runs it is the auctioneer's shard actors, in-process the same shards as plain objects.
Each run starts with an empty memory and is warmed by one auction (loads the embedder).

Added latency (``added_latency_p50_ms``): scripted agents with a uniform ``--latency-ms``
delay per call, the batched auctioneer, ``--in-flight`` auctions at a time (1, 10, 100). Per
auction: its time inside the auctioneer (queueing for a slot excluded) minus the scripted
latency on its critical path (slowest bid + slowest juror per jury round + slowest refinement +
the winner's execution) — what a single user waits on top of the models.

Memory: ``peak_rss_mib`` / ``peak_pss_mib`` of this process and every process it started (the
Ray head, workers, actors), sampled every 0.5 s; PSS from ``/proc/<pid>/smaps_rollup`` counts a
shared page once. ``lost``: tasks without a record; ``double_awards``: a task executed twice or
with two records. Printed with ``--json``: one JSON object (the last line of stdout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time

# Like with like: Ray runs every worker, the auctioneer actor included, with OMP_NUM_THREADS=1;
# the in-process run embeds in this process, from several threads at once, and with OpenBLAS's
# default of one thread per core it oversubscribes the cores (measured here on a loaded 2-core
# box: 1-2 auctions/s instead of 30-50 with the memory on). Set before numpy is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sale_ray.agents.scripted import ScriptedAgent, _unit  # noqa: E402
from sale_ray.auctioneer import Auctioneer  # noqa: E402
from sale_ray.batch import drive, make_evaluator  # noqa: E402
from sale_ray.config import (  # noqa: E402
    AgentSpec,
    AuctionConfig,
    AuctioneerConfig,
    PoolSpec,
    SaleConfig,
    ScriptedSpec,
)
from sale_ray.memory.config import MemoryConfig  # noqa: E402
from sale_ray.runtime import connect, start_agents, start_auctioneer  # noqa: E402
from sale_ray.types import AuctionRecord, Task  # noqa: E402

PRICES = [0.05, 0.09, 0.16, 0.36]


# --- memory of every process we started (this driver and its descendants) ------------------------
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


def _tree(root: int) -> list[int]:
    kids, todo, out = _children(), [root], []
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def _field_kib(path: str, name: str) -> int:
    try:
        with open(path) as f:
            return next(int(x.split()[1]) for x in f if x.startswith(name))
    except (OSError, StopIteration, ValueError):
        return 0  # the process ended between listing and reading


def tree_memory_mib(root: int) -> tuple[float, float]:
    """(RSS, PSS) of ``root`` and all its descendants, MiB."""
    pids = _tree(root)
    rss = sum(_field_kib(f"/proc/{p}/status", "VmRSS:") for p in pids)
    pss = sum(_field_kib(f"/proc/{p}/smaps_rollup", "Pss:") for p in pids)
    return rss / 1024, pss / 1024


class PeakMemory(threading.Thread):
    def __init__(self, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.rss = self.pss = 0.0
        self.every_s = every_s
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss, pss = tree_memory_mib(os.getpid())
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            self._halt.wait(self.every_s)

    def stop(self) -> tuple[float, float]:
        self._halt.set()
        self.join()
        return self.rss, self.pss


# --- configuration and tasks ----------------------------------------------------------------------
def make_config(
    n_agents: int, latency: tuple[float, float], in_flight: int, memory: bool
) -> SaleConfig:
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
    return SaleConfig(
        pool=PoolSpec(agents=agents),
        memory=MemoryConfig(enabled=memory),  # the product default, or off (--no-memory)
        auction=AuctionConfig(bid_timeout_s=120, jury_timeout_s=120, execute_timeout_s=120),
        auctioneer=AuctioneerConfig(
            max_in_flight=in_flight, max_queued=1_000_000, max_batch=512, batches_in_flight=4
        ),
    )


def make_tasks(n: int, tag: str) -> list[Task]:
    return [
        Task(id=f"{tag}-{i}", prompt=f"load test task {i}", kind="answer", expected="x")
        for i in range(n)
    ]


def critical_path_ms(cfg: SaleConfig, rec: AuctionRecord) -> float:
    """The scripted latency on an auction's critical path (what the agents cost; the rest is
    what orchestration added): slowest bid, slowest juror per jury round, slowest refinement
    (a scripted refine sleeps for 'refine' and then for 'bid'), the winner's execution."""
    specs = {a.name: a for a in cfg.pool.agents}

    def lat(name: str, method: str) -> float:
        s = specs[name].scripted
        lo, hi = s.latency_ms
        return lo + (hi - lo) * _unit(s.seed, name, rec.task_id, method)

    names = list(specs)
    path = max(lat(n, "bid") for n in names)
    rounds = len(rec.verdicts) // len(names)  # the first jury, and the refinement's jury
    path += rounds * max(lat(n, "judge") for n in names)
    refined = {s.bid.agent for s in rec.bids if s.bid.refined}
    if refined:
        path += max(lat(n, "refine") + lat(n, "bid") for n in refined)
    if rec.winner:
        path += lat(rec.winner, "execute")
    return path


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 2)


# --- one run ---------------------------------------------------------------------------------------
class Run:
    """One auctioneer (Ray batched, Ray unbatched, or in-process) and what it produced."""

    def __init__(self) -> None:
        self.got: dict[str, AuctionRecord] = {}
        self.dupes = 0

    def on_group(self, g: dict) -> bool:
        for r in g["records"]:
            self.dupes += r.task_id in self.got
            self.got[r.task_id] = r
        return True


def _executions_delta(before: list[dict], after: list[dict]) -> dict[str, int]:
    per_task: dict[str, int] = {}
    for b, a in zip(before, after, strict=True):
        for tid, n in a.items():
            d = n - b.get(tid, 0)
            if d:
                per_task[tid] = per_task.get(tid, 0) + d
    return per_task


def _result(cfg: SaleConfig, run: Run, batch: list[Task], wall: float, timings, execs) -> dict:
    ids = {t.id for t in batch}
    added = [
        run_s * 1e3 - critical_path_ms(cfg, run.got[tid])
        for tid, _, run_s in timings
        if tid in ids and tid in run.got
    ]
    got = [r for tid, r in run.got.items() if tid in ids]
    return {
        "tasks": len(batch),
        "wall_s": round(wall, 3),
        "auctions_per_s": round(len(got) / wall, 1),
        "p50_added_ms": _pct(added, 0.5),
        "p99_added_ms": _pct(added, 0.99),
        "lost": len(ids - run.got.keys()),
        "double_awards": run.dupes + sum(1 for t, n in execs.items() if n > 1 and t in ids),
        "winners": sum(1 for r in got if r.winner),
        "refined_winners": sum(
            1 for r in got if any(s.bid.refined and s.bid.agent == r.winner for s in r.bids)
        ),
        "errors": sum(1 for r in got if r.error),
    }


async def run_ray(cfg: SaleConfig, pool, batch: list[Task], *, batched: bool) -> dict:
    import ray

    auc = start_auctioneer(cfg, pool, batched=batched)
    warm = make_tasks(1, "warm-" + batch[0].id)[0]
    await auc.submit.remote(warm)  # starts the memory shards, loads the embedder
    await auc.take_timings.remote()
    actors = list(pool.actors.values())
    before = await asyncio.gather(*(a.executions.remote() for a in actors))
    run = Run()
    t0 = time.perf_counter()
    await drive(
        auc,
        [batch[i : i + 1000] for i in range(0, len(batch), 1000)],
        run.on_group,
        streams_in_flight=len(batch) // 1000 + 1,
    )
    wall = time.perf_counter() - t0
    timings = await auc.take_timings.remote()
    stats = await auc.stats.remote()
    after = await asyncio.gather(*(a.executions.remote() for a in actors))
    ray.kill(auc)  # its memory shards die with it (owned actors)
    out = _result(cfg, run, batch, wall, timings, _executions_delta(before, after))
    if batched:
        out["mean_batch"] = {n: round(b["mean_batch"], 1) for n, b in stats["batching"].items()}
    out["memory_write_failed"] = stats["memory_write_failed"]
    return out


async def run_inprocess(cfg: SaleConfig, batch: list[Task]) -> dict:
    """The same Auctioneer, protocol, gates, evaluator and memory, with no Ray in between."""
    from sale_ray.memory.sharded import ShardedMemory

    agents = {a.name: ScriptedAgent(a, cfg) for a in cfg.pool.agents}
    infos = [await a.start() for a in agents.values()]
    prices = {i["name"]: (i["price_in"], i["price_out"]) for i in infos}
    memory = ShardedMemory.local(cfg.memory, cfg.storage) if cfg.memory.enabled else None
    core = Auctioneer(agents, prices, cfg, evaluate=make_evaluator(cfg), memory=memory)
    await core.submit(make_tasks(1, "warm-" + batch[0].id)[0])
    core.take_timings()
    before = [a.executions() for a in agents.values()]
    run = Run()
    t0 = time.perf_counter()
    async for g in core.stream(batch):
        run.on_group(g)
    wall = time.perf_counter() - t0
    after = [a.executions() for a in agents.values()]
    out = _result(cfg, run, batch, wall, core.take_timings(), _executions_delta(before, after))
    out["memory_write_failed"] = core.counts["memory_write_failed"]
    return out


# --- the benchmark ---------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> dict:
    memory = not args.no_memory
    zero = (0.0, 0.0)
    cfg = make_config(args.agents, zero, args.throughput_in_flight, memory)
    pool = await start_agents(cfg)
    peak = PeakMemory()
    peak.start()
    batch = make_tasks(args.tasks, "load")

    # throughput: the three runs on the same tasks, in turn; with --repeat, in rotating order
    # (so load that drifts during the run hits each alike), and the median of each
    runs: dict[str, list[dict]] = {"batched": [], "unbatched": [], "inprocess": []}
    order = list(runs)
    for r in range(args.repeat):
        for mode in order[r % 3 :] + order[: r % 3]:
            if mode == "inprocess":
                res = await run_inprocess(cfg, batch)
            else:
                res = await run_ray(cfg, pool, batch, batched=mode == "batched")
            res["loadavg_1m"] = round(os.getloadavg()[0], 2)
            runs[mode].append(res)

    def med(mode: str) -> float:
        return round(statistics.median(x["auctions_per_s"] for x in runs[mode]), 1)

    out: dict = {
        "tasks": args.tasks,
        "agents": args.agents,
        "memory": memory,
        "embedder": cfg.memory.embedder if memory else None,
        "throughput_in_flight": args.throughput_in_flight,
        "repeat": args.repeat,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "auctions_per_s": med("batched"),
        "unbatched_auctions_per_s": med("unbatched"),
        "inprocess_auctions_per_s": med("inprocess"),
    }
    out["batched_over_unbatched"] = round(
        out["auctions_per_s"] / out["unbatched_auctions_per_s"], 3
    )
    out["batched_over_inprocess"] = round(
        out["auctions_per_s"] / out["inprocess_auctions_per_s"], 3
    )
    out["goal_batched_over_inprocess"] = 0.5
    out["runs"] = runs

    # added latency at 1, 10, 100 in flight: agents that take --latency-ms per call (their own
    # actors: an agent's latency is part of its spec), the batched auctioneer, and in-process
    await pool.stop()
    latency = tuple(args.latency_ms)
    pool = await start_agents(make_config(args.agents, latency, 1, memory))
    added: dict[str, float | None] = {}
    added_p99: dict[str, float | None] = {}
    added_inproc: dict[str, float | None] = {}
    lat_runs = []
    for c in args.in_flight:
        lcfg = make_config(args.agents, latency, c, memory)
        lbatch = make_tasks(max(args.latency_tasks_min, args.latency_tasks_per_slot * c), f"lat{c}")
        res = await run_ray(lcfg, pool, lbatch, batched=True)
        added[str(c)], added_p99[str(c)] = res["p50_added_ms"], res["p99_added_ms"]
        inproc = await run_inprocess(lcfg, lbatch)
        added_inproc[str(c)] = inproc["p50_added_ms"]
        lat_runs += [{"in_flight": c, "mode": "batched", **res}]
        lat_runs += [{"in_flight": c, "mode": "inprocess", **inproc}]
    out["latency_ms"] = list(latency)
    out["added_latency_p50_ms"] = added
    out["added_latency_p99_ms"] = added_p99
    out["inprocess_added_latency_p50_ms"] = added_inproc
    out["latency_runs"] = lat_runs

    rss, pss = peak.stop()
    out["peak_rss_mib"] = round(rss, 1)
    out["peak_pss_mib"] = round(pss, 1)
    every = [x for v in runs.values() for x in v] + lat_runs
    out["lost"] = sum(x["lost"] for x in every)
    out["double_awards"] = sum(x["double_awards"] for x in every)
    out["memory_write_failed"] = sum(x["memory_write_failed"] for x in every)
    out["cpus"] = os.cpu_count()
    out["loadavg_1m"] = round(os.getloadavg()[0], 2)
    await pool.stop()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2000, help="tasks per throughput run")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--no-memory", action="store_true", help="turn the memory off")
    ap.add_argument(
        "--throughput-in-flight", type=int, default=1000, help="auctions in flight (throughput)"
    )
    ap.add_argument("--repeat", type=int, default=1, help="throughput runs per mode (median)")
    ap.add_argument(
        "--latency-ms",
        type=float,
        nargs=2,
        default=[10.0, 30.0],
        metavar=("LO", "HI"),
        help="scripted latency per call in the added-latency runs",
    )
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--latency-tasks-min", type=int, default=40)
    ap.add_argument("--latency-tasks-per-slot", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    connect(num_cpus=2)
    try:
        result = asyncio.run(main(a))
    finally:
        import ray

        ray.shutdown()
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>26}: {v}")
    sys.exit(0 if result["lost"] == 0 and result["double_awards"] == 0 else 1)
