"""Routing on tasks nobody tuned on: the shipped fit, run unchanged on tasks past the shipped matrix.

    python benchmarks/unseen.py [--json]
    python benchmarks/unseen.py --take runs/eval-humaneval-164/matrix.parquet --dataset humaneval

Every mechanism, threshold and default of the product was chosen while looking at the shipped
80-task matrices (``benchmarks/results/eval-<dataset>/``), held-out split included. The tasks
past them were never looked at: ``sale-ray eval --methods direct --limit N`` measured them
later, and ``--take`` keeps only those tasks as ``benchmarks/results/unseen-<dataset>/
matrix.parquet`` (their responses join the shipped cache, so the run resumes anywhere).

On each domain with an unseen matrix, nothing is refitted: every router is fitted on the
shipped matrix's training split, as ``benchmarks/economics.py`` fits it, and scored on every
unseen task (paired bootstrap intervals against the largest agent called directly, the issue's
targets). Also: the embedded default (``sale_ray/recommended.yaml``), the configuration fitted
on the other domain, and ``sale`` with a memory of all 80 shipped tasks (a service keeps every
past auction; the fit's own memory is the training split). Written to
``benchmarks/results/unseen.json`` and ``unseen_summary_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from economics import (  # noqa: E402
    CONFIG,
    DOMAINS,
    RESULTS,
    ROOT,
    embedded,
    fit_training,
    held_out,
    matrix_path,
    method_figures,
    transfer,
    verdicts,
)

from sale_ray.config import load_config  # noqa: E402
from sale_ray.evaluation.measurement import load_matrix  # noqa: E402
from sale_ray.evaluation.neighbours import Neighbours  # noqa: E402
from sale_ray.evaluation.run import analyse, expand_methods, run_info, summarize  # noqa: E402


def unseen_matrix(domain: str) -> Path:
    return RESULTS / f"unseen-{domain}" / "matrix.parquet"


def take(source: Path, domain: str) -> Path:
    """``source``'s tasks that the shipped matrix of ``domain`` does not hold, as the unseen
    matrix (the whole file is rewritten: run it again as a long run progresses)."""
    shipped = {r.task_id for r in load_matrix(matrix_path(domain))}
    table = pq.read_table(source)
    known = pa.array(sorted(shipped), pa.string())
    new = table.filter(pc.invert(pc.is_in(table["task_id"], value_set=known)))
    out = unseen_matrix(domain)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(new, out)
    return out


def domain_rows(domain: str) -> tuple[list, list]:
    """(the shipped training rows + every unseen row as held out, the shipped rows)."""
    shipped = load_matrix(matrix_path(domain))
    unseen = load_matrix(unseen_matrix(domain))
    train = [r for r in shipped if r.split == "train"]
    return train + [r.model_copy(update={"split": "test"}) for r in unseen], shipped


def domain_report(domain: str, near: Neighbours, others: dict[str, list]) -> dict:
    rows, shipped = domain_rows(domain)
    cfg = load_config(CONFIG)
    methods = expand_methods(["direct"])
    decisions, extras = analyse(rows, cfg, methods)
    run = run_info(rows, cfg, domain, methods) | {
        "unseen_from": str(unseen_matrix(domain).relative_to(ROOT)),
        "fitted_on": str(matrix_path(domain).relative_to(ROOT)) + " (training split)",
    }
    s = summarize(rows, decisions, extras, run)
    (RESULTS / f"unseen_summary_{domain}.json").write_text(json.dumps(s, indent=2, default=str))
    lam = cfg.eval.cost_lambda
    fit = fit_training(rows, lam, near)
    # a service's memory holds every past auction: all 80 shipped tasks, not only the training
    # split the fit read (the chosen k, thresholds and trust unchanged)
    everything = [r.model_copy(update={"split": "train"}) for r in shipped]
    grown = everything + [r for r in rows if r.split == "test"]
    return {
        "tasks": s["_run"]["test_tasks"],
        "first": s["_run"]["test_ids"][0],
        "last": s["_run"]["test_ids"][-1],
        "methods": method_figures({m: v for m, v in s.items() if not m.startswith("_")}),
        "targets": verdicts(s),
        "chosen": s["_recommend"]["fit"]["chosen"],
        "memory_cv": s["_recommend"]["fit"].get("memory_cv"),
        "ablations": s["_recommend"]["ablations"],
        "embedded_default": embedded(rows, near),
        "memory_of_all_shipped": held_out("sale_memory_all", grown, fit.policy(), near),
        "transfer": {f"{o}->{domain}": transfer(v, rows, lam, near) for o, v in others.items()},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the document")
    ap.add_argument("--take", type=Path, help="a longer run's matrix.parquet: keep its new tasks")
    ap.add_argument("--dataset", choices=DOMAINS, help="the domain --take's matrix is of")
    args = ap.parse_args()
    if args.take:
        if not args.dataset:
            ap.error("--take needs --dataset")
        out = take(args.take, args.dataset)
        print(f"wrote {out.relative_to(ROOT)} ({len(load_matrix(out))} unseen tasks)")
    near = Neighbours(embedder=load_config(CONFIG).eval.embedder)
    shipped = {d: load_matrix(matrix_path(d)) for d in DOMAINS if matrix_path(d).exists()}
    doc: dict = {"domains": {}}
    for d in DOMAINS:
        if not unseen_matrix(d).exists():
            continue
        others = {o: v for o, v in shipped.items() if o != d}
        doc["domains"][d] = domain_report(d, near, others)
    (RESULTS / "unseen.json").write_text(json.dumps(doc, indent=2, default=str))
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    for d, v in doc["domains"].items():
        s, ref = v["methods"]["sale"], v["methods"]["largest_direct"]
        print(
            f"{d} ({v['tasks']} unseen tasks): sale pass@1 {s['pass_at_1']:.3f} vs largest_direct "
            f"{ref['pass_at_1']:.3f}, diff CI {s['pass_at_1_diff_ci']}, "
            f"cost x{s['cost_vs_largest_direct']:.2f}; dominated by {v['targets']['dominated_by']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
