"""``sale-ray`` command line: thin wrappers over the same functions the jobs use.

    sale-ray models list | fetch [NAME…] | verify [NAME…]
    sale-ray run (--dataset humaneval | --tasks FILE) [--limit N] --out DIR [--config FILE]
    sale-ray snapshot take | ls URI | show URI | export URI --out FILE | prune URI --keep N
    sale-ray serve [--config FILE] | serve-llm --config FILE [--only NAME ...]
    sale-ray up [--config FILE] [--name N] | status [--name N] [--json] | down [--name N]

User errors (bad task file, bad config, unknown model) print one clear line and exit 2; a model
or infrastructure failure prints its message and exits 1. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from .errors import InfraError, SaleRayError, UserError


def _cmd_models(args: argparse.Namespace) -> int:
    from .agents import catalog

    names = args.names or list(catalog.MODELS)
    if args.action == "list":
        print(f"{'name':<22} {'params':>7} {'$/Mtok':>7}  {'chat':<5} status")
        for name in catalog.MODELS:
            info = catalog.get_model(name)
            st = catalog.model_status(name)
            print(
                f"{name:<22} {info.params_b:>6}B {info.price_per_mtok:>7.3f}  "
                f"{'yes' if info.chat else 'no':<5} {st.describe()}"
            )
        return 0
    for name in names:
        if args.action == "fetch":
            path = catalog.fetch(name)
            print(f"{name}: ready at {path}")
        else:
            path = catalog.assemble(name)
            catalog.verify(name, path, force=True)
            print(f"{name}: sha256 ok ({path})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:

    from .batch import run_batch
    from .config import load_config
    from .runtime import connect
    from .summary import format_summary

    config = load_config(args.config)
    a = config.auctioneer
    config = config.model_copy(
        update={
            "auctioneer": a.model_copy(
                update={
                    "max_in_flight": args.concurrency or a.max_in_flight,
                    "budget_usd": args.budget if args.budget is not None else a.budget_usd,
                }
            )
        }
    )
    if args.tasks:  # streamed (local or s3://), never held whole in memory
        source = args.tasks
    else:
        from .datasets import load_dataset

        source = load_dataset(args.dataset, args.limit)
        if not source:
            raise UserError("no tasks to run")
    print(
        f"sale-ray: agents {[a.name for a in config.pool.agents]}, out {args.out}", file=sys.stderr
    )
    started = connect(args.address)
    try:
        res = asyncio.run(
            run_batch(
                source,
                args.out,
                config,
                limit=(args.limit or None) if args.tasks else None,  # a dataset is cut when loaded
                resume=args.resume,
                progress=not args.no_progress,
            )
        )
    finally:
        if started:
            import ray

            ray.shutdown()
    print(res.describe())
    print(f"wrote {res.path}")
    print(format_summary(res.summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sale-ray", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list, fetch (install + assemble + verify) local models")
    m.add_argument("action", choices=["list", "fetch", "verify"])
    m.add_argument("names", nargs="*", help="model names (default: all)")
    m.set_defaults(func=_cmd_models)

    from .datasets import DATASETS

    r = sub.add_parser("run", help="auction a batch of tasks and write auctions.parquet")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", choices=sorted(DATASETS), help="a shipped benchmark")
    src.add_argument("--tasks", help="task file (.jsonl or .parquet)")
    r.add_argument("--limit", type=int, default=None, help="first N tasks only")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--config", default=None, help="YAML config (default: embedded local pool)")
    r.add_argument("--address", default=None, help="Ray cluster address (default: start local)")
    r.add_argument(
        "--concurrency",
        type=int,
        default=2,
        help="auctions in flight (default 2; 0 = the config's auctioneer.max_in_flight)",
    )
    r.add_argument(
        "--budget",
        type=float,
        default=None,
        help="$ this run may spend (overrides auctioneer.budget_usd)",
    )
    r.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="skip task ids already in --out (default); --no-resume starts afresh",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_run)

    from .evaluation.analytics import add_report_parser
    from .evaluation.cli import add_eval_parser
    from .memory.cli import add_snapshot_parser

    add_eval_parser(sub)  # sale-ray eval: every method on held-out tasks (docs/evaluation.md)
    add_report_parser(sub)  # sale-ray report DIR|s3://…: Markdown + HTML + PNG plots
    add_snapshot_parser(sub)  # sale-ray snapshot take|ls|show|export|prune (docs/memory.md)
    from .service.cli import add_service_parsers

    add_service_parsers(sub)  # sale-ray up | status | down (docs/service.md)
    serve_cli = __import__("sale_ray.serve.cli", fromlist=["_"])
    serve_cli.add_serve_parser(sub)  # sale-ray serve
    serve_cli.add_serve_llm_parser(sub)  # sale-ray serve-llm (docs/serve_llm.md)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"sale-ray: error: {e}", file=sys.stderr)
        return 2
    except (InfraError, SaleRayError) as e:
        if args.debug:
            raise
        print(f"sale-ray: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
