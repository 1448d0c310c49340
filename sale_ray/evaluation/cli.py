"""``sale-ray eval``: the command line over :func:`.run.run_eval`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .baselines import ROUTERS
from .comparison import target_lines
from .run import DEFAULT_METHODS, run_eval


def add_eval_parser(sub: Any) -> None:
    """``sale-ray eval`` (wired into :mod:`sale_ray.cli`)."""
    from ..datasets import DATASETS

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
        help=f"comma-separated, from {','.join(sorted(ROUTERS))}, or a group: "
        "'direct' (only the direct calls: each agent once per task, no plan), 'plan', 'all'",
    )
    e.add_argument("--seed", type=int, default=None, help="split seed (default: config)")
    e.add_argument("--train-fraction", type=float, default=None, help="(default: config)")
    e.add_argument("--cache", default=None, help="response cache folder (default: config)")
    e.add_argument("--address", default=None, help="Ray cluster address (default: start local)")
    e.add_argument("--no-report", action="store_true", help="skip the Markdown/HTML report")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..datasets import load_dataset, load_task_file

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
    """The method table printed at the end of ``sale-ray eval``: cost against the largest agent
    called directly (``x lg-dir``) and against its plan-conditioned run (``x lg-plan``)."""
    lines = [
        f"{'method':<18} {'pass@1':>7} {'cost $':>11} {'x lg-dir':>8} {'x lg-plan':>9} "
        f"{'largest':>8} {'tasks':>6}"
    ]

    def x(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    for m, s in summary.items():
        if not m.startswith("_"):
            lines.append(
                f"{m:<18} {s['pass_at_1']:>7.3f} {s['cost_usd']:>11.6f} "
                f"{x(s.get('cost_vs_largest_direct')):>8} {x(s.get('cost_vs_largest_plan')):>9} "
                f"{s['largest_share']:>8.1%} {s['tasks']:>6}"
            )
    stats = {m: s for m, s in summary.items() if not m.startswith("_")}
    if any(s.get("per_length") for s in stats.values()):
        lines.append("pass@1 (tasks) per task length:")
        for m, s in stats.items():
            per = s.get("per_length", {})
            parts = [f"{k} {v['pass_at_1']:.3f} ({v['tasks']})" for k, v in per.items()]
            lines.append(f"  {m:<16} " + ", ".join(parts))
    for m in ("sale", "sale_published", "sale_lean"):
        if m in stats:
            lines += [f"{m}: {x}" for x in target_lines(stats, m)]
    if summary.get("_run", {}).get("sale_note") and "sale_published" in stats:
        lines.append(f"note: {summary['_run']['sale_note']}")
    return "\n".join(lines)


__all__ = ["add_eval_parser", "cmd_eval", "format_table"]
