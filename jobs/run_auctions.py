"""Ray job: auction a batch of tasks into Parquet, resumably.

    ray job submit --address http://127.0.0.1:8265 \\
        --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/run_auctions.py --tasks s3://bucket/tasks.jsonl --out s3://bucket/run1 \\
            --config cluster/pools/openai.yaml --budget 5

Top to bottom on purpose: parse, connect (to the job's cluster via RAY_ADDRESS, or a private
local one), stream the tasks through the auctioneer, write results as they finish, summarise.
Rerunning the same command skips task ids already in ``--out`` (a killed job resumes). The same
code path as ``sale-ray run``; the summary block is the last thing printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from sale_ray.batch import run_batch
from sale_ray.config import load_config
from sale_ray.errors import SaleRayError, UserError
from sale_ray.runtime import connect
from sale_ray.summary import format_summary

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
src = p.add_mutually_exclusive_group(required=True)
src.add_argument("--tasks", help="task file: .jsonl or .parquet, local or s3://")
src.add_argument("--dataset", help="a shipped benchmark (see sale_ray.datasets)")
p.add_argument("--limit", type=int, default=None, help="first N tasks only")
p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
p.add_argument("--config", default=None, help="YAML config (a cluster file's sale_ray: section)")
p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
p.add_argument("--budget", type=float, default=None, help="$ this run may spend")
p.add_argument("--concurrency", type=int, default=None, help="auctions in flight")
p.add_argument(
    "--resume",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="skip task ids already in --out (default)",
)
p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL (not AWS)")
p.add_argument(
    "--flush-every",
    type=int,
    default=1000,
    help="write a results part every N rows (or 5 s): what a crash may redo",
)
p.add_argument("--no-progress", action="store_true")
args = p.parse_args()

try:
    config = load_config(args.config)
    over = {
        k: v
        for k, v in {"budget_usd": args.budget, "max_in_flight": args.concurrency}.items()
        if v is not None
    }
    config = config.model_copy(update={"auctioneer": config.auctioneer.model_copy(update=over)})
    if args.tasks:  # streamed, and counted for the progress bar's total where that is cheap
        source = args.tasks
    else:
        from sale_ray.datasets import load_dataset

        source = load_dataset(args.dataset, args.limit or None)

    started = connect(args.address)
    result = asyncio.run(
        run_batch(
            source,
            args.out,
            config,
            limit=(args.limit or None) if args.tasks else None,  # a dataset is cut when loaded
            resume=args.resume,
            progress=not args.no_progress,
            endpoint_url=args.s3_endpoint,
            flush_rows=args.flush_every,
        )
    )
except UserError as e:
    print(f"run_auctions: error: {e}", file=sys.stderr)
    sys.exit(2)
except SaleRayError as e:
    print(f"run_auctions: failed: {e}", file=sys.stderr)
    sys.exit(1)

print(result.describe())
print(f"wrote {result.path}")
print(format_summary(result.summary))
