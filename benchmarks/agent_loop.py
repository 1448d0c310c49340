"""Agentic execution, measured: each agent called directly, single shot against the agent loop,
per domain and bin; and the published auction's overhead against the execution it buys.

    python benchmarks/agent_loop.py [--per-bin 6] [--max-turns 4] [--replay]

* **Tasks** (seeded, fixed): HumanEval bins 0 / 2 / 4 (code, by canonical-solution lines),
  reasoning-gym levels 0 / 2 / 4 (answer: arithmetic, leg counting, chain sums),
  GSM-Symbolic word problems bins 0 / 3 (answer, by solution steps), and the long bundles of
  sale_ray/bundles.py (modules of 2 / 3 HumanEval functions, sets of 3 / 6 word problems);
  ``--per-bin`` of each (``--only`` picks datasets).
  Tasks used while the loop's prompts were written (:data:`DEV`) are never drawn.
* **Arms**, per task and agent of the embedded pool: ``single`` — ``Agent.execute_direct``, one
  call with the standard instruction, as a user calls a model; ``loop`` — ``Agent.execute_loop``
  with no plan, up to ``--max-turns`` turns with the sandboxed Python tool. Both judged by the
  task's own verifier (HumanEval tests in the sandbox, reasoning-gym's ``score_answer``).
* **Auction overhead**, on the first ``--auction-per-bin`` tasks of each bin: the tokens the published auction spends before execution —
  every agent bids, every agent judges all plans (refinement from memory would add more; this
  is a lower bound) — over the execution tokens of the largest agent with the loop.
* **Length label**: a bin is ``long`` when the largest agent's median loop execution there takes
  at least :data:`LONG_TOKENS` tokens (prompt and completion, all turns), and every harder bin of
  the dataset with it; ``datasets.TASK_LENGTHS`` ships the result.

Every run is appended to ``--runs`` (JSONL) as it finishes, so an interrupted run resumes where it
stopped (on another machine too, once the file is committed); ``--replay`` rebuilds the summary
and the PNG from that file alone, without a model. Prints the summary JSON and writes ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import bootstrap_ci  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
AGENTS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")  # the embedded pool
SAMPLE = {
    "humaneval": (0, 2, 4),
    "reasoning_gym": (0, 2, 4),
    "word_problems": (0, 3),
    "humaneval_modules": (0, 1),
    "word_problem_sets": (0, 1),
}
DOMAIN = {
    "humaneval": "code",
    "reasoning_gym": "answer",
    "word_problems": "answer",
    "humaneval_modules": "code",
    "word_problem_sets": "answer",
}
LONG_TOKENS = 1000
#: Tried by hand while the loop's prompts were written: kept out of every measurement.
DEV = frozenset(
    {
        "HumanEval/150",
        "HumanEval/54",
        "rg/basic_arithmetic/L4/9",
        "rg/leg_counting/L4/9",
        "rg/chain_sum/L4/9",
    }
)


def sample(per_bin: int, only: list[str] | None = None) -> list[Any]:
    """``per_bin`` tasks of every (dataset, bin) of :data:`SAMPLE` (``only``: of those
    datasets), interleaved so that a run stopped early has covered every bin about equally.
    A bundle (sale_ray/bundles.py) with a :data:`DEV` task among its parts is not drawn."""
    from sale_ray.datasets import load_dataset

    groups = []
    for name, bins in SAMPLE.items():
        if only and name not in only:
            continue
        tasks = [
            t
            for t in load_dataset(name)
            if t.id not in DEV and not DEV & set(re.findall(r"[\w/]+", t.metadata.get("parts", "")))
        ]
        for b in bins:
            pool = [t for t in tasks if t.bin == b]
            random.Random(f"{name}/{b}").shuffle(pool)
            groups.append(pool[:per_bin])
    return [g[i] for i in range(per_bin) for g in groups if i < len(g)]


def dataset_of(task: Any) -> str:
    return task.metadata.get("dataset", "?")


def _verify(task: Any, answer: str) -> bool:
    from sale_ray.datasets import verify_answer
    from sale_ray.evaluators import check_solution

    ev = verify_answer(task, answer) if task.kind == "answer" else None
    return bool((ev or check_solution(task, answer)).passed)


ARMS = {"code": ("single", "loop"), "answer": ("single", "single_steps", "loop")}
_STEPS = (
    "Think step by step, then give the final answer alone on the last line, as `ANSWER: <answer>`."
)


_MARKED = re.compile(r"ANSWER[*`\s]*:[*`\s]*([^\n]*?)[`*\s]*$", re.IGNORECASE | re.MULTILINE)


async def _execute(agent: Any, task: Any, arm: str) -> Any:
    """One arm's execution. ``single_steps`` is the plain step-by-step prompt a user would
    write for a word problem — a fairer single shot for answer tasks than the product's
    "final answer only" instruction; its ANSWER line is what is scored."""
    if arm == "single":
        return await agent.execute_direct(task)
    if arm == "loop":
        return await agent.execute_loop(task)
    from sale_ray.agents import prompts
    from sale_ray.errors import ModelError
    from sale_ray.types import Execution

    user = prompts.render("direct", task_block=prompts.task_block(task), instructions=_STEPS)
    try:
        r = await agent._chat(  # the agent's own client and pricing, as execute_direct uses
            [agent._system(), {"role": "user", "content": user}], max_tokens=512, timeout_s=1080
        )
    except ModelError as e:
        return Execution(agent=agent.name, error=str(e))
    marked = _MARKED.findall(r.text)
    answer = marked[-1] if marked else r.text
    return Execution(
        agent=agent.name,
        answer=answer,
        turns=1,
        usage=agent._usage(r),
        error="TruncatedOutput" if r.truncated and not marked else None,
    )


async def _measure(
    tasks: list[Any], runs: Path, max_turns: int, groups: int, auction_per_bin: int
) -> None:
    from sale_ray.agents.agent import Agent
    from sale_ray.auction.jury import juror_order
    from sale_ray.config import AgentSpec, AuctionConfig, ExecutionConfig, PoolSpec, SaleConfig

    done = {(r["task"], r["agent"], r["arm"]) for r in _read(runs)}
    # one model generates at a time here, so each gets both cores; room for a 4-turn loop
    specs = [AgentSpec(name=m, model=m, threads=2, n_ctx=8192) for m in AGENTS]
    config = SaleConfig(
        pool=PoolSpec(agents=specs),
        # generous deadlines: this measures tokens and pass@1, not this box's speed
        auction=AuctionConfig(bid_timeout_s=600, jury_timeout_s=600, execute_timeout_s=1200),
        execution=ExecutionConfig(max_turns=max_turns),
    )
    agents = {s.name: Agent(s, config) for s in specs}
    for a in agents.values():
        await a.start()
    t_start, n_new = time.perf_counter(), 0
    try:
        for i, task in enumerate(tasks):
            for name, agent in agents.items():
                for arm in ARMS[task.kind]:
                    if (task.id, name, arm) in done:
                        continue
                    t0 = time.perf_counter()
                    ex = await _execute(agent, task, arm)
                    row = {
                        "task": task.id,
                        "dataset": dataset_of(task),
                        "bin": task.bin,
                        "agent": name,
                        "arm": arm,
                        "passed": ex.error is None and _verify(task, ex.answer),
                        "tokens": ex.usage.total_tokens,
                        "completion_tokens": ex.usage.completion_tokens,
                        "cost_usd": ex.usage.cost_usd,
                        "turns": ex.turns,
                        "stop": ex.stop,
                        "error": (ex.error or "")[:200] or None,
                        "seconds": round(time.perf_counter() - t0, 2),
                    }
                    _append(runs, row)
                    n_new += 1
            if (task.id, "pool", "auction") not in done and i // groups < auction_per_bin:
                t0 = time.perf_counter()
                bids = [await a.bid(task) for a in agents.values()]
                plans = [(b.agent, b.plan) for b in bids if b.rejected is None and b.plan]
                verdicts = (
                    [
                        await a.judge(task, juror_order(plans, a.name, task.id))
                        for a in agents.values()
                    ]
                    if len(plans) > 1
                    else []
                )
                _append(
                    runs,
                    {
                        "task": task.id,
                        "dataset": dataset_of(task),
                        "bin": task.bin,
                        "agent": "pool",
                        "arm": "auction",
                        "bid_tokens": sum(b.usage.total_tokens for b in bids),
                        "jury_tokens": sum(v.usage.total_tokens for v in verdicts),
                        "seconds": round(time.perf_counter() - t0, 2),
                    },
                )
            el = time.perf_counter() - t_start
            print(
                f"[{i + 1}/{len(tasks)}] {task.id} done; {el / 60:.1f} min elapsed",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for a in agents.values():
            await a.stop()


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _append(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(rows: list[dict], max_turns: int) -> dict[str, Any]:
    """Per (dataset, bin, agent, arm): pass@1 with a bootstrap interval, mean tokens and cost;
    per (dataset, bin): the length label and the auction-overhead ratio."""
    largest = AGENTS[-1]
    runs = [r for r in rows if r["arm"] in ("single", "single_steps", "loop")]
    auction = {r["task"]: r["bid_tokens"] + r["jury_tokens"] for r in rows if r["arm"] == "auction"}
    loop_tokens = {
        r["task"]: r["tokens"] for r in runs if r["agent"] == largest and r["arm"] == "loop"
    }
    single_tokens = {
        r["task"]: r["tokens"] for r in runs if r["agent"] == largest and r["arm"] == "single"
    }
    table: list[dict] = []
    bins: dict[str, dict] = {}
    for name, levels in SAMPLE.items():
        long_from = None
        for b in levels:
            cell = [r for r in runs if r["dataset"] == name and r["bin"] == b]
            if not cell:
                continue
            for agent in AGENTS:
                for arm in ("single", "single_steps", "loop"):
                    rs = [r for r in cell if r["agent"] == agent and r["arm"] == arm]
                    if not rs:
                        continue
                    passed = [float(r["passed"]) for r in rs]
                    table.append(
                        {
                            "dataset": name,
                            "bin": b,
                            "agent": agent,
                            "arm": arm,
                            "tasks": len(rs),
                            "pass_at_1": round(statistics.fmean(passed), 3),
                            "pass_at_1_ci": bootstrap_ci(passed),
                            "mean_tokens": round(statistics.fmean(r["tokens"] for r in rs), 1),
                            "mean_turns": round(statistics.fmean(r["turns"] for r in rs), 2),
                            "cost_usd": round(sum(r["cost_usd"] for r in rs), 6),
                        }
                    )
            ids = sorted({r["task"] for r in cell})
            lt = [loop_tokens[t] for t in ids if t in loop_tokens]
            ratios = [
                auction[t] / loop_tokens[t] for t in ids if t in auction and loop_tokens.get(t)
            ]
            sratios = [
                auction[t] / single_tokens[t] for t in ids if t in auction and single_tokens.get(t)
            ]
            med = statistics.median(lt) if lt else None
            if med is not None and med >= LONG_TOKENS and long_from is None:
                long_from = b
            bins[f"{name}/{b}"] = {
                "dataset": name,
                "domain": DOMAIN[name],
                "bin": b,
                "tasks": len(ids),
                "largest_loop_tokens_median": med,
                "largest_single_tokens_median": _median(
                    [single_tokens[t] for t in ids if t in single_tokens]
                ),
                "auction_tokens_median": _median([auction[t] for t in ids if t in auction]),
                "overhead_vs_loop_median": round(statistics.median(ratios), 3) if ratios else None,
                "overhead_vs_single_median": round(statistics.median(sratios), 3)
                if sratios
                else None,
                "length": None,
            }
        for b in levels:
            key = f"{name}/{b}"
            if key in bins:
                bins[key]["length"] = (
                    "long" if long_from is not None and b >= long_from else "short"
                )
    curve = [
        {
            "task": t,
            "dataset": next(r["dataset"] for r in runs if r["task"] == t),
            "execution_tokens": loop_tokens[t],
            "auction_tokens": auction[t],
            "ratio": round(auction[t] / loop_tokens[t], 3),
        }
        for t in sorted(auction)
        if loop_tokens.get(t)
    ]
    auctions = list(auction.values())
    return {
        # the execution length at which the median auction would cost as much as the execution,
        # and at which it would be 25 % of it (issue 15's target on long bins)
        "auction_tokens_median": _median(auctions),
        "break_even_execution_tokens": _median(auctions),
        "quarter_overhead_execution_tokens": 4 * _median(auctions) if auctions else None,
        "max_turns": max_turns,
        "long_tokens": LONG_TOKENS,
        "agents": list(AGENTS),
        "tasks": len({r["task"] for r in runs}),
        "table": table,
        "bins": bins,
        "curve": curve,
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Auction overhead (tokens before execution / execution tokens) against execution length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    colors = {
        "humaneval": "tab:blue",
        "reasoning_gym": "tab:orange",
        "word_problems": "tab:green",
        "humaneval_modules": "tab:purple",
        "word_problem_sets": "tab:olive",
    }
    for name, c in colors.items():
        pts = [p for p in summary["curve"] if p["dataset"] == name]
        if pts:
            ax.scatter(
                [p["execution_tokens"] for p in pts],
                [p["ratio"] for p in pts],
                s=18,
                alpha=0.7,
                color=c,
                label=name,
            )
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.axhline(0.25, color="tab:red", lw=0.8, ls=":", label="auction = 25 % of execution")
    xs = [p["execution_tokens"] for p in summary["curve"]] or [1]
    xgrid = [min(xs) * (max(xs) / min(xs)) ** (i / 50) for i in range(51)]
    med = (
        statistics.median(p["auction_tokens"] for p in summary["curve"]) if summary["curve"] else 0
    )
    ax.plot(xgrid, [med / x for x in xgrid], color="black", lw=0.8, label="median auction / x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("execution tokens, largest agent with the loop (all turns)")
    ax.set_ylabel("auction tokens / execution tokens")
    ax.set_title("Where an auction could pay: its overhead against execution length")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-bin", type=int, default=6, help="tasks per (dataset, bin)")
    p.add_argument(
        "--auction-per-bin",
        type=int,
        default=3,
        help="tasks per (dataset, bin) whose auction (bids + jury) is measured; it barely "
        "depends on the task, and it is the slowest part on CPU",
    )
    p.add_argument("--max-turns", type=int, default=4, help="execution.max_turns of the loop arm")
    p.add_argument("--runs", default=str(RESULTS / "agent_loop_runs.jsonl"))
    p.add_argument("--out", default=str(RESULTS / "agent_loop.json"))
    p.add_argument("--png", default=str(RESULTS / "agent_loop_overhead.png"))
    p.add_argument("--only", default="", help="comma-separated datasets of SAMPLE to measure")
    p.add_argument("--replay", action="store_true", help="summarize --runs, call no model")
    args = p.parse_args()
    runs = Path(args.runs)
    if not args.replay:
        only = [x for x in (args.only or "").split(",") if x]
        groups = sum(len(b) for n, b in SAMPLE.items() if not only or n in only)
        tasks = sample(args.per_bin, only)
        asyncio.run(_measure(tasks, runs, args.max_turns, groups, args.auction_per_bin))
    summary = summarize(_read(runs), args.max_turns)
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    if args.png:
        plot(summary, Path(args.png))
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}))


if __name__ == "__main__":
    main()
