"""Long tasks made of short ones: several problems that must all be solved in one execution.

Single HumanEval functions and single word problems are short: the largest local agent finishes
them in a few hundred tokens, so a plan has little to order (benchmarks/agent_loop.py). A *bundle*
asks for k of them at once, with one verifier over all k:

* ``humaneval_modules`` (code): a module of k HumanEval functions. Every function's ``check`` is
  run against it, so the module passes only when all k pass. The prompt's examples cover every
  function, so the agent loop can check them all.
* ``word_problem_sets`` (answer): k GSM-Symbolic word problems; the answer is the sum of their
  k answers (exact integer match).

The bin is the bundle size (bin 0: the smaller k, bin 1: the larger), and the ``length`` label
comes from the measured table in :mod:`sale_ray.problem_sets`, like every shipped set. Seeded and
deterministic; a ``limit`` is a prefix, with the two bins interleaved.
"""

from __future__ import annotations

import json
import random
import re

from .errors import UserError
from .problem_sets import load_humaneval, load_word_problems, task_length
from .types import Task

MODULE_SIZES = (2, 3)  # functions per module, bins 0 and 1
SET_SIZES = (3, 6)  # problems per set, bins 0 and 1
PER_BIN = 30
SEED = 11
_CHECK = re.compile(r"\bdef\s+check\s*\(")


def _interleave(groups: list[list[Task]], limit: int | None) -> list[Task]:
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    out = [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]
    return out[:limit]


def load_humaneval_modules(limit: int | None = None) -> list[Task]:
    """Modules of 2 or 3 HumanEval functions (see the module docstring)."""
    problems = load_humaneval()
    groups = []
    for b, k in enumerate(MODULE_SIZES):
        order = list(problems)
        random.Random(f"{SEED}/modules/{k}").shuffle(order)
        tasks = []
        for i in range(PER_BIN):
            part = order[i * k : (i + 1) * k]
            tests = []
            for j, p in enumerate(part):
                body = p.tests.replace(f"\n\ncheck({p.entry_point})\n", "\n")
                tests.append(
                    _CHECK.sub(f"def check_{j}(", body) + f"\ncheck_{j}({p.entry_point})\n"
                )
            names = ", ".join(f"`{p.entry_point}`" for p in part)
            tasks.append(
                Task(
                    id=f"HumanEvalModule/{k}/{i}",
                    prompt="\n\n".join(p.prompt.rstrip() for p in part) + "\n",
                    kind="code",
                    entry_point=part[-1].entry_point,
                    tests="\n\n".join(tests),
                    bin=b,
                    length=task_length("humaneval_modules", b),
                    metadata={
                        "dataset": "humaneval_modules",
                        "parts": ",".join(p.id for p in part),
                        "functions": names,
                    },
                )
            )
        groups.append(tasks)
    return _interleave(groups, limit)


def load_word_problem_sets(limit: int | None = None) -> list[Task]:
    """Sets of 3 or 6 word problems whose answer is the sum of theirs (see the docstring)."""
    problems = [p for p in load_word_problems() if _integer(p.expected)]
    groups = []
    for b, k in enumerate(SET_SIZES):
        order = list(problems)
        random.Random(f"{SEED}/sets/{k}").shuffle(order)
        tasks = []
        for i in range(PER_BIN):
            part = order[i * k : (i + 1) * k]
            text = "\n\n".join(
                f"Problem {j + 1}: " + _strip_format(p.prompt) for j, p in enumerate(part)
            )
            total = sum(int(float(p.expected or 0)) for p in part)
            tasks.append(
                Task(
                    id=f"gsmset/{k}/{i}",
                    prompt=(
                        f"Solve all {k} problems below, then give the sum of their {k} answers "
                        f"as a single number.\n\n{text}"
                    ),
                    kind="answer",
                    expected=str(total),
                    bin=b,
                    length=task_length("word_problem_sets", b),
                    metadata={
                        "dataset": "word_problem_sets",
                        "parts": json.dumps([p.id for p in part]),
                        "answers": json.dumps([p.expected for p in part]),
                    },
                )
            )
        groups.append(tasks)
    return _interleave(groups, limit)


def _integer(value: str | None) -> bool:
    try:
        return value is not None and float(value) == int(float(value))
    except ValueError:
        return False


def _strip_format(prompt: str) -> str:
    """The problem without GSM-Symbolic's per-problem answer-format line (the set asks for one
    number overall)."""
    return re.sub(r"\s*Give the result as your final answer\..*$", "", prompt, flags=re.S).strip()
