"""Tasks in and out: user task files (JSONL / Parquet) and the shipped datasets by name
(:data:`DATASETS`: the problem sets of :mod:`.problem_sets`, the long bundles of :mod:`.bundles`).

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

from .bundles import load_humaneval_modules, load_word_problem_sets
from .config import format_validation_error
from .errors import TaskValidationError, UserError
from .problem_sets import (  # verify_answer: its old home (benchmarks/ import it from here)
    load_humaneval,
    load_reasoning_gym,
    load_word_problems,
    verify_answer,  # noqa: F401
)
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


# --- shipped datasets, by name ------------------------------------------------------------------
DATASETS: dict[str, Callable[[int | None], list[Task]]] = {
    "humaneval": load_humaneval,
    "reasoning_gym": load_reasoning_gym,
    "word_problems": load_word_problems,
    "humaneval_modules": load_humaneval_modules,
    "word_problem_sets": load_word_problem_sets,
}


def load_dataset(name: str, limit: int | None = None) -> list[Task]:
    """A shipped benchmark by name (see :data:`DATASETS`), first ``limit`` tasks."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}") from None
    return loader(limit)
