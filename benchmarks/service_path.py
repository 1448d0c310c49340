"""The service path (issue 11): what the one shared service costs online, in batch, and at 10,000
tasks in flight — each against a baseline measured in the same run.

    python benchmarks/service_path.py [--json] [--mode all|online|batch|inflight] [options]

``--mode all`` (the default) runs each mode in a fresh Python process with a Ray cluster of its
own (so one mode's actors never sit in another's figures) and prints one JSON object with the
three. Every Ray cluster here is private (``ray.init(address="local")``, as
:func:`sale_ray.runtime.connect` starts one): a cluster another user runs on the machine is
never joined. Agents are ``backend: scripted`` (in their actors, a fixed sleep per call).

* ``online``: ``model: sale`` chat completions over HTTP (``httpx`` async client, keep-alive,
  one connection per client) → Serve's proxy → the gateway deployment (**2 replicas**) → the
  service (the auctioneer actor started by ``up``; the replicas attach to it by name) →
  3 scripted agent actors sleeping ``--latency-ms`` (50) per call. Baseline: **the same
  Gateway in this process** over the same agents as plain objects — ``Gateway`` builds a
  ``LocalService.over`` them, i.e. the same ``Auctioneer``, gates, policy ``sale`` and
  explanation — without HTTP, Serve or Ray; the request body is validated and the answer
  serialised on both sides. At 1, 10 and 100 clients at once, the same number of requests per
  side (``--requests``: 60 / 300 / 1000 by default), Serve and in-process phases alternating
  (the order reversed each round) for ``--rounds`` (2) rounds after a warm-up of 2 requests
  per client on each side. Memory **off** on both sides (the in-process baseline has no
  memory shards to match); the service keeps its ledger and durable log (the product's
  defaults, in a temporary folder). Goal:
  p50(Serve) ÷ p50(in-process) ≤ 1.5 at every concurrency. A third side, interleaved with the
  two, splits the difference: ``service_direct``, this driver calling ``Service.submit`` (the
  Ray service as a replica calls it, without HTTP, Serve or the Gateway).
* ``batch``: ``run_batch`` attached to a running service (``up`` first, then ``run_batch``
  with the same ``service.name``) against ``run_batch`` with a private service
  (``service.attach: never``): the same number of tasks (``--batch-tasks``, 2000), the same
  config (3 zero-latency scripted agents, memory off, 1000 auctions in flight), fresh task ids
  per run (the shared service remembers ids), ``--batch-repeat`` (3) runs each, alternating
  which side goes first. Auctions/s = tasks ÷ the wall time of the ``run_batch`` call (the
  private side's includes starting its agents and auctioneer: that is what a private run
  costs); ``span`` figures divide by first auction start → last auction end instead (start-up
  excluded). Goal: shared ÷ private ≥ 0.90 (medians).
* ``inflight``: ``--inflight-tasks`` (10,000) scripted tasks submitted at once through the
  service (``up``, then ``drive`` in chunks of 1000, every chunk in flight;
  ``auctioneer.max_in_flight`` = the task count), memory **on** (``embedder: hashing``, no
  model load; ``--shards`` 2), agents sleeping U[200, 600] ms per call with
  ``max_concurrency`` 1024. PSS (``/proc/<pid>/smaps_rollup``: a shared page counted once) of
  every process of the Ray session — this driver and its descendants: GCS, raylet, the agent,
  auctioneer and memory-shard workers, Ray's helpers — summed every second; the peak, the
  biggest processes at the peak, and the same sum with the service idle (after one warm-up
  auction, before the load: the baseline). Goal: peak PSS < 2 GiB.

Each mode's JSON: its figures, the baseline's, the ratio, the goal, ``met``, and the load
averages at its start and end. The default sizes fit in about 10 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # as in every Ray worker (like with like)

PRICES = [0.1, 0.5, 1.0]  # $/Mtok in; out is twice that
ONLINE_GOAL = 1.5
BATCH_GOAL = 0.90
PSS_GOAL_MIB = 2048.0


# --- small helpers ---------------------------------------------------------------------------------
def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))], 2)


def _quantiles(ms: list[float]) -> dict[str, float | None]:
    p50 = round(statistics.median(ms), 2) if ms else None
    return {"p50": p50, "p90": _pct(ms, 0.9), "p99": _pct(ms, 0.99)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init_ray() -> None:
    """A private local cluster (never one that ``ray start`` runs here): what ``connect``
    starts when no cluster is found, with the same options."""
    import ray

    ray.init(
        address="local",
        num_cpus=max(2, os.cpu_count() or 2),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * 1024**2,
    )


def _config(
    tmp: Path,
    name: str,
    latency: tuple[float, float],
    *,
    memory: bool = False,
    shards: int = 2,
    in_flight: int = 256,
    max_concurrency: int = 256,
    max_batch: int = 256,
    batches_in_flight: int = 4,
    replicas: int = 2,
    timeout_s: float = 120.0,
):
    from sale_ray.config import (
        AgentSpec,
        AuctionConfig,
        AuctioneerConfig,
        PoolSpec,
        SaleConfig,
        ScriptedSpec,
        ServeConfig,
    )
    from sale_ray.memory.config import MemoryConfig
    from sale_ray.service.config import ServiceConfig

    agents = [
        AgentSpec(
            name=f"a{i}",
            backend="scripted",
            model=f"scripted-{i}",
            price_in_per_mtok=p,
            price_out_per_mtok=2 * p,
            max_concurrency=max_concurrency,
            scripted=ScriptedSpec(latency_ms=latency, quality=0.5 + 0.2 * i, seed=i),
        )
        for i, p in enumerate(PRICES)
    ]
    return SaleConfig(
        pool=PoolSpec(agents=agents),
        auction=AuctionConfig(
            bid_timeout_s=timeout_s, jury_timeout_s=timeout_s, execute_timeout_s=timeout_s
        ),
        auctioneer=AuctioneerConfig(
            max_in_flight=in_flight,
            max_queued=max(10_000, 2 * in_flight),
            max_batch=max_batch,
            batches_in_flight=batches_in_flight,
        ),
        memory=MemoryConfig(enabled=memory, shards=shards, embedder="hashing"),
        serve=ServeConfig(
            api_keys_env=None,
            require_auth=False,
            num_replicas=replicas,
            max_ongoing_requests=128,
            max_queued_requests=1024,
            request_timeout_s=timeout_s,
        ),
        service=ServiceConfig(
            name=name,
            log_uri=str(tmp / "service-log"),
            ledger_uri=str(tmp / "ledger.json"),
        ),
    )


# --- memory of the Ray session (this driver and its descendants) -----------------------------------
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


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as f:
            return next(int(x.split()[1]) for x in f if x.startswith(field))
    except (OSError, StopIteration, ValueError):
        return 0  # the process ended between listing and reading


def _proc_name(pid: int) -> str:
    if pid == os.getpid():
        return "driver (this script)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return "?"
    if not argv:
        return "?"
    if argv[0].startswith("ray::"):  # a Ray worker's title: ray::<Actor class> (or IDLE)
        return argv[0].split()[0]
    base = os.path.basename(argv[0])
    if base.startswith("python"):
        script = next((a for a in argv[1:] if a.endswith(".py")), None)
        if script:
            return f"python {os.path.basename(script)}"
        if "-m" in argv:
            return f"python -m {argv[argv.index('-m') + 1]}"
    return base


Per = list[tuple[int, float]]  # (pid, PSS MiB)


def session_memory(root: int) -> tuple[float, float, Per]:
    """(RSS MiB, PSS MiB, [(pid, PSS MiB)]) of ``root`` and all its descendants. One call
    costs ~75 ms of CPU with ~15 processes (``smaps_rollup`` walks each one's mappings)."""
    pids = _tree(root)
    per = [(p, _kib(f"/proc/{p}/smaps_rollup", "Pss:") / 1024) for p in pids]
    rss = sum(_kib(f"/proc/{p}/status", "VmRSS:") for p in pids) / 1024
    return rss, sum(x for _, x in per), per


def _named(per: Per) -> list[tuple[int, str, float]]:
    """Names read now, while the processes live (a Ray worker's title says which actor)."""
    return [(p, _proc_name(p), m) for p, m in per]


class PeakPss(threading.Thread):
    """Samples :func:`session_memory` every ``every_s``; keeps the peak and who held it."""

    def __init__(self, every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.every_s = every_s
        self.peak_pss = self.peak_rss = 0.0
        self.at_peak: list[tuple[int, str, float]] = []
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            rss, pss, per = session_memory(os.getpid())
            self.samples += 1
            self.peak_rss = max(self.peak_rss, rss)
            if pss > self.peak_pss:
                self.peak_pss, self.at_peak = pss, _named(per)
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _top(named: list[tuple[int, str, float]], n: int = 10) -> list[dict]:
    rows = sorted(named, key=lambda x: -x[2])[:n]
    return [{"pid": p, "name": k, "pss_mib": round(m, 1)} for p, k, m in rows]


def _by_name(named: list[tuple[int, str, float]]) -> dict[str, dict]:
    """PSS per process name: the sum (MiB) and how many processes bear it."""
    out: dict[str, list] = {}
    for _, k, m in named:
        out.setdefault(k, [0.0, 0])
        out[k][0] += m
        out[k][1] += 1
    rows = sorted(out.items(), key=lambda kv: -kv[1][0])
    return {k: {"pss_mib": round(v[0], 1), "processes": v[1]} for k, v in rows}


# --- 1. online: HTTP → Serve (2 replicas) → service → agents, against the Gateway in-process -------
def _body(i: int) -> dict:
    return {"model": "sale", "messages": [{"role": "user", "content": f"service path {i}"}]}


async def _phase(one, clients: int, n: int, start: int) -> tuple[list[float], int, float]:
    """``clients`` workers doing ``n`` requests in all, back to back: (ms each, errors, wall)."""
    ms: list[float] = []
    errors = [0]
    nxt = [start]
    stop = start + n

    async def worker() -> None:
        while nxt[0] < stop:
            i = nxt[0]
            nxt[0] += 1
            t0 = time.perf_counter()
            try:
                await one(i)
            except Exception:  # noqa: BLE001 - counted, not raised: the figures say how many
                errors[0] += 1
                continue
            ms.append((time.perf_counter() - t0) * 1e3)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return ms, errors[0], time.perf_counter() - t0


def _inprocess_gateway(cfg):
    """The same Gateway over the same agents as plain objects (a LocalService over them)."""
    from sale_ray.agents.scripted import ScriptedAgent, scripted_evaluate
    from sale_ray.serve.gateway import Gateway

    agents = {a.name: ScriptedAgent(a, cfg) for a in cfg.pool.agents}
    prices = {a.name: (a.price_in_per_mtok, a.price_out_per_mtok) for a in cfg.pool.agents}
    return Gateway(agents, prices, cfg, evaluate=scripted_evaluate)


async def _online_levels(url: str, cfg, args, svc) -> list[dict]:
    import httpx2 as httpx

    from sale_ray.serve.wire import ChatCompletionRequest
    from sale_ray.types import Task

    gw = _inprocess_gateway(cfg)
    timeout = cfg.serve.request_timeout_s
    counter = [0]
    levels = []
    for clients, n in zip(args.clients, args.requests, strict=True):
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(limits=limits, timeout=timeout + 30) as http:

            async def serve_one(i: int) -> None:
                r = await http.post(url, json=_body(i))
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                r.json()

            async def local_one(i: int) -> None:
                req = ChatCompletionRequest.model_validate(_body(i))
                completion, _ = await gw.chat(req, timeout)
                completion.model_dump_json()

            async def service_one(i: int) -> None:  # what a replica does, from this driver
                task = Task(id=f"direct-{i}", prompt=f"service path {i}", kind="answer")
                rec = await svc.submit(task, policy="sale", evaluate=False)
                if rec.winner is None:
                    raise RuntimeError(rec.error)

            sides = {"serve": serve_one, "service": service_one, "inprocess": local_one}
            for one in sides.values():  # warm-up: connections opened, code paths hot
                await _phase(one, clients, 2 * clients, counter[0])
                counter[0] += 2 * clients
            ms: dict[str, list[float]] = {s: [] for s in sides}
            errors = dict.fromkeys(sides, 0)
            wall = dict.fromkeys(sides, 0.0)
            per_round = [n // args.rounds + (r < n % args.rounds) for r in range(args.rounds)]
            for r, k in enumerate(per_round):
                order = list(sides) if r % 2 == 0 else list(sides)[::-1]
                for side in order:
                    got, err, w = await _phase(sides[side], clients, k, counter[0])
                    counter[0] += k
                    ms[side] += got
                    errors[side] += err
                    wall[side] += w
        q = {s: _quantiles(v) for s, v in ms.items()}
        s50, i50, d50 = q["serve"]["p50"], q["inprocess"]["p50"], q["service"]["p50"]
        s99, i99 = q["serve"]["p99"], q["inprocess"]["p99"]
        ratio = s50 / i50 if s50 and i50 else None
        levels.append(
            {
                "clients": clients,
                "requests_per_side": n,
                "serve_ms": q["serve"],
                "inprocess_ms": q["inprocess"],
                "service_direct_ms": q["service"],
                "service_direct_p50_ratio": round(d50 / i50, 3) if d50 and i50 else None,
                "p50_ratio": None if ratio is None else round(ratio, 3),
                "p99_ratio": round(s99 / i99, 3) if s99 and i99 else None,
                "p50_added_ms": round(s50 - i50, 2) if s50 and i50 else None,
                "serve_rps": round(len(ms["serve"]) / wall["serve"], 1),
                "inprocess_rps": round(len(ms["inprocess"]) / wall["inprocess"], 1),
                "service_direct_rps": round(len(ms["service"]) / wall["service"], 1),
                "errors": errors,
                "goal_p50_ratio": ONLINE_GOAL,
                "met": ratio is not None
                and ratio <= ONLINE_GOAL
                and not errors["serve"]
                and not errors["inprocess"],
                "loadavg": _load(),
            }
        )
        print(f"online: {levels[-1]}", file=sys.stderr, flush=True)
    return levels


def mode_online(args) -> dict:
    from ray import serve

    from sale_ray.config import ServeConfig
    from sale_ray.serve.deployment import build_app, start_serve
    from sale_ray.service.handle import down, up

    load0 = _load()
    tmp = Path(tempfile.mkdtemp(prefix="sp-online-"))
    lat = (args.latency_ms, args.latency_ms)
    cfg = _config(tmp, "bench-online", lat, replicas=args.replicas)
    _init_ray()
    svc = None
    try:
        svc = asyncio.run(up(cfg, detached=False))
        port = start_serve(ServeConfig(port=_free_port()))
        serve.run(build_app(cfg), name="sp", route_prefix="/sp")
        url = f"http://127.0.0.1:{port}/sp/v1/chat/completions"
        levels = asyncio.run(_online_levels(url, cfg, args, svc))
        stats = asyncio.run(svc.stats())
        states = serve.status().applications["sp"].deployments["SaleGateway"].replica_states
        replicas = {str(k): v for k, v in states.items()}
    finally:
        serve.shutdown()
        if svc is not None:
            asyncio.run(down("bench-online"))
    return {
        "path": "HTTP (httpx async, keep-alive) → Serve proxy → SaleGateway "
        f"({args.replicas} replicas) → service auctioneer actor → 3 scripted agent actors",
        "baseline": "the same Gateway in this process over the same ScriptedAgent objects "
        "(Gateway → LocalService.over: the same Auctioneer, gates and policy `sale`); no HTTP, "
        "Serve or Ray; body validated and answer serialised as on the Serve side",
        "service_direct": "decomposition, not the goal: this driver calling Service.submit "
        "(the Ray service, as a replica calls it; no HTTP, no Serve, no Gateway)",
        "agents": len(cfg.pool.agents),
        "latency_ms_per_call": args.latency_ms,
        "memory": False,
        "service_log_and_ledger": True,
        "replicas": args.replicas,
        "replica_states": replicas,
        "rounds": args.rounds,
        "levels": levels,
        "goal_p50_ratio": ONLINE_GOAL,
        "met": all(lv["met"] for lv in levels),
        "service_counts": {k: stats[k] for k in ("admitted", "finished", "refused", "crashed")},
        "mean_batch": {n: round(b["mean_batch"], 2) for n, b in stats["batching"].items()},
        "loadavg_start": load0,
        "loadavg_end": _load(),
    }


# --- 2. batch: run_batch attached to a running service vs with a private one -----------------------
def _tasks(n: int, tag: str):
    from sale_ray.types import Task

    return [Task(id=f"{tag}-{i}", prompt=f"batch task {i}", kind="answer") for i in range(n)]


def _span_s(path: str) -> float:
    """First auction start → last auction end, from the results' own timings."""
    import pyarrow.parquet as pq

    t = pq.read_table(path).to_pydict()
    phases = [k for k in t if k.endswith("_s") and k[:-2] in _PHASES]
    ends = [s + sum(t[p][i] or 0.0 for p in phases) for i, s in enumerate(t["started_at"])]
    return max(ends) - min(t["started_at"])


_PHASES = ("bid", "jury", "refine", "execute", "evaluate")


def mode_batch(args) -> dict:
    from sale_ray.batch import run_batch
    from sale_ray.service.handle import down, up

    load0 = _load()
    tmp = Path(tempfile.mkdtemp(prefix="sp-batch-"))
    cfg = _config(
        tmp, "bench-batch", (0.0, 0.0), in_flight=1000, max_concurrency=1024, max_batch=512
    )
    private = cfg.model_copy(update={"service": cfg.service.model_copy(update={"attach": "never"})})
    _init_ray()
    runs: dict[str, list[dict]] = {"shared": [], "private": []}
    svc = asyncio.run(up(cfg, detached=False))
    try:
        for r in range(args.batch_repeat):
            order = ["private", "shared"] if r % 2 == 0 else ["shared", "private"]
            for side in order:
                tasks = _tasks(args.batch_tasks, f"{side}{r}")
                out = str(tmp / f"out-{side}{r}")
                t0 = time.perf_counter()
                res = asyncio.run(
                    run_batch(tasks, out, cfg if side == "shared" else private, progress=False)
                )
                wall = time.perf_counter() - t0
                span = _span_s(res.path)
                row = {
                    "wall_s": round(wall, 3),
                    "auctions_per_s": round(res.written / wall, 1),
                    "span_s": round(span, 3),
                    "span_auctions_per_s": round(res.written / span, 1),
                    "written": res.written,
                    "refused": len(res.refused),
                    "service": res.service,
                    "loadavg_1m": _load()[0],
                }
                runs[side].append(row)
                print(f"batch: {side} {r}: {row}", file=sys.stderr, flush=True)
        stats = asyncio.run(svc.stats())
    finally:
        asyncio.run(down("bench-batch"))

    def med(side: str, key: str) -> float:
        return round(statistics.median(x[key] for x in runs[side]), 1)

    shared, priv = med("shared", "auctions_per_s"), med("private", "auctions_per_s")
    s_span, p_span = med("shared", "span_auctions_per_s"), med("private", "span_auctions_per_s")
    ok = all(
        x["written"] == args.batch_tasks and not x["refused"] for v in runs.values() for x in v
    )
    attached = all(x["service"] == "bench-batch" for x in runs["shared"]) and all(
        x["service"] is None for x in runs["private"]
    )
    return {
        "tasks": args.batch_tasks,
        "repeat": args.batch_repeat,
        "agents": len(cfg.pool.agents),
        "latency_ms_per_call": 0.0,
        "memory": False,
        "auctions_in_flight": cfg.auctioneer.max_in_flight,
        "shared_auctions_per_s": shared,
        "private_auctions_per_s": priv,
        "shared_over_private": round(shared / priv, 3),
        "shared_span_auctions_per_s": s_span,
        "private_span_auctions_per_s": p_span,
        "span_shared_over_private": round(s_span / p_span, 3),
        "goal_span_shared_over_private": BATCH_GOAL,
        "met": s_span / p_span >= BATCH_GOAL,
        "all_written": ok,
        "attached_as_expected": attached,
        "service_log_rows": stats["service"].get("log_rows_written"),
        "runs": runs,
        "loadavg_start": load0,
        "loadavg_end": _load(),
    }


# --- 3. 10,000 tasks in flight, memory on: PSS of the whole Ray session ----------------------------
async def _inflight(svc, tasks, poll_s: float = 0.5) -> dict:
    from sale_ray.batch import drive

    got: dict[str, Any] = {}
    dupes = [0]
    refused: dict[str, str] = {}

    def on_group(g: dict) -> bool:
        for r in g["records"]:
            dupes[0] += r.task_id in got
            got[r.task_id] = r
        refused.update(g["refused"])
        return True

    peak_in_flight = [0]
    done = asyncio.Event()

    async def poll() -> None:
        while not done.is_set():
            st = await svc.stats()
            peak_in_flight[0] = max(peak_in_flight[0], st["in_flight"])
            try:
                await asyncio.wait_for(done.wait(), poll_s)
            except TimeoutError:
                pass

    poller = asyncio.ensure_future(poll())
    chunks = [tasks[i : i + 1000] for i in range(0, len(tasks), 1000)]
    t0 = time.perf_counter()
    try:
        await drive(svc.actor, chunks, on_group, streams_in_flight=len(chunks))
    finally:
        wall = time.perf_counter() - t0
        done.set()
        await poller
    recs = list(got.values())
    return {
        "wall_s": round(wall, 2),
        "auctions_per_s": round(len(recs) / wall, 1),
        "records": len(recs),
        "lost": len({t.id for t in tasks} - got.keys()) - len(refused),
        "refused": len(refused),
        "duplicate_records": dupes[0],
        "errors": sum(1 for r in recs if r.error),
        "winners": sum(1 for r in recs if r.winner),
        "refined_bids": sum(1 for r in recs for b in r.bids if b.bid.refined),
        "peak_in_flight": peak_in_flight[0],
    }


def mode_inflight(args) -> dict:
    from sale_ray.service.handle import down, up
    from sale_ray.types import Task

    load0 = _load()
    tmp = Path(tempfile.mkdtemp(prefix="sp-inflight-"))
    n = args.inflight_tasks
    cfg = _config(
        tmp,
        "bench-inflight",
        tuple(args.inflight_latency_ms),
        memory=True,
        shards=args.shards,
        in_flight=n,
        max_concurrency=1024,
        max_batch=1024,
        batches_in_flight=8,
        timeout_s=600.0,
    )
    _init_ray()
    sampler = PeakPss()
    sampler.start()
    svc = asyncio.run(up(cfg, detached=False))
    try:
        warm = Task(id="warm-0", prompt="warm-up task", kind="answer")
        asyncio.run(svc.submit(warm))  # memory shards up, every code path once
        time.sleep(2.0)
        idle_rss, idle_pss, idle_per = session_memory(os.getpid())
        idle_named = _named(idle_per)
        tasks = _tasks(n, "inflight")
        out = asyncio.run(_inflight(svc, tasks))
        time.sleep(1.0)  # one more sample after the last record
        stats = asyncio.run(svc.stats())
    finally:
        sampler.stop()
        asyncio.run(down("bench-inflight"))
    peak = sampler.peak_pss
    return {
        "tasks": n,
        "agents": len(cfg.pool.agents),
        "latency_ms_per_call": list(args.inflight_latency_ms),
        "agent_max_concurrency": 1024,
        "memory": True,
        "embedder": cfg.memory.embedder,
        "shards": cfg.memory.shards,
        **out,
        "memory_write_failed": stats["memory_write_failed"],
        "peak_pss_mib": round(peak, 1),
        "peak_rss_mib": round(sampler.peak_rss, 1),
        "idle_pss_mib": round(idle_pss, 1),
        "idle_rss_mib": round(idle_rss, 1),
        "added_pss_mib": round(peak - idle_pss, 1),
        "pss_samples": sampler.samples,
        "processes_at_peak": len(sampler.at_peak),
        "top_at_peak": _top(sampler.at_peak),
        "by_name_at_peak": _by_name(sampler.at_peak),
        "by_name_idle": _by_name(idle_named),
        "goal_peak_pss_mib": PSS_GOAL_MIB,
        "met": peak < PSS_GOAL_MIB and out["records"] == n and out["lost"] == 0,
        "loadavg_start": load0,
        "loadavg_end": _load(),
    }


# --- all modes, each in a fresh process ------------------------------------------------------------
MODES = {"online": mode_online, "batch": mode_batch, "inflight": mode_inflight}


# each mode's time limit: together under bench.py's 900 s
TIMEOUTS_S = {"online": 220.0, "batch": 200.0, "inflight": 450.0}


def run_all(argv: list[str], scale: float) -> dict:
    out: dict[str, Any] = {"loadavg_start": _load(), "cpus": os.cpu_count()}
    for m in MODES:
        timeout_s = TIMEOUTS_S[m] * scale
        cmd = [sys.executable, os.path.abspath(__file__), *argv, "--mode", m, "--json"]
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.terminate()  # SIGTERM first: the child shuts its Ray cluster down
            try:
                stdout, stderr = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, stderr = p.communicate()
            res = {"error": f"timed out after {timeout_s:.0f} s: {stderr[-2000:]}", "met": False}
        else:
            lines = [ln for ln in stdout.splitlines() if ln.strip()]
            try:
                res = json.loads(lines[-1])
                assert isinstance(res, dict)
            except (IndexError, ValueError, AssertionError):
                res = {"error": f"exit {p.returncode}: {stderr[-2000:]}", "met": False}
        res["mode_wall_s"] = round(time.monotonic() - t0, 1)
        out[m] = res
        print(f"service_path: {m}: {res.get('met')} in {res['mode_wall_s']} s", file=sys.stderr)
    out["met"] = {m: bool(out[m].get("met")) for m in MODES}
    out["all_met"] = all(out["met"].values())
    out["ran"] = all("error" not in out[m] for m in MODES)
    out["loadavg_end"] = _load()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mode", choices=["all", *MODES], default="all")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="online: sleep per call")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 10, 100])
    ap.add_argument("--requests", type=int, nargs="+", default=[60, 300, 1000],
                    help="online: requests per side at each --clients")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=2, help="online: Serve/in-process alternations")
    ap.add_argument("--replicas", type=int, default=2, help="online: gateway replicas")
    ap.add_argument("--batch-tasks", type=int, default=2000)
    ap.add_argument("--batch-repeat", type=int, default=3)
    ap.add_argument("--inflight-tasks", type=int, default=10_000)
    ap.add_argument("--inflight-latency-ms", type=float, nargs=2, default=[200.0, 600.0])
    ap.add_argument("--shards", type=int, default=2, help="inflight: memory shards")
    ap.add_argument(
        "--timeout-scale", type=float, default=1.0, help="all: × each mode's time limit"
    )
    args = ap.parse_args()
    if len(args.clients) != len(args.requests):
        ap.error("--clients and --requests need as many values each")
    if args.mode == "all":
        argv = [a for a in sys.argv[1:] if a != "--json"]
        res = run_all(argv, args.timeout_scale)
        ok = res["ran"]
    else:
        import signal

        import sale_ray

        def _term(*_: object) -> None:
            raise SystemExit(143)  # a timed-out mode: its `finally` blocks stop the service

        signal.signal(signal.SIGTERM, _term)
        res = MODES[args.mode](args)
        res["sale_ray"] = os.path.dirname(sale_ray.__file__)
        ok = True
        import ray

        ray.shutdown()
    if args.json:
        print(json.dumps(res))
    else:
        print(json.dumps(res, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
