"""``sale-ray eval``: every method over the same tasks and the same pool, judged on held-out tasks.

1. **Split** the tasks into train / test by a seeded hash of each task id (a task's split never
   depends on which other tasks run; no test task is ever used in fitting).
2. **Matrix** (:mod:`sale_ray.auction.matrix`): on Ray, with the response cache on, every agent
   bids, judges and executes its own plan on every task; the hidden tests judge each execution.
   Written to ``matrix.parquet`` after each task, so an interrupted run resumes where it stopped.
3. **Fit** on the training rows only: SALE's weights (MILP, :mod:`sale_ray.auction.weights`,
   written to ``weights.yaml``), the kNN router, the cascade's thresholds.
   The fitted ``sale_lean_verify`` policy is also written as a runnable config
   (``lean_verify.yaml``: ``sale-ray run --config DIR/lean_verify.yaml``).
4. **Live methods**: SALE with memory changes plans, so it runs real auctions
   (:mod:`sale_ray.live_eval`: memory warmed with the training auctions, live on the held-out
   tasks). Cached calls make the shared part free. Without the memory's refinement hook it is
   reported as ``sale == sale_no_memory``, marked as such.
5. **Route** the held-out rows with every method -> ``decisions.parquet`` and ``summary.json``
   (``{method: {pass_at_1, cost_usd, largest_share, tasks, ...}}`` plus ``_run``, ``_sale``,
   ``_fit``, ``_ablations``, ``_frontier``, ``_signals``), then the report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from . import analytics
from .auction.baselines import REQUIRED_METHODS, ROUTERS, RouterContext, make_router
from .auction.matrix import (
    Decision,
    Split,
    TaskRow,
    build_row,
    decisions_table,
    matrix_table,
    rows_from_table,
)
from .auction.weights import FEATURES, FitResult, fit_with, write_weights
from .config import SaleConfig
from .errors import UserError
from .live_eval import memory_available, sale_with_memory
from .types import Evaluation, Task

DEFAULT_METHODS = (
    *REQUIRED_METHODS[:6],
    "sale_default",
    "sale_lean",
    "sale_lean_nojury",
    "sale_lean_verify",
    *REQUIRED_METHODS[6:],
)
LAMBDA_SWEEP = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
ABLATIONS = {
    "no_cost": ("entropy", "jury"),
    "no_entropy": ("cost", "jury"),
    "no_jury": ("cost", "entropy"),
    "cost_only": ("cost",),
    "entropy_only": ("entropy",),
    "jury_only": ("jury",),
}
Evaluator = Callable[[Task, str], Awaitable[Evaluation]]


# --- 1. split -------------------------------------------------------------------------------------
def split_tasks(tasks: Sequence[Task], train_fraction: float, seed: int) -> dict[str, Split]:
    """task id -> 'train' | 'test'. Each task's split depends only on (seed, its id), so it never
    changes when tasks are added (``--limit 20`` -> ``--limit 60`` keeps every earlier split)."""

    def u(t: Task) -> float:
        return zlib.crc32(f"{seed}:{t.id}".encode()) / 2**32

    out: dict[str, Split] = {t.id: "train" if u(t) < train_fraction else "test" for t in tasks}
    if len(tasks) >= 2:  # tiny runs: neither split may be empty
        for want in ("train", "test"):
            if want not in out.values():
                # the task closest to the threshold moves
                t = min(tasks, key=lambda t: abs(u(t) - train_fraction))
                out[t.id] = want  # type: ignore[assignment]
    return out


# --- 2. the matrix ----------------------------------------------------------------------------------
def load_matrix(path: Path) -> list[TaskRow]:
    return rows_from_table(pq.read_table(path)) if path.is_file() else []


def save_matrix(rows: Sequence[TaskRow], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(matrix_table(rows), tmp)
    tmp.replace(path)  # a reader never sees half a matrix


async def build_matrix(
    tasks: Sequence[Task],
    splits: dict[str, Split],
    pool: Any,
    config: SaleConfig,
    evaluate: Evaluator,
    *,
    path: Path | None = None,
    done: Sequence[TaskRow] = (),
    progress: bool = True,
) -> list[TaskRow]:
    """Rows for ``tasks`` (in stream order), reusing ``done`` ones and saving to ``path``."""
    from tqdm import tqdm

    a = config.auction
    have = {r.task_id: r for r in done}
    rows: dict[str, TaskRow] = {}
    todo = []
    for i, t in enumerate(tasks):
        if t.id in have:
            rows[t.id] = have[t.id].model_copy(update={"split": splits[t.id], "order": i})
        else:
            todo.append((i, t))
    bar = tqdm(total=len(todo), desc="matrix", unit="task", disable=not progress)
    sem = asyncio.Semaphore(config.eval.task_concurrency)

    async def one(i: int, t: Task) -> None:
        async with sem:
            rows[t.id] = await build_row(
                t,
                pool.handles,
                pool.price_pairs,
                evaluate,
                bid_timeout_s=a.bid_timeout_s,
                jury_timeout_s=a.jury_timeout_s,
                execute_timeout_s=a.execute_timeout_s,
                split=splits[t.id],
                order=i,
            )
        ok = sum(c.passed for c in rows[t.id].cells.values())
        bar.set_postfix_str(f"{t.id}: {ok}/{len(rows[t.id].cells)} agents pass")
        bar.update(1)
        if path is not None:
            save_matrix([rows[x.id] for x in tasks if x.id in rows], path)

    try:
        await asyncio.gather(*(one(i, t) for i, t in todo))
    finally:
        bar.close()
    return [rows[t.id] for t in tasks]


def make_eval_evaluator(config: SaleConfig) -> Evaluator:
    """The batch verifier, except for tasks that carry their own (reasoning-gym's score_answer)."""
    from .batch import make_evaluator
    from .datasets import verify_answer

    base = make_evaluator(config)

    async def evaluate(task: Task, answer: str) -> Evaluation:
        own = verify_answer(task, answer)
        return own if own is not None else await base(task, answer)

    return evaluate


# --- 3 + 5. fit and route -------------------------------------------------------------------------------
def fit(
    train: Sequence[TaskRow],
    config: SaleConfig,
    features: Sequence[str] = FEATURES,
    cost_lambda: float | None = None,
) -> FitResult:
    """SALE's weights on the training rows, with the config's fit settings."""
    over: dict[str, Any] = {"features": features}
    if cost_lambda is not None:
        over["cost_lambda"] = cost_lambda
    return fit_with(train, config.eval, **over)


def route_all(
    rows: Sequence[TaskRow], methods: Sequence[str], ctx: RouterContext
) -> list[Decision]:
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    out = []
    for m in methods:
        router = make_router(m, ctx)
        router.fit(train)
        out += [router.route(r) for r in test]
    return out


def write_lean_policy(rows: Sequence[TaskRow], config: SaleConfig, path: Path) -> Path:
    """The ``sale_lean_verify`` policy fitted on the training rows, as a whole config that
    ``sale-ray run --config`` runs live (reserve agent, chosen jurors, escalation)."""
    train = [r for r in rows if r.split == "train"]
    agents = train[0].by_price()
    res = fit_with(train, config.eval, reserve=agents[-1], jurors=agents[:-1], verify=True)
    return write_weights(
        res,
        path,
        base=config,
        provenance={"policy": "lean_verify", "train_tasks": [r.task_id for r in train]},
    )


def _point(decisions: Sequence[Decision]) -> dict[str, float]:
    n = max(len(decisions), 1)
    return {
        "pass_at_1": sum(d.passed for d in decisions) / n,
        "cost_usd": sum(d.total_cost for d in decisions),
    }


def analyse(
    rows: Sequence[TaskRow],
    config: SaleConfig,
    methods: Sequence[str],
    live: dict[str, Decision] | None = None,
    sweep: bool = True,
) -> tuple[list[Decision], dict[str, Any]]:
    """Fit on the training rows, route the held-out rows: (decisions, summary extras)."""
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    if not train or not test:
        raise UserError(
            f"need training and held-out tasks (got {len(train)} / {len(test)}); raise --limit"
        )
    res = fit(train, config)
    ctx = RouterContext(
        eval=config.eval, weights=res.weights, default_weights=config.auction.weights, live=live
    )
    decisions = route_all(rows, methods, ctx)
    extras: dict[str, Any] = {
        "_fit": {
            "weights": res.weights.model_dump(),
            "status": res.status,
            "objective": res.objective,
            "seconds": res.seconds,
            "train": res.train,
            "settings": res.settings,
        },
        "_fit_result": res,
    }
    abl = {}
    for name, feats in ABLATIONS.items():
        r = fit(train, config, feats)
        c = RouterContext(eval=config.eval, weights=r.weights)
        abl[name] = {
            **_point(route_all(rows, ["sale_no_memory"], c)),
            "weights": r.weights.model_dump(),
        }
    extras["_ablations"] = abl
    if sweep:
        front: dict[str, list[dict[str, float]]] = {"sale_no_memory": [], "knn": []}
        for lam in LAMBDA_SWEEP:
            ev = config.eval.model_copy(update={"cost_lambda": lam})
            w = fit(train, config, cost_lambda=lam).weights
            c = RouterContext(eval=ev, weights=w)
            front["sale_no_memory"].append(
                {"lambda": lam, **_point(route_all(rows, ["sale_no_memory"], c))}
            )
            front["knn"].append({"lambda": lam, **_point(route_all(rows, ["knn"], c))})
        extras["_frontier"] = front
    return decisions, extras


def summarize(
    rows: Sequence[TaskRow],
    decisions: Sequence[Decision],
    extras: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """The ``summary.json`` document."""
    largest = rows[0].by_price()[-1]
    table = decisions_table(decisions, largest).to_pylist()
    stats = analytics.method_stats(table)
    out: dict[str, Any] = {m: stats[m] for m in stats}
    sale = {m: analytics.compare_to_oracle(stats, m) for m in stats if m.startswith("sale")}
    out["_sale"] = sale
    cached = {
        p: [c.cached.get(p) for r in rows for c in r.cells.values() if p in c.cached]
        for p in ("bid", "jury", "execute")
    }
    run["cache_hit_share"] = {
        p: (sum(map(bool, v)) / len(v) if v else None) for p, v in cached.items()
    }
    out["_run"] = run
    out.update({k: v for k, v in extras.items() if not k.startswith("_fit_result")})
    out["_signals"] = analytics.signal_aucs(matrix_table(rows).to_pylist())
    return out


# --- the whole run ------------------------------------------------------------------------------------
async def _live(
    tasks: list[Task],
    splits: dict[str, Split],
    config: SaleConfig,
    out: Path,
    methods: Sequence[str],
    progress: bool,
    evaluate: Evaluator | None,
) -> tuple[list[TaskRow], dict[str, Decision] | None, str]:
    from .runtime import start_agents

    done = load_matrix(out / "matrix.parquet")
    pool_names = sorted(a.name for a in config.pool.agents)
    done = [r for r in done if sorted(r.cells) == pool_names]  # another pool: recompute
    need_live = "sale" in methods and memory_available()[0]
    have = {r.task_id for r in done}
    if all(t.id in have for t in tasks) and not need_live:  # all in the matrix file already
        rows = await build_matrix(
            tasks,
            splits,
            None,
            config,
            evaluate or make_eval_evaluator(config),
            done=done,
            progress=False,
        )
        return rows, None, memory_available()[1] if "sale" in methods else "not requested"
    evaluate = evaluate or make_eval_evaluator(config)
    pool = await start_agents(config)
    try:
        rows = await build_matrix(
            tasks,
            splits,
            pool,
            config,
            evaluate,
            path=out / "matrix.parquet",
            done=done,
            progress=progress,
        )
        live, why = None, memory_available()[1] if "sale" in methods else "not requested"
        if need_live:
            train = [r for r in rows if r.split == "train"]
            w = fit(train, config).weights  # the same fit analyse() makes: deterministic
            cfg = config.model_copy(
                update={"auction": config.auction.model_copy(update={"weights": w})}
            )
            live, why = await sale_with_memory(tasks, rows, pool, cfg, evaluate)
        return rows, live, why
    finally:
        await pool.stop()


def run_eval(
    tasks: list[Task],
    config: SaleConfig,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    address: str | None = None,
    dataset: str = "",
    progress: bool = True,
    report: bool = True,
    evaluate: Evaluator | None = None,
) -> dict[str, Any]:
    """The whole comparison; writes matrix / decisions Parquet, weights.yaml, summary.json."""
    from .runtime import connect

    unknown = [m for m in methods if m not in ROUTERS]
    if unknown:
        raise UserError(f"unknown method(s) {unknown}; choose from {sorted(ROUTERS)}")
    if len({t.id for t in tasks}) != len(tasks):
        raise UserError("task ids must be unique")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"cache": config.cache.model_copy(update={"enabled": True})})
    splits = split_tasks(tasks, config.eval.train_fraction, config.eval.seed)
    t0 = time.time()
    started = connect(address)
    try:
        rows, live, why = asyncio.run(
            _live(tasks, splits, config, out, methods, progress, evaluate)
        )
    finally:
        if started:
            import ray

            ray.shutdown()
    save_matrix(rows, out / "matrix.parquet")
    decisions, extras = analyse(rows, config, methods, live)
    res = extras["_fit_result"]
    write_weights(
        res,
        out / "weights.yaml",
        provenance={"train_tasks": [r.task_id for r in rows if r.split == "train"]},
    )
    write_lean_policy(rows, config, out / "lean_verify.yaml")
    largest = rows[0].by_price()[-1]
    pq.write_table(decisions_table(decisions, largest), out / "decisions.parquet")
    run = {
        "dataset": dataset,
        "tasks": len(rows),
        "seed": config.eval.seed,
        "train_tasks": sum(r.split == "train" for r in rows),
        "test_tasks": sum(r.split == "test" for r in rows),
        "test_ids": [r.task_id for r in rows if r.split == "test"],
        "pool": {a: rows[0].cells[a].price_out for a in rows[0].by_price()},
        "largest_agent": largest,
        "methods": list(methods),
        "cost_lambda": config.eval.cost_lambda,
        "seconds": time.time() - t0,
        "sale_memory": live is not None,
        "sale_note": why if live is not None else f"sale == sale_no_memory: {why}",
    }
    summary = summarize(rows, decisions, extras, run)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if report:
        analytics.write_report(str(out))
    return summary


# --- CLI ------------------------------------------------------------------------------------------------
def add_eval_parser(sub: Any) -> None:
    """``sale-ray eval`` (wired into :mod:`sale_ray.cli`)."""
    from .datasets import DATASETS

    e = sub.add_parser("eval", help="compare SALE with routers and the oracle on held-out tasks")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=sorted(DATASETS), help="a shipped benchmark")
    src.add_argument("--tasks", help="task file (.jsonl or .parquet)")
    e.add_argument("--limit", type=int, default=None, help="first N tasks only")
    e.add_argument("--out", required=True, help="output folder (resumable)")
    e.add_argument("--config", default=None, help="YAML config (default: embedded local pool)")
    e.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, from {','.join(sorted(ROUTERS))}",
    )
    e.add_argument("--seed", type=int, default=None, help="split seed (default: config)")
    e.add_argument("--train-fraction", type=float, default=None, help="(default: config)")
    e.add_argument("--cache", default=None, help="response cache folder (default: config)")
    e.add_argument("--address", default=None, help="Ray cluster address (default: start local)")
    e.add_argument("--no-report", action="store_true", help="skip the Markdown/HTML report")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from .config import load_config
    from .datasets import load_dataset, load_task_file

    config = load_config(args.config)
    ev = {
        k: v
        for k, v in (("seed", args.seed), ("train_fraction", args.train_fraction))
        if v is not None
    }
    config = config.model_copy(update={"eval": config.eval.model_copy(update=ev)})
    if args.cache:
        config = config.model_copy(
            update={"cache": config.cache.model_copy(update={"path": args.cache})}
        )
    tasks = load_task_file(args.tasks) if args.tasks else load_dataset(args.dataset, args.limit)
    if args.tasks and args.limit:
        tasks = tasks[: args.limit]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    s = run_eval(
        tasks,
        config,
        args.out,
        methods=methods,
        address=args.address,
        dataset=args.dataset or args.tasks,
        progress=not args.no_progress,
        report=not args.no_report,
    )
    print(format_table(s), file=sys.stdout)
    print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0


def format_table(summary: dict[str, Any]) -> str:
    """The method table printed at the end of ``sale-ray eval``."""
    lines = [f"{'method':<16} {'pass@1':>7} {'cost $':>11} {'largest':>8} {'tasks':>6}"]
    for m, s in summary.items():
        if not m.startswith("_"):
            lines.append(
                f"{m:<16} {s['pass_at_1']:>7.3f} {s['cost_usd']:>11.6f} "
                f"{s['largest_share']:>8.1%} {s['tasks']:>6}"
            )
    stats = {m: s for m, s in summary.items() if not m.startswith("_")}
    for m in ("sale", "sale_lean"):
        if m in stats:
            lines += [f"{m}: {x}" for x in analytics.target_lines(stats, m)]
    if summary.get("_run", {}).get("sale_note"):
        lines.append(f"note: {summary['_run']['sale_note']}")
    return "\n".join(lines)


__all__ = ["DEFAULT_METHODS", "analyse", "run_eval", "split_tasks", "summarize"]
