"""A check that needs no examples in the prompt: tests an agent writes for itself.

Most real tasks carry no input/output examples, so the example check
(:func:`~sale_ray.evaluators.code.run_self_check`) can only say whether an answer runs. Here an
agent reads the task — the signature and the description, never the hidden tests — and writes
a few ``assert`` lines; every answer is then run against them in the sandbox. The tests are
written once per task and shared by every answer checked, so their price is paid once.

A written test can itself be wrong (a model's idea of the expected output), so this check has
false alarms as well as misses; ``benchmarks/self_tests.py`` measures both on HumanEval with
the prompts' examples removed (:func:`strip_examples`).
"""

from __future__ import annotations

import ast
import re

from ..config import SandboxConfig
from ..types import Task
from .code import build_program, prompt_examples, python_blocks
from .sandbox import run_python

MAX_TESTS = 5
MAX_ASSERT_CHARS = 400  # one test line; longer ones are prose or a runaway generation
_REPORT = re.compile(r"^SELF-TESTS (\d+)/(\d+) passed$")
# A docstring line where a HumanEval-style prompt starts showing examples.
_MARKER = r"^\s*(>>>|(for\s+)?examples?\b|e\.g\b|input\s*:|output\s*:|{ep}\s*\()"


def strip_examples(task: Task) -> Task | None:
    """``task`` as a user without examples would write it: the entry point's docstring cut at
    the first line that starts showing examples (``>>>``, "For example", a call of the entry
    point, "Input:" ...). None when examples remain visible after the cut (or the prompt has no
    docstring to cut), so a measurement never counts a task whose tests could be copied."""
    ep = task.entry_point
    if task.kind != "code" or not ep:
        return None
    m = re.search(rf"^\s*(async\s+)?def\s+{re.escape(ep)}\s*\(", task.prompt, re.M)
    if m is None:
        return None
    q = re.compile(r'"""|\'\'\'')
    start = q.search(task.prompt, m.end())
    if start is None:
        return None
    end = task.prompt.find(start.group(), start.end())
    if end < 0:
        return None
    body = task.prompt[start.end() : end].split("\n")
    marker = re.compile(_MARKER.format(ep=re.escape(ep)), re.I)
    cut = next((i for i, line in enumerate(body) if marker.match(line)), len(body))
    kept = "\n".join(body[:cut]).rstrip()
    indent = re.match(r"\s*", body[-1]).group() if len(body) > 1 else "    "
    prompt = task.prompt[: start.end()] + kept + "\n" + indent + task.prompt[end:]
    stripped = task.model_copy(update={"prompt": prompt})
    if prompt_examples(stripped) is not None or f"{ep}(" in kept:
        return None
    return stripped


def parse_asserts(text: str, entry_point: str, limit: int = MAX_TESTS) -> list[str]:
    """The usable tests in a model's reply: single-line ``assert`` statements that parse and
    call ``entry_point``, first ``limit`` of them, duplicates dropped. Fenced code wins over
    prose around it."""
    blocks = python_blocks(text)
    source = "\n".join(blocks) if blocks else text
    out: list[str] = []
    for raw in source.splitlines():
        line = raw.strip()
        if not line.startswith("assert ") or len(line) > MAX_ASSERT_CHARS or line in out:
            continue
        try:
            tree = ast.parse(line)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        calls = {
            n.func.id
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        if entry_point in calls:
            out.append(line)
        if len(out) >= limit:
            break
    return out


def self_test_script(asserts: list[str]) -> str:
    """Appended after the solution: runs each test on its own (one failing test does not hide
    the others) and prints ``SELF-TESTS k/n passed``."""
    lines = ["_sr_ok = 0"]
    for a in asserts:
        lines += ["try:", f"    {a}", "    _sr_ok += 1", "except BaseException:", "    pass"]
    lines.append(f'print(f"SELF-TESTS {{_sr_ok}}/{len(asserts)} passed")')
    return "\n".join(lines) + "\n"


def tally(stdout: str) -> tuple[int, int] | None:
    """``(passed, total)`` from a run of :func:`self_test_script`; None when the report is
    missing (the program died before it)."""
    last = (stdout.strip().splitlines() or [""])[-1]
    m = _REPORT.match(last)
    return (int(m.group(1)), int(m.group(2))) if m else None


def run_self_tests(
    task: Task, code: str, asserts: list[str], cfg: SandboxConfig | None = None
) -> tuple[int, int]:
    """Run ``code`` (an answer to ``task``, as :func:`extract_code` returned it) against
    ``asserts`` in the sandbox: ``(passed, total)``. Code that does not run, or dies before the
    report, passed none. ``(0, 0)`` when there are no tests."""
    if not asserts:
        return 0, 0
    if not code.strip():
        return 0, len(asserts)
    program = build_program(task, code) + "\n\n" + self_test_script(asserts)
    result = run_python(program, cfg)
    got = tally(result.stdout) if result.ok else None
    return got if got is not None and got[1] == len(asserts) else (0, len(asserts))
