"""Fit the auction weights (w_c, w_h, w_jury...) on the training split of an evaluation matrix.

    python jobs/fit_weights.py runs/eval/matrix.parquet --out weights.yaml [--config base.yaml]

The matrix (``sale-ray eval`` writes it) holds every agent's bid, verdicts and own execution per
task, so the program can ask "which agent should have won" on every training task. Only rows of
the training split are used (``--split all`` to fit on everything, e.g. before deployment). The
program and why it looks the way it does: sale_ray/evaluation/weights.py and docs/evaluation.md.
The output is a config file the auction reads (``sale-ray run --config weights.yaml``).
"""

from __future__ import annotations

import argparse
import json
import sys

import pyarrow.parquet as pq

from sale_ray.config import load_config
from sale_ray.evaluation.matrix import rows_from_table
from sale_ray.evaluation.weights import fit_weights, write_weights


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("matrix", help="matrix.parquet written by `sale-ray eval`")
    p.add_argument("--out", required=True, help="config file to write (YAML)")
    p.add_argument("--config", default=None, help="base config whose weights are replaced")
    p.add_argument("--split", choices=["train", "all"], default="train")
    p.add_argument("--cost-lambda", type=float, default=None, help="(default: config eval)")
    p.add_argument("--objective", choices=["bins", "tasks", "mean"], default=None)
    p.add_argument(
        "--policy",
        choices=["full", "lean", "lean_verify"],
        default="full",
        help="full: every agent bids and judges (the paper). lean: the largest agent is a "
        "reserve that does not bid, only cheaper agents judge. lean_verify: lean, and a cheaper "
        "winner whose answer fails the prompt's examples escalates to the reserve "
        "(the evaluation's sale_lean / sale_lean_verify)",
    )
    args = p.parse_args(argv)

    config = load_config(args.config)
    e = config.eval
    rows = rows_from_table(pq.read_table(args.matrix))
    train = rows if args.split == "all" else [r for r in rows if r.split == "train"]
    if not train:
        print("fit_weights: no training rows in the matrix", file=sys.stderr)
        return 2
    lean = {}
    if args.policy != "full":
        agents = train[0].by_price()
        lean = {
            "reserve": agents[-1],
            "jurors": agents[:-1],
            "verify": args.policy == "lean_verify",
        }
    res = fit_weights(
        train,
        **lean,
        cost_lambda=e.cost_lambda if args.cost_lambda is None else args.cost_lambda,
        objective=args.objective or e.objective,
        alpha=e.minmax_alpha,
        bound=e.weight_bound,
        big_m=e.big_m,
        time_limit_s=e.fit_time_limit_s,
    )
    path = write_weights(
        res,
        args.out,
        config if args.config else None,
        provenance={"matrix": args.matrix, "split": args.split},
    )
    print(
        json.dumps(
            {
                "weights": res.weights.model_dump(),
                "policy": args.policy,
                "reserve": res.policy.reserve,
                "reserve_score": res.policy.reserve_score,
                "status": res.status,
                "train": res.train,
            },
            indent=2,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
