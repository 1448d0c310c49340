"""End-to-end seconds of an auction against the largest agent called directly (issue 16).

    python benchmarks/latency_e2e.py [--json] [--tasks FILE] [--limit N] [--config FILE]
        [--policies sale sale:speculate] [--out DIR] [--memory]

One user, one task at a time, on the real pool (the embedded default: three local llama.cpp
models; ``--config`` for another): for every task, in an order that rotates from task to task
so that a slow minute of this shared machine hits every side alike,

* ``direct``: the largest agent (the dearest ``price_out_per_mtok``) called once with the task
  alone — the standard "complete this function" prompt, what a user does without a router
  (``execute_direct``, through the same service and gate as the auctions);
* each of ``--policies``: one auction through the service (``Service.submit``), its task id
  made unique per side (the service is idempotent by task id). ``sale:speculate`` is the
  default policy with ``auction.speculate: true`` (the favourite executes while the jury sits).

Seconds are the driver's wall clock around each call; the answer is checked by the same
sandboxed verifier on every side (not counted in the seconds). Memory is **off** unless
``--memory``, so that every side sees the same state (an auction's refinement would otherwise
learn from the sides run before it). Results go to ``OUT/rows.jsonl`` as they come, one line
per (task, side): rerunning with the same ``--out`` skips what is there (resumable).

The JSON: per side p50 / mean seconds, pass@1, $ spent, p50 ratio to ``direct`` (goal ≤ 1.5),
and for speculating sides how often the favourite was kept and what the lost ones cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_TASKS = ROOT / "benchmarks" / "results" / "eval-humaneval" / "heldout.jsonl"
GOAL = 1.5


def _config(path: str | None, memory: bool, tmp: Path):
    from sale_ray.config import ServePolicy, load_config

    cfg = load_config(path)
    speculate = ServePolicy(
        description="the default policy; the favourite executes while the jury sits",
        auction={"speculate": True},
    )
    serve = cfg.serve.model_copy(
        update={"policies": {**cfg.serve.policies, "speculate": speculate}}
    )
    return cfg.model_copy(
        update={
            "memory": cfg.memory.model_copy(update={"enabled": memory}),
            "serve": serve,
            "service": cfg.service.model_copy(
                update={
                    "name": f"latency-{os.getpid()}",
                    "attach": "never",
                    "log_uri": str(tmp / "log"),
                    "ledger_uri": str(tmp / "ledger.json"),
                }
            ),
        }
    )


def _done(out: Path) -> dict[tuple[str, str], dict]:
    rows: dict[tuple[str, str], dict] = {}
    f = out / "rows.jsonl"
    if f.exists():
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows[(r["task_id"], r["side"])] = r
    return rows


async def _direct(svc, agent: str, task, evaluate) -> dict[str, Any]:
    t = time.perf_counter()
    ex = await svc.call(agent, "execute_direct", task)
    seconds = time.perf_counter() - t
    ok = None if ex.error else (await evaluate(task, ex.answer)).passed
    return {
        "seconds": seconds,
        "passed": bool(ok),
        "cost_usd": ex.usage.cost_usd,
        "winner": agent,
        "error": ex.error,
    }


async def _auction(svc, policy: str, task) -> dict[str, Any]:
    t = time.perf_counter()
    rec = await svc.submit(task.model_copy(update={"id": f"{task.id}@{policy}"}), policy=policy)
    seconds = time.perf_counter() - t
    spec = rec.speculation
    return {
        "seconds": seconds,
        "passed": bool(rec.passed),
        "cost_usd": rec.cost_usd,
        "winner": rec.winner,
        "phase_seconds": rec.phase_seconds,
        "kept": any(n.endswith(" kept") and "speculative" in n for n in rec.notes),
        "speculation_usd": spec.usage.cost_usd if spec is not None else 0.0,
        "error": rec.error,
    }


def _summary(rows: list[dict], sides: list[str]) -> dict[str, Any]:
    by = {s: [r for r in rows if r["side"] == s] for s in sides}
    tasks = set.intersection(*(set(r["task_id"] for r in v) for v in by.values())) if by else set()
    out: dict[str, Any] = {"tasks": len(tasks)}
    base = None
    for s in sides:
        rs = [r for r in by[s] if r["task_id"] in tasks]
        if not rs:
            continue
        secs = [r["seconds"] for r in rs]
        d = {
            "p50_s": round(statistics.median(secs), 2),
            "mean_s": round(statistics.fmean(secs), 2),
            "pass_at_1": round(sum(r["passed"] for r in rs) / len(rs), 3),
            "cost_usd": round(sum(r["cost_usd"] for r in rs), 8),
        }
        if s == "direct":
            base = d
        else:
            phases: dict[str, list[float]] = {}
            for r in rs:
                for p, v in (r.get("phase_seconds") or {}).items():
                    phases.setdefault(p, []).append(v)
            d["mean_phase_s"] = {p: round(statistics.fmean(v), 2) for p, v in phases.items()}
            if any("kept" in r for r in rs) and s != "sale":
                d["speculation_kept"] = sum(r.get("kept", False) for r in rs)
                d["speculation_lost_usd"] = round(sum(r.get("speculation_usd", 0) for r in rs), 8)
        out[s] = d
    if base:
        for s in sides:
            if s != "direct" and s in out:
                out[s]["p50_ratio"] = round(out[s]["p50_s"] / base["p50_s"], 2)
                out[s]["cost_ratio"] = round(out[s]["cost_usd"] / max(base["cost_usd"], 1e-12), 2)
                out[s]["met"] = out[s]["p50_ratio"] <= GOAL
    out["goal_p50_ratio"] = GOAL
    return out


async def main_async(args) -> dict[str, Any]:
    from sale_ray.datasets import load_task_file
    from sale_ray.evaluators.verifier import make_evaluator
    from sale_ray.service.handle import open_service

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = load_task_file(args.tasks)[: args.limit]
    sides = ["direct", *args.policies]
    done = _done(out)
    tmp = Path(tempfile.mkdtemp(prefix="latency-"))
    cfg = _config(args.config, args.memory, tmp)
    import ray

    # a private cluster (never one that `ray start` runs here), as `connect` starts when none is
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    evaluate = make_evaluator(cfg)
    t0 = time.time()
    async with open_service(cfg) as svc:
        prices = (await svc.describe())["prices"]  # name -> ($/Mtok in, out), as the service prices
        largest = max(prices, key=lambda n: (prices[n][1], n))
        with (out / "rows.jsonl").open("a") as f:
            for i, task in enumerate(tasks):
                order = sides[i % len(sides) :] + sides[: i % len(sides)]
                for side in order:
                    if (task.id, side) in done:
                        continue
                    if side == "direct":
                        row = await _direct(svc, largest, task, evaluate)
                    else:
                        row = await _auction(svc, side, task)
                    row.update(task_id=task.id, side=side, at=time.time())
                    done[(task.id, side)] = row
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(
                        f"[{i + 1}/{len(tasks)}] {task.id} {side}: {row['seconds']:.1f}s "
                        f"passed={row['passed']} ${row['cost_usd']:.6f}",
                        file=sys.stderr,
                    )
    ray.shutdown()
    summary = _summary([r for r in done.values() if r["side"] in sides], sides)
    summary.update(
        largest=largest,
        tasks_file=str(Path(args.tasks).resolve().relative_to(ROOT))
        if Path(args.tasks).resolve().is_relative_to(ROOT)
        else str(args.tasks),
        memory=args.memory,
        wall_s=round(time.time() - t0, 1),
        loadavg=[round(x, 2) for x in os.getloadavg()],
    )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", default=str(DEFAULT_TASKS), help="task file (JSONL / Parquet)")
    ap.add_argument("--limit", type=int, default=8, help="first N tasks of the file")
    ap.add_argument("--config", default=None, help="sale-ray YAML (default: the embedded pool)")
    ap.add_argument("--policies", nargs="+", default=["sale", "sale:speculate"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latency_e2e"))
    ap.add_argument("--memory", action="store_true", help="memory on (every side shares it)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = ap.parse_args()
    summary = asyncio.run(main_async(args))
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
