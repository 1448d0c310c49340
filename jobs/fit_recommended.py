"""Fit the recommended configuration on the training splits of evaluation matrices and write it
as the embedded default's auction (``sale_ray/recommended.yaml``).

    python jobs/fit_recommended.py benchmarks/results/eval-humaneval/matrix.parquet \\
        benchmarks/results/eval-reasoning_gym/matrix.parquet --out sale_ray/recommended.yaml

Every matrix's training rows (its own seeded split) are pooled: one ladder, one threshold and one
set of trust figures per agent for every domain the embedded pool is used on. Only the policy
fields are written; every other setting keeps its default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from sale_ray.config import POLICY_FIELDS, EvalConfig
from sale_ray.evaluation.measurement import load_matrix
from sale_ray.evaluation.neighbours import Neighbours
from sale_ray.evaluation.recommend import fit_recommended, recommended_auction
from sale_ray.evaluation.row import direct_view


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("matrices", nargs="+", help="matrix.parquet files of `sale-ray eval` runs")
    ap.add_argument("--out", default="sale_ray/recommended.yaml")
    ap.add_argument("--cost-lambda", type=float, default=EvalConfig().cost_lambda)
    ap.add_argument("--embedder", default=EvalConfig().embedder, help="task-text embedder")
    ap.add_argument(
        "--memory-folds",
        type=int,
        default=EvalConfig().memory_folds,
        help="cross-validation folds that decide whether memory is read (eval.memory_folds)",
    )
    args = ap.parse_args(argv)
    train = []
    for m in args.matrices:
        rows = load_matrix(Path(m))
        train += [direct_view(r) for r in rows if r.split == "train"]
    near = Neighbours(train, args.embedder)  # outcome memory is a candidate mechanism
    fit = fit_recommended(train, args.cost_lambda, neighbours=near, memory_folds=args.memory_folds)
    auction = recommended_auction(fit)
    policy = {k: auction[k] for k in POLICY_FIELDS if k.startswith(("bid", "answer", "accept"))}
    head = [
        "# The embedded default's auction: the recommended configuration (docs/economics.md).",
        f"# Fitted by jobs/fit_recommended.py on {len(train)} training tasks of: "
        + ", ".join(args.matrices),
        f"# chosen: bid: answer, {fit.chosen.describe()}; training pass@1 "
        f"{fit.chosen.pass_at_1:.3f}, loss {fit.chosen.loss:.4f} (cost_lambda {args.cost_lambda})",
        f"# outcome memory, cross-validated on the training tasks: {fit.memory_cv}",
    ]
    out = Path(args.out)
    out.write_text("\n".join(head) + "\n" + yaml.safe_dump({"auction": policy}, sort_keys=False))
    print(f"wrote {out}: {fit.chosen.describe()}")
    return out


if __name__ == "__main__":
    main()
