"""Learning from memory: on a stream of real HumanEval auctions, do the cheap agents win more?

    python benchmarks/memory_learning.py --limit 40 --window 20 --json

One stream (the first ``--limit`` tasks, in order), one pool (the local default, or ``--config``),
the shipped auction weights, and three arms:

* ``none``     — SALE without memory. Read from the evaluation matrix when it covers the stream
  (``--matrix``, written by ``sale-ray eval``): the matrix holds every agent's bid, every verdict
  and every agent's execution of its own plan, made with the same protocol functions and the same
  response cache, so the no-memory auction on a row is exact arithmetic. Tasks the matrix lacks run
  as live auctions without the refinement hook.
* ``auction``  — SALE with an empty memory that grows as the stream runs; a "winning" plan in a
  contrast pair is the auction's winner (the paper, ``memory.contrast_on: auction``).
* ``outcome``  — the same, but a winning plan must also have passed its tests (beyond the paper).

Memory arms run real auctions (refinements, the jury on refined plans and executions of refined
plans are new model calls; bids, the first jury and unchanged executions are response-cache hits
when the matrix run used the same config). Each finished auction is remembered before the next
starts. Per ``--window`` tasks the script reports the cheap agents' winner share (tasks not won by
the largest agent), pass@1, refined bids, refined winners and dollars; ``--png`` draws them.

Resumable: every auction record is appended to ``--out/<arm>.jsonl``; a rerun replays those into
the memory and continues. Prints one JSON object (``--json``) or a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sale_ray.config import SaleConfig, load_config  # noqa: E402
from sale_ray.evaluation.baselines import RouterContext, SaleRouter  # noqa: E402
from sale_ray.evaluation.live import decision_from_record  # noqa: E402
from sale_ray.evaluation.matrix import Decision, TaskRow, single_agent  # noqa: E402
from sale_ray.types import AuctionRecord, Task  # noqa: E402

ARMS = ("none", "auction", "outcome")


# --- one arm ----------------------------------------------------------------------------------------
def _load_done(path: Path) -> list[AuctionRecord]:
    if not path.is_file():
        return []
    return [AuctionRecord.model_validate_json(x) for x in path.read_text().splitlines() if x]


async def run_memory_arm(
    arm: str, tasks: list[Task], pool: Any, config: SaleConfig, out: Path, evaluate: Any
) -> list[AuctionRecord]:
    """Live auctions over the stream with a memory that starts empty (``arm`` = contrast_on)."""
    from tqdm import tqdm

    from sale_ray.auction.protocol import run_auction
    from sale_ray.auction.refinement import MemoryRefiner
    from sale_ray.memory.sharded import ShardedMemory

    mcfg = config.memory.model_copy(update={"contrast_on": arm, "restore_on_start": False})
    cfg = config.model_copy(update={"memory": mcfg})
    memory = ShardedMemory.local(mcfg)  # in-process shards: the arm's own, nothing leaks in
    refiner = MemoryRefiner(memory, pool.handles if pool else {}, cfg)
    path = out / f"{arm}.jsonl"
    by_id = {r.task_id: r for r in _load_done(path)}
    records = []
    bar = tqdm(tasks, desc=f"memory:{arm}", unit="task")
    for t in bar:
        rec = by_id.get(t.id)
        if rec is None:
            if pool is None:
                raise RuntimeError(f"{t.id}: not in {path} and no agents started")
            rec = await run_auction(
                t,
                pool.handles,
                pool.prices,
                cfg,
                evaluate=evaluate,
                refine=refiner,
                auction_id=f"learn-{arm}:{t.id}",
            )
            with path.open("a") as f:
                f.write(rec.model_dump_json() + "\n")
        await refiner.remember(t, rec)  # replayed records rebuild the same memory on resume
        records.append(rec)
        bar.set_postfix_str(f"{t.id}: {rec.winner} {'pass' if rec.passed else 'fail'}")
    return records


async def run_plain_arm(
    tasks: list[Task],
    rows: dict[str, TaskRow],
    pool: Any,
    config: SaleConfig,
    out: Path,
    evaluate: Any,
) -> list[Decision]:
    """SALE without memory: exact from the matrix rows, live for tasks the matrix lacks."""
    from sale_ray.auction.protocol import run_auction

    router = SaleRouter("none", RouterContext(weights=config.auction.weights))
    path = out / "none.jsonl"
    done = {r.task_id: r for r in _load_done(path)}
    out_d = []
    for i, t in enumerate(tasks):
        if t.id in rows:
            out_d.append(router.route(rows[t.id].model_copy(update={"order": i})))
            continue
        rec = done.get(t.id)
        if rec is None:
            rec = await run_auction(
                t,
                pool.handles,
                pool.prices,
                config,
                evaluate=evaluate,
                auction_id=f"learn-none:{t.id}",
            )
            with path.open("a") as f:
                f.write(rec.model_dump_json() + "\n")
        out_d.append(decision_from_record("none", rec, i))
    return out_d


# --- windows ----------------------------------------------------------------------------------------
def summarize_arm(
    decisions: list[Decision], refined: list[tuple[int, bool]], largest: str, window: int
) -> dict[str, Any]:
    """Per-window and whole-stream figures. ``refined``: (valid refined bids, refined bid won)."""

    def block(lo: int, hi: int) -> dict[str, Any]:
        ds = decisions[lo:hi]
        n = len(ds)
        rf = refined[lo:hi]
        return {
            "start": lo,
            "end": hi,
            "tasks": n,
            "cheap_share": sum(d.agent not in (None, largest) for d in ds) / n if n else None,
            "pass_at_1": sum(d.passed for d in ds) / n if n else None,
            "refined_bids": sum(x for x, _ in rf),
            "refined_wins": sum(w for _, w in rf),
            "cost_usd": sum(d.total_cost for d in ds),
            "refine_cost_usd": sum(d.cost_usd.get("refine", 0.0) for d in ds),
        }

    n = len(decisions)
    return {
        "windows": [block(lo, min(lo + window, n)) for lo in range(0, n, window)],
        "total": block(0, n),
        "winners": [d.agent for d in decisions],
        "passed": [d.passed for d in decisions],
    }


def refined_stats(rec: AuctionRecord) -> tuple[int, bool]:
    n = sum(1 for s in rec.bids if s.bid.refined and s.bid.valid)
    return n, bool(rec.winner and rec.provisional_winner and rec.winner != rec.provisional_winner)


def plot(result: dict[str, Any], path: Path) -> None:
    """Cumulative cheap-agent winner share, per-window pass@1 and $ — one line per arm, the
    largest agent alone dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4))
    largest = result["largest_agent"]
    for arm, r in result["arms"].items():
        ws = r["winners"]
        cum = [sum(w not in (None, largest) for w in ws[: i + 1]) / (i + 1) for i in range(len(ws))]
        a1.plot(range(1, len(ws) + 1), cum, label=arm)
        xs = [w["end"] for w in r["windows"]]
        a2.plot(xs, [w["pass_at_1"] for w in r["windows"]], marker="o", label=arm)
        a3.plot(xs, [w["cost_usd"] for w in r["windows"]], marker="o", label=arm)
    ref = result.get("reference_largest_only")
    if ref:
        xs = [w["end"] for w in ref["windows"]]
        a2.plot(xs, [w["pass_at_1"] for w in ref["windows"]], "k--", label="largest alone")
        a3.plot(xs, [w["cost_usd"] for w in ref["windows"]], "k--", label="largest alone")
    win = f"end of {result['window']}-task window"
    a1.set(xlabel="task in stream", ylabel="cheap agents' winner share (cumulative)", ylim=(0, 1))
    a2.set(xlabel=win, ylabel="pass@1 in window", ylim=(0, 1))
    a3.set(xlabel=win, ylabel="$ in window (all phases)", ylim=(0, None))
    for a in (a1, a2, a3):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(f"Learning from memory: {result['tasks']} {result['dataset']} tasks, stream order")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------------------
async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from sale_ray.datasets import load_dataset
    from sale_ray.evaluation.measurement import load_matrix, make_eval_evaluator

    config = load_config(args.config)
    config = config.model_copy(update={"cache": config.cache.model_copy(update={"enabled": True})})
    tasks = load_dataset(args.dataset, args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(a.name for a in config.pool.agents)

    def load_rows() -> dict[str, TaskRow]:
        return {
            r.task_id: r
            for r in load_matrix(Path(args.matrix))
            if sorted(r.cells) == names  # another pool's matrix is not this stream's
        }

    rows = load_rows()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise SystemExit(f"unknown arm(s) {bad}; choose from {ARMS}")
    evaluate = make_eval_evaluator(config)

    def logged(arm: str) -> set[str]:
        return {r.task_id for r in _load_done(out / f"{arm}.jsonl")}

    need_live = any(
        not {t.id for t in tasks} <= (set(rows) if a == "none" else set()) | logged(a) for a in arms
    )  # a finished run replays its logs without starting a model
    pool = None
    if need_live:
        from sale_ray.runtime import connect, start_agents

        connect(None)
        pool = await start_agents(config)
    try:
        largest = (
            max(pool.prices, key=pool.prices.get) if pool else rows[tasks[0].id].by_price()[-1]
        )
        result: dict[str, Any] = {
            "dataset": args.dataset,
            "tasks": len(tasks),
            "window": args.window,
            "largest_agent": largest,
            "weights": config.auction.weights.model_dump(),
            "arms": {},
        }

        # Memory arms share the pool and run side by side: an auction keeps only some agents
        # busy at a time (one refines, one executes), so two streams use the idle cores.
        async def memory_arm(arm: str) -> None:
            t0 = time.time()
            recs = await run_memory_arm(arm, tasks, pool, config, out, evaluate)
            ds = [decision_from_record(arm, r, i) for i, r in enumerate(recs)]
            rf = [refined_stats(r) for r in recs]
            result["arms"][arm] = {
                **summarize_arm(ds, rf, largest, args.window),
                "seconds": time.time() - t0,
            }

        await asyncio.gather(*(memory_arm(a) for a in arms if a != "none"))
        if "none" in arms:  # last: the matrix may have grown meanwhile (a concurrent eval)
            rows = load_rows()
            t0 = time.time()
            ds = await run_plain_arm(tasks, rows, pool, config, out, evaluate)
            result["matrix_rows_used"] = sum(t.id in rows for t in tasks)
            result["arms"]["none"] = {
                **summarize_arm(ds, [(0, False)] * len(ds), largest, args.window),
                "seconds": time.time() - t0,
            }
            if all(t.id in rows for t in tasks):  # the yardstick: the largest agent alone
                ds = [single_agent("largest", rows[t.id], largest) for t in tasks]
                result["reference_largest_only"] = summarize_arm(
                    ds, [(0, False)] * len(ds), largest, args.window
                )
        result["arms"] = {a: result["arms"][a] for a in arms}
    finally:
        if pool is not None:
            await pool.stop()
            import ray

            ray.shutdown()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="humaneval")
    p.add_argument("--limit", type=int, default=40, help="tasks in the stream")
    p.add_argument("--window", type=int, default=20, help="tasks per reported window")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated from {ARMS}")
    p.add_argument("--config", default="benchmarks/eval_local.yaml")
    p.add_argument("--matrix", default="runs/eval-humaneval/matrix.parquet")
    p.add_argument("--out", default="runs/memory-learning", help="resumable auction logs")
    p.add_argument("--png", default="benchmarks/results/memory_learning.png")
    p.add_argument("--results", default="benchmarks/results/memory_learning.json")
    p.add_argument("--json", action="store_true", help="print the JSON object only")
    args = p.parse_args()
    result = asyncio.run(_main(args))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1))
    if args.png:
        plot(result, Path(args.png))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{'arm':<8} {'window':<9} {'cheap share':>11} {'pass@1':>7} {'refined':>8} {'ref.wins':>8} {'cost $':>10}"
    )
    shown = dict(result["arms"])
    if "reference_largest_only" in result:
        shown["largest"] = result["reference_largest_only"]
    for arm, r in shown.items():
        for w in [*r["windows"], {**r["total"], "start": "all"}]:
            span = f"{w['start']}-{w['end']}" if w["start"] != "all" else "all"
            print(
                f"{arm:<8} {span:<9} {w['cheap_share']:>11.1%} {w['pass_at_1']:>7.3f} "
                f"{w['refined_bids']:>8} {w['refined_wins']:>8} {w['cost_usd']:>10.6f}"
            )


if __name__ == "__main__":
    main()
