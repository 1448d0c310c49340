"""Tools the executing agent may call from its loop (agents/loop.py), behind one seam.

A tool is called by a fenced block whose label is the tool's name (```python … ```). It gets
the task and the block's text and returns a :class:`ToolOutput`; the loop bounds that output,
wraps it as data and feeds it back. Adding a tool is adding a class here and its name to
:data:`TOOLS` — the loop does not change (the calculator below is the proof).

* ``python`` — the sandboxed runner (evaluators/workbench.py): the verifier's containment,
  started by the broker actor where Ray is up.
* ``calculator`` — exact arithmetic on one expression per line, evaluated here over a parsed
  tree (no code runs), for models that should not need a whole program to add numbers.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from fractions import Fraction
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from ..config import SandboxConfig
from ..types import Task


class ToolOutput(BaseModel):
    """What a tool call gave back, before the loop bounds it."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="What the model reads: output, then errors.")
    ok: bool = Field(description="The call succeeded (python: exit 0 and the examples passed).")
    examples: str | None = Field(
        default=None, description="python on a code task: 'passed' / 'failed' / None (none)."
    )


class Tool(Protocol):
    """The seam. ``name`` is the fence label that calls it; ``usage`` is its line in the prompt."""

    name: str
    usage: str

    async def run(self, task: Task, source: str) -> ToolOutput: ...


class PythonTool:
    """Runs the block in the sandbox (code tasks: with the prompt's own examples after it)."""

    name = "python"
    usage = (
        "```python``` runs the block in a sandbox (no network, no files kept) and shows its output"
    )

    def __init__(self, sandbox: SandboxConfig) -> None:
        self.sandbox = sandbox

    async def run(self, task: Task, source: str) -> ToolOutput:
        from ..evaluators.broker import contained

        r = await contained("run_tool_code", task, source, self.sandbox, cfg=self.sandbox)
        parts = [r.stdout.rstrip()] if r.stdout.strip() else []
        if r.stderr.strip():
            parts.append("stderr:\n" + r.stderr.rstrip())
        if r.examples == "passed":
            parts.append("The task's examples all passed.")
        elif r.examples == "failed" and "examples failed" not in r.stderr:
            parts.append("The program stopped before the task's examples were all checked.")
        text = "\n".join(parts) or "(no output)"
        return ToolOutput(text=text, ok=r.ok, examples=r.examples)


_BINARY: dict[type, Callable] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 1000  # 10**1000 is fine; 10**10**10 would hold the loop for minutes
_MAX_LINES = 50
_MAX_BITS = 20_000  # about 6,000 digits


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > _MAX_EXPONENT:
                raise ValueError("exponents must be whole numbers up to 1000")
            value = left ** int(right)
            if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
                raise ValueError("the result is too large")
            return value
        if right == 0 and isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            raise ValueError("division by zero")
        value = Fraction(_BINARY[type(node.op)](left, right))
        if value.numerator.bit_length() > _MAX_BITS:
            raise ValueError("the result is too large")
        return value
    raise ValueError(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    f = float(value)
    return repr(f) if math.isfinite(f) else str(value)


class CalculatorTool:
    """Exact arithmetic, one expression per line; each line is answered ``expr = value``."""

    name = "calculator"
    usage = "```calculator``` evaluates arithmetic, one expression per line (+ - * / // % ** ( ))"

    def __init__(self, sandbox: SandboxConfig | None = None) -> None:
        del sandbox  # nothing to contain: no code runs

    async def run(self, task: Task, source: str) -> ToolOutput:
        lines = [ln.strip() for ln in source.splitlines() if ln.strip()][:_MAX_LINES]
        out, ok = [], bool(lines)
        for line in lines:
            try:
                out.append(f"{line} = {_show(_evaluate(ast.parse(line, mode='eval')))}")
            except (SyntaxError, ValueError, ZeroDivisionError, OverflowError) as e:
                out.append(f"{line} -> error: {e}")
                ok = False
        return ToolOutput(text="\n".join(out) or "(no expression)", ok=ok)


#: Tool names a config may list (``execution.tools``) and the class behind each.
TOOLS: dict[str, Callable[[SandboxConfig], Tool]] = {
    "python": PythonTool,
    "calculator": CalculatorTool,
}


def make_tools(names: list[str], sandbox: SandboxConfig) -> dict[str, Tool]:
    """The named tools, keyed by the fence label that calls them (config validates the names)."""
    return {name: TOOLS[name](sandbox) for name in names}


def bound(text: str, max_chars: int) -> str:
    """``text`` cut to about ``max_chars``, keeping its head and its tail (an error's traceback
    ends where the cause is), with what was cut said in the middle."""
    if len(text) <= max_chars:
        return text
    half = max(1, max_chars // 2)
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut ...]\n{text[-half:]}"
