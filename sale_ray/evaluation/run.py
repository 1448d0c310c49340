"""``sale-ray eval``: every method over the same tasks and the same pool, judged on held-out tasks.

1. **Split** the tasks into train / test by a seeded hash of each task id (a task's split never
   depends on which other tasks run; no test task is ever used in fitting).
2. **Matrix** (:mod:`.matrix`): on Ray, with the response cache on, every agent
   bids, judges and executes its own plan on every task, and is called once directly with the
   task alone (:mod:`.direct`); the hidden tests judge each answer. Only the
   parts the requested methods read are built (``--methods direct``: the direct calls alone).
   Written to ``matrix.parquet`` after each task, so an interrupted run resumes where it stopped,
   and a matrix missing a part (e.g. written before the direct baselines) gets it filled.
3. **Fit** on the training rows only: SALE's weights (MILP, :mod:`.weights`,
   written to ``weights.yaml``), the kNN router, the cascade's thresholds.
   The fitted ``sale_lean_verify`` policy is also written as a runnable config
   (``lean_verify.yaml``: ``sale-ray run --config DIR/lean_verify.yaml``).
4. **Live methods**: SALE with memory changes plans, so it runs real auctions
   (:mod:`.live`: memory warmed with the training auctions, live on the held-out
   tasks). Cached calls make the shared part free. Without the memory's refinement hook it is
   reported as ``sale == sale_no_memory``, marked as such.
5. **Route** the held-out rows with every method -> ``decisions.parquet`` and ``summary.json``
   (``{method: {pass_at_1, cost_usd, largest_share, tasks, ...}}`` plus ``_run``, ``_sale``,
   ``_fit``, ``_ablations``, ``_frontier``, ``_signals``), then the report.
"""

from __future__ import annotations

import asyncio
import json
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..config import SaleConfig
from ..errors import UserError
from ..types import Evaluation, Task
from . import analytics
from .baselines import (
    DIRECT_METHODS,
    REQUIRED_METHODS,
    ROUTERS,
    RouterContext,
    make_router,
)
from .comparison import compare_to_oracle, cost_ratios
from .intervals import method_intervals
from .live import memory_available, sale_with_memory
from .matrix import (
    Decision,
    Split,
    TaskRow,
    decisions_table,
    matrix_table,
)
from .measurement import build_matrix, load_matrix, make_eval_evaluator, same_pool, save_matrix
from .neighbours import Neighbours
from .recommend import ablate, fit_recommended, write_recommended
from .row import direct_view
from .weights import FEATURES, FitResult, fit_with, write_weights

PLAN_METHODS = (
    *REQUIRED_METHODS[:6],
    "sale_default",
    "sale_lean",
    "sale_lean_nojury",
    "sale_lean_verify",
    "sale_published",
    "oracle",
)
DEFAULT_METHODS = (*PLAN_METHODS, *DIRECT_METHODS)
METHOD_GROUPS = {"direct": DIRECT_METHODS, "plan": PLAN_METHODS, "all": DEFAULT_METHODS}
"""Names ``--methods`` expands: ``direct`` runs only the direct calls and their methods."""
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


def expand_methods(names: Sequence[str]) -> list[str]:
    """Method names with the groups of :data:`METHOD_GROUPS` expanded, in order, no repeats."""
    out: list[str] = []
    for n in names:
        for m in METHOD_GROUPS.get(n, (n,)):
            if m not in out:
                out.append(m)
    return out


def matrix_parts(methods: Sequence[str]) -> tuple[bool, bool]:
    """(plan-conditioned cells needed, direct cells needed) for ``methods``."""
    return any(m not in DIRECT_METHODS for m in methods), any(m in DIRECT_METHODS for m in methods)


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
    """Fit on the training rows, route the held-out rows: (decisions, summary extras).

    SALE's weights, the ablations and the cost sweep need plan-conditioned cells; with direct
    methods only they are skipped (no ``_fit``, ``_ablations``, ``_frontier``)."""
    train = [r for r in rows if r.split == "train"]
    test = [r for r in rows if r.split == "test"]
    if not train or not test:
        raise UserError(
            f"need training and held-out tasks (got {len(train)} / {len(test)}); raise --limit"
        )
    extras: dict[str, Any] = {}
    if "sale" in methods:  # the recommended configuration: its fit and its ablations
        view = [direct_view(r) for r in rows]
        extras["_recommend"] = ablate(
            view,
            config.eval.cost_lambda,
            Neighbours(view, config.eval.embedder),
            config.eval.memory_folds,
        )
    if not matrix_parts(methods)[0]:
        ctx = RouterContext(eval=config.eval, default_weights=config.auction.weights)
        return route_all(rows, methods, ctx), extras
    res = fit(train, config)
    ctx = RouterContext(
        eval=config.eval, weights=res.weights, default_weights=config.auction.weights, live=live
    )
    decisions = route_all(rows, methods, ctx)
    extras |= {
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
    lengths: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` document; ``lengths`` (task id -> ``Task.length``) adds each
    method's ``per_length`` figures."""
    largest = rows[0].by_price()[-1]
    table = decisions_table(decisions, largest).to_pylist()
    stats = analytics.method_stats(table, lengths)
    for m, ratios in cost_ratios(stats).items():
        stats[m].update(ratios)
    reference = "largest_direct" if "largest_direct" in stats else "largest"
    for m, ci in method_intervals(table, reference).items():
        stats[m].update(ci)
    out: dict[str, Any] = {m: stats[m] for m in stats}
    sale = {m: compare_to_oracle(stats, m) for m in stats if m.startswith("sale")}
    out["_sale"] = sale
    cached = {
        p: [c.cached.get(p) for r in rows for c in r.cells.values() if p in c.cached]
        for p in ("bid", "jury", "execute")
    }
    cached["direct"] = [d.cached for r in rows for d in r.direct.values()]
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
    from ..service.handle import open_pool

    plan, direct = matrix_parts(methods)
    done = same_pool(
        load_matrix(out / "matrix.parquet"), sorted(a.name for a in config.pool.agents)
    )
    need_live = "sale_published" in methods and memory_available()[0]
    have = {r.task_id: r for r in done}
    complete = all(
        t.id in have and (not plan or have[t.id].cells) and (not direct or have[t.id].direct)
        for t in tasks
    )
    why = memory_available()[1] if "sale_published" in methods else "not requested"
    parts = {"plan": plan, "direct": direct}
    if complete and not need_live:  # all in the matrix file already
        rows = await build_matrix(
            tasks,
            splits,
            None,
            config,
            evaluate or make_eval_evaluator(config),
            done=done,
            progress=False,
            **parts,
        )
        return rows, None, why
    evaluate = evaluate or make_eval_evaluator(config)
    # the running service's agents (its limits and budgets) when one is up, else private ones
    async with open_pool(config) as pool:
        rows = await build_matrix(
            tasks,
            splits,
            pool,
            config,
            evaluate,
            path=out / "matrix.parquet",
            done=done,
            progress=progress,
            **parts,
        )
        live = None
        if need_live:
            train = [r for r in rows if r.split == "train"]
            w = fit(train, config).weights  # the same fit analyse() makes: deterministic
            cfg = config.model_copy(
                update={"auction": config.auction.model_copy(update={"weights": w})}
            )
            live, why = await sale_with_memory(tasks, rows, pool, cfg, evaluate)
        return rows, live, why


def run_info(
    rows: Sequence[TaskRow], config: SaleConfig, dataset: str, methods: Sequence[str]
) -> dict[str, Any]:
    """The ``_run`` section of ``summary.json``: what ran on which tasks and pool."""
    plan, direct = matrix_parts(methods)
    return {
        "dataset": dataset,
        "tasks": len(rows),
        "seed": config.eval.seed,
        "train_tasks": sum(r.split == "train" for r in rows),
        "test_tasks": sum(r.split == "test" for r in rows),
        "test_ids": [r.task_id for r in rows if r.split == "test"],
        "pool": {a: rows[0].prices[a] for a in rows[0].by_price()},
        "largest_agent": rows[0].by_price()[-1],
        "methods": list(methods),
        "matrix_parts": {"plan": plan, "direct": direct},
        "cost_lambda": config.eval.cost_lambda,
    }


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
    """The whole comparison; writes matrix / decisions Parquet, weights.yaml, summary.json.

    ``methods`` may name groups (:data:`METHOD_GROUPS`): ``["direct"]`` calls each agent once
    per task and reports the direct baselines only (no weights.yaml / lean_verify.yaml)."""
    from ..runtime import connect

    methods = expand_methods(methods)
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
    plan, direct = matrix_parts(methods)
    if plan:
        write_weights(
            extras["_fit_result"],
            out / "weights.yaml",
            provenance={"train_tasks": [r.task_id for r in rows if r.split == "train"]},
        )
        write_lean_policy(rows, config, out / "lean_verify.yaml")
    if "sale" in methods:
        train = [direct_view(r) for r in rows if r.split == "train"]
        near = Neighbours(train, config.eval.embedder)
        write_recommended(
            fit_recommended(
                train,
                config.eval.cost_lambda,
                neighbours=near,
                memory_folds=config.eval.memory_folds,
            ),
            config,
            out / "recommended.yaml",
            {"dataset": dataset, "train_tasks": len(train), "seed": config.eval.seed},
        )
    largest = rows[0].by_price()[-1]
    pq.write_table(decisions_table(decisions, largest), out / "decisions.parquet")
    run = run_info(rows, config, dataset, methods) | {
        "seconds": time.time() - t0,
        "sale_memory": live is not None,
        "sale_note": why if live is not None else f"sale_published == sale_no_memory: {why}",
    }
    summary = summarize(rows, decisions, extras, run, {t.id: t.length for t in tasks})
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if report:
        analytics.write_report(str(out))
    return summary


__all__ = [
    "DEFAULT_METHODS",
    "METHOD_GROUPS",
    "PLAN_METHODS",
    "analyse",
    "expand_methods",
    "run_eval",
    "run_info",
    "split_tasks",
    "summarize",
]
