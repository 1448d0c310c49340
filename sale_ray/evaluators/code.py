"""Judge an answer: sandboxed tests for ``code`` tasks, normalised exact match for ``answer`` tasks.

Also the executing agent's *self-check*: the doctest-style examples that are visible in a prompt,
turned into a script it may run on its own code. The hidden ``task.tests`` are never used there.
"""

from __future__ import annotations

import ast
import re

from ..config import SandboxConfig
from ..types import Evaluation, Task
from .harness import judge, summary
from .sandbox import SandboxResult, run_python

MAX_DETAIL_CHARS = 500
MAX_FEEDBACK_CHARS = 1500

# The answer's `if __name__ == "__main__":` demo block must not run (it may call input() or
# unittest.main()); the reference HumanEval harness does not run it either.
_NOT_MAIN = '__name__ = "__sale_ray_solution__"\n'
_FUTURE = re.compile(r"^from\s+__future__\s+import\s+[^\n]*\n?", re.M)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"", "python", "py", "python3", "py3"}


# --- extraction --------------------------------------------------------------------------------
def extract_code(answer: str, entry_point: str | None = None) -> str:
    """The Python source in a model answer.

    Fenced blocks (```python ... ```; an unclosed last fence counts up to the end, as a cut
    answer has one) win over surrounding prose: the first block that defines ``entry_point``,
    else the longest Python block. Without fences the answer is code as it stands — leading
    indentation is kept, because a HumanEval-style completion is a bare, indented function body.
    """
    blocks = python_blocks(answer)
    if not blocks:
        return answer.strip("\n").rstrip() + "\n"
    if entry_point:
        for body in blocks:
            if _defines(body, entry_point):
                return body.rstrip() + "\n"
    return max(blocks, key=len).rstrip() + "\n"


def python_blocks(answer: str) -> list[str]:
    """The bodies of the Python-fenced blocks in ``answer`` (untagged fences count; an
    unclosed last fence runs to the end), in order."""
    return [body for tag, body in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS]


def _defines(code: str, entry_point: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def _compiles(source: str) -> bool:
    try:
        compile(source, "<prompt>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def build_program(task: Task, code: str) -> str:
    """The solution as a runnable module, before tests or examples are appended.

    * The code lacks ``def entry_point``: it is a completion of the prompt (HumanEval style), so
      the prompt goes first.
    * It defines it and the prompt is Python defining it too (signature + docstring): the prompt
      still goes first — it brings imports and helpers the answer may rely on, and the
      answer's ``def`` then replaces the prompt's docstring-only stub.
    * Otherwise (a prose prompt) the code stands alone.
    """
    ep = task.entry_point
    if ep and not _defines(code, ep):
        program = task.prompt + ("" if task.prompt.endswith("\n") else "\n") + code
    elif ep and _defines(task.prompt, ep) and _compiles(task.prompt):
        program = task.prompt.rstrip() + "\n\n\n" + code
    else:
        program = code
    # `from __future__` must open the module, and the prompt (or our prelude) now comes first.
    futures = "".join(ln.rstrip("\n") + "\n" for ln in _FUTURE.findall(program))
    return futures + _NOT_MAIN + _FUTURE.sub("", program)


# --- judging -----------------------------------------------------------------------------------
def normalize_answer(text: str) -> str:
    """Casefolded, whitespace-collapsed, without surrounding space or a trailing period."""
    return " ".join(text.split()).casefold().removesuffix(".").rstrip()


def check_solution(task: Task, answer: str, cfg: SandboxConfig | None = None) -> Evaluation:
    """Judge ``answer`` for ``task``; ``passed=None`` when the task has nothing to check against.

    Code tasks: the extracted code (see :func:`build_program`) runs in one sandbox, ``task.tests``
    in another that calls it (see :mod:`~sale_ray.evaluators.harness`); passed iff the tests'
    sandbox reports that they ran to their end. ``detail`` is a bounded, sanitised summary (the
    limit hit, the exception type and test line — never the program's output); ``isolation``
    lists the layers both sandboxes got. Raises :class:`~sale_ray.errors.SandboxError` only if
    the sandbox cannot run, :class:`~sale_ray.evaluators.isolation.SandboxRefused` when a layer
    of ``cfg.require`` is missing.
    """
    if task.kind == "answer":
        if task.expected is None:
            return Evaluation(passed=None, detail="no expected answer")
        ok = normalize_answer(answer) == normalize_answer(task.expected)
        return Evaluation(passed=ok, detail="exact match" if ok else "answer differs")
    if not task.tests:
        return Evaluation(passed=None, detail="no tests")
    code = extract_code(answer, task.entry_point)
    if not code.strip():
        return Evaluation(passed=False, detail="empty answer")
    verdict = judge(build_program(task, code), task.tests, cfg or SandboxConfig())
    return Evaluation(
        passed=verdict.passed,
        detail=summary(verdict, MAX_DETAIL_CHARS),
        isolation=verdict.isolation,
    )


def failure_detail(result: SandboxResult, limit: int = MAX_DETAIL_CHARS) -> str:
    """A short reason for a failed run: the limit it hit and/or the last lines of stderr.

    For the executing agent's own fix turn (it wrote the code); never shown to callers, who get
    :func:`~sale_ray.evaluators.harness.summary` instead. Control characters are dropped."""
    head = {
        "timeout": "timeout",
        "cpu": "CPU time limit",
        "memory": "memory limit",
        "output": "output limit",
        "file_size": "file size limit",
    }.get(result.killed_reason or "", result.killed_reason or f"exit {result.exit_code}")
    printable = "".join(c for c in result.stderr if c.isprintable() or c == "\n")
    lines = [ln for ln in printable.strip().splitlines() if ln.strip()]
    tail = "\n".join(lines[-4:])
    text = f"{head}: {tail}" if tail else head
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


# --- self-check on the prompt's visible examples -----------------------------------------------
# Prose separators seen in HumanEval prompts between a call and its result, longest first.
# A lone "=" is left out on purpose: prompts use it for definitions ("tri(1) = 3"), not results.
_SEPARATORS = re.compile(r"^\s*(?:#\s*)?(==>|=>|➞|->|==|should\s+return|returns?)\s*", re.I)

_CHECK_HELPERS = """
import math as _sr_math

_sr_failures = []
_sr_total = 0


def _sr_same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        try:
            return _sr_math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-6)
        except TypeError:
            return False
    if isinstance(want, (list, tuple)) and type(got) is type(want):
        return len(got) == len(want) and all(map(_sr_same, got, want))
    return got == want


def _sr_check(src, thunk, want):
    global _sr_total
    _sr_total += 1
    try:
        got = thunk()
    except Exception as e:
        _sr_failures.append(f"{src} raised {type(e).__name__}: {e}")
        return
    if not _sr_same(got, want):
        _sr_failures.append(f"{src} returned {got!r}, expected {want!r}")
"""

_CHECK_REPORT = """
if _sr_failures:
    import sys as _sr_sys
    print(f"{len(_sr_failures)} of {_sr_total} examples failed:", file=_sr_sys.stderr)
    for _sr_line in _sr_failures:
        print("  " + _sr_line[:300], file=_sr_sys.stderr)
    _sr_sys.exit(1)
print(f"all {_sr_total} examples passed")
"""


def _literal(src: str) -> str | None:
    """``src`` if it is a Python literal (then it is safe to embed and compare), else None.

    A parenthesised non-tuple such as ``("Venus")`` is ambiguous (a 1-tuple was probably
    meant), so it does not count.
    """
    src = src.strip()
    try:
        value = ast.literal_eval(src)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    if src.startswith("(") and not isinstance(value, tuple):
        return None
    return src


def _call_with_literals(src: str, names: set[str]) -> bool:
    """``src`` is one call of a known function whose arguments are all literals."""
    try:
        node = ast.parse(src.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return False
    if node.func.id not in names:
        return False
    args = list(node.args) + [k.value for k in node.keywords]
    return all(_literal(ast.unparse(a)) is not None for a in args)


def _balanced_call(line: str, start: int) -> int | None:
    """Index just past the ``)`` that closes the call whose ``(`` follows ``start``."""
    depth, quote = 0, ""
    for i in range(line.index("(", start), len(line)):
        ch = line[i]
        if quote:
            if ch == quote and line[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _examples(prompt: str, names: set[str]) -> list[tuple[str, str]]:
    """(call, expected) pairs: ``>>> call`` + output line, or ``call SEP expected`` prose lines.

    Only calls of the prompt's own functions with literal arguments, and literal expected values
    are kept: a misparsed example would tell the agent its correct code is wrong.
    """
    pairs: list[tuple[str, str]] = []
    lines = prompt.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith(">>>"):
            call = line[3:].strip()
            want = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if want.startswith(">>>") or not want or '"""' in want or "'''" in want:
                continue
            if _call_with_literals(call, names) and _literal(want) is not None:
                pairs.append((call, want))
            continue
        for name in names:
            m = re.search(rf"(?<![\w.]){re.escape(name)}\(", line)
            if not m or line.lstrip("* ").startswith("def "):
                continue
            end = _balanced_call(line, m.start())
            if end is None:
                continue
            call = line[m.start() : end]
            sep = _SEPARATORS.match(line[end:])
            if not sep:
                continue
            want = re.split(r"\s#|\s\(", line[end + sep.end() :])[0].strip().rstrip(".").strip()
            if _call_with_literals(call, names) and _literal(want) is not None:
                pairs.append((call, want))
            break
    return list(dict.fromkeys(pairs))


def prompt_examples(task: Task) -> str | None:
    """A self-check script built from the examples visible in a (HumanEval-style) prompt.

    Each example ``>>> f(x)`` / ``y`` (or ``f(x) ==> y`` in prose) becomes a check that
    ``f(x) == y`` (floats approximately). The script records every failure, prints them to stderr
    and exits 1; append it after the solution. None when the prompt shows no usable example.
    """
    if task.kind != "code":
        return None
    names = {task.entry_point} if task.entry_point else set()
    try:
        tree = ast.parse(task.prompt)
        names |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass  # a prose prompt: only the entry point's examples count
    pairs = _examples(task.prompt, names)
    if not pairs:
        return None
    checks = [f"_sr_check({call!r}, lambda: {call}, {want})" for call, want in pairs]
    return _CHECK_HELPERS + "\n" + "\n".join(checks) + "\n" + _CHECK_REPORT


def examples_passed(stdout: str) -> bool:
    """Whether a run of :func:`prompt_examples`' script reported every example passed."""
    last = (stdout.strip().splitlines() or [""])[-1]
    return last.startswith("all ") and last.endswith(" examples passed")


def run_self_check(task: Task, code: str, cfg: SandboxConfig | None = None) -> tuple[bool, str]:
    """Run ``code`` on the prompt's visible examples: ``(ok, feedback for a fix turn)``.

    ``code`` is what :func:`extract_code` returned. A prompt without examples can only check
    that the code runs at all (imports, syntax, top-level errors).
    """
    if task.kind != "code":
        return True, "not a code task"
    if not code.strip():
        return False, "the answer contains no code"
    script = prompt_examples(task)
    program = build_program(task, code) + "\n\n" + (script or "")
    result = run_python(program, cfg)
    if result.ok and not script:
        return True, "the code runs"
    if result.ok and examples_passed(result.stdout):
        return True, result.stdout.strip().splitlines()[-1]
    if result.ok:
        return False, "the program exited before its examples were checked"
    text = failure_detail(result, MAX_FEEDBACK_CHARS)
    if script and result.killed_reason is None and "examples failed" in result.stderr:
        text = result.stderr.strip()[-MAX_FEEDBACK_CHARS:]
    return False, text
