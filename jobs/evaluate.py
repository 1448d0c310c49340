"""Ray job: compare SALE with the largest agent, the routers and the oracle on held-out tasks.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/evaluate.py --dataset humaneval --limit 40 --out runs/eval \
        --config benchmarks/eval_local.yaml

Top to bottom on purpose: the same code path as ``sale-ray eval`` (see docs/evaluation.md):
split -> matrix of every agent on every task, plan-conditioned and called directly (cached,
resumable) -> fit on the training split -> route the held-out split with every method ->
summary.json, decisions/matrix Parquet, report. ``--methods direct`` makes only the direct calls
(each agent once per task, no plan) and reports the direct baselines.
"""

from __future__ import annotations

import sys

from sale_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
