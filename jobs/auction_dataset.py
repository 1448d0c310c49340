"""Ray job: read tasks, auction them and write the auction log, all with Ray Data.

    ray job submit --address http://127.0.0.1:8265 \\
        --working-dir . --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/auction_dataset.py --tasks s3://bucket/tasks.parquet --out s3://bucket/run1 \\
            --config cluster/pools/openai.yaml --budget 5

The Ray Data twin of ``jobs/run_auctions.py`` (same auctioneer, same log layout, so
``sale-ray report OUT`` reads either): ``read_tasks`` -> ``auction`` -> ``write_auctions`` of
:mod:`sale_ray.data`, with Ray Data's backpressure between them (docs/data.md). Rerunning
the same command skips task ids already in ``--out``. The summary block is printed last.
"""

from __future__ import annotations

import argparse
import sys

from sale_ray.config import load_config
from sale_ray.data import (
    AuctionSession,
    auction,
    read_tasks,
    user_error,
    without_ids,
    write_auctions,
)
from sale_ray.errors import SaleRayError
from sale_ray.runtime import connect
from sale_ray.sink import ResultSink
from sale_ray.summary import format_summary

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument(
    "--tasks", required=True, help="task file(s) or folder: .jsonl / .parquet, local or s3://"
)
p.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
p.add_argument("--config", default=None, help="YAML config (a cluster file's sale_ray: section)")
p.add_argument("--limit", type=int, default=None, help="first N tasks only")
p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or local)")
p.add_argument("--budget", type=float, default=None, help="$ this run may spend")
p.add_argument("--concurrency", type=int, default=4, help="Ray Data actors calling the auctioneer")
p.add_argument("--batch-size", type=int, default=64, help="tasks per batch (per actor call)")
p.add_argument(
    "--resume",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="skip task ids already in --out (default)",
)
p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint URL (not AWS)")
args = p.parse_args()

try:
    config = load_config(args.config)
    if args.budget is not None:
        a = config.auctioneer.model_copy(update={"budget_usd": args.budget})
        config = config.model_copy(update={"auctioneer": a})
    connect(args.address)
    s3 = dict(endpoint_url=args.s3_endpoint)
    sink = ResultSink(args.out, **s3)
    if not args.resume:
        sink.reset()
    done = sink.done_ids()
    tasks = read_tasks(args.tasks, **s3)
    if args.limit:
        tasks = tasks.limit(args.limit)
    tasks = without_ids(tasks, done)
    with AuctionSession(config) as session:
        records = auction(tasks, session, concurrency=args.concurrency, batch_size=args.batch_size)
        result = write_auctions(records, args.out, **s3)
except Exception as e:  # noqa: BLE001 - sorted into a bad input (2) or a failure (1) below
    user = user_error(e)
    if user is not None:
        print(f"auction_dataset: error: {user}", file=sys.stderr)
        sys.exit(2)
    if isinstance(e, SaleRayError):
        print(f"auction_dataset: failed: {e}", file=sys.stderr)
        sys.exit(1)
    raise

print(
    f"run: {result.rows} rows in the log ({len(done)} were there before), "
    f"to retry {result.retriable} (out of budget or crashed: rerun to continue)"
)
print(f"wrote {result.path}")
print(format_summary(result.summary))
