"""Ray job: auction a batch of tasks and write auctions.parquet.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/run_auctions.py --dataset humaneval --limit 20 --out runs/job

Top to bottom on purpose: parse, connect (to the job's cluster via RAY_ADDRESS), run, write,
summarise. The same code path as ``sale-ray run``.
"""

from __future__ import annotations

import sys

from sale_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
