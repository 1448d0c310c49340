"""The offline evaluation (``sale-ray eval``) and its reports (``sale-ray report``).

Every method over the same tasks and the same pool, judged on held-out tasks; the decision is
the live auction's own (:mod:`sale_ray.auction.policy`, replayed), so the evaluation measures
exactly what production runs. docs/evaluation.md tells the protocol.

    run.py            run_eval: split, matrix, fit, live methods, route, summary.json, report
    cli.py            ``sale-ray eval``: the command line over run_eval, the result table
    row.py            one matrix row: a task, each agent's Cell (bid, verdict, own execution)
    matrix.py         the evaluation matrix: rows built with the protocol, Decision, Parquet form
    direct.py         direct calls: each agent once with the task alone (the direct baselines)
    measurement.py    the matrix on Ray: built part by part, saved per task, resumed
    baselines.py      the routers SALE is compared with, one interface, one registry (ROUTERS)
    weights.py        the weight fit (MILP, HiGHS) and its replay through the live policy
    recommend.py      the recommended configuration (bid: answer): trust, ladder and threshold
                      fitted on the training split, its ablations, recommended.yaml
    intervals.py      bootstrap 95 % intervals, paired by task against largest_direct
    live.py           SALE with memory: real auctions on the held-out stream
    comparison.py     a method against the references: largest agent, oracle, the targets
    signals.py        which signals predict a pass: AUCs over the matrix
    analytics.py      ``sale-ray report``: Parquet logs -> the numbers (DuckDB), write_report
    report_render.py  the report's layout: blocks rendered to Markdown and HTML
    report_plots.py   the report's PNG plots (matplotlib, the ``report`` extra)

Importing this package needs no Ray, no key and no network.
"""

from .analytics import method_stats, write_report
from .baselines import ROUTERS, make_router
from .measurement import build_matrix, load_matrix, save_matrix
from .run import DEFAULT_METHODS, analyse, run_eval, summarize
from .weights import fit_weights, write_weights

__all__ = [
    "DEFAULT_METHODS",
    "ROUTERS",
    "analyse",
    "build_matrix",
    "fit_weights",
    "load_matrix",
    "make_router",
    "method_stats",
    "run_eval",
    "save_matrix",
    "summarize",
    "write_report",
    "write_weights",
]
