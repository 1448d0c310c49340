"""The agent loop's Python tool, on the verifier's side of the seam: run what the model wrote.

A code task's block is its candidate solution: it runs as the verifier would build it (the
prompt first where the block only completes it), followed by the prompt's own examples, so one
run answers "does it run, and does it do what the examples say". An answer task's block is a
computation: it runs as written and its output is what the model reads back. Either way the run
is the same sandbox as the verifier's (sandbox.py), started by the broker where Ray is up, and
the hidden ``task.tests`` are never used.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..config import SandboxConfig
from ..types import Task
from .code import build_program, examples_passed, failure_detail, prompt_examples
from .sandbox import run_python


class ToolRun(BaseModel):
    """What one tool call did, as the loop needs it."""

    model_config = ConfigDict(frozen=True)

    ok: bool = Field(description="Exited 0 in time (code tasks: and every example passed).")
    stdout: str = ""
    stderr: str = ""
    examples: str | None = Field(
        default=None,
        description="Code tasks with examples in the prompt: 'passed' or 'failed'; else None.",
    )
    limit: str | None = Field(default=None, description="The sandbox limit it hit, if any.")
    isolation: list[str] = Field(default_factory=list)


def run_tool_code(task: Task, source: str, cfg: SandboxConfig | None = None) -> ToolRun:
    """Run one block the model wrote for ``task`` in the sandbox (see the module docstring).

    Never raises because of what the block does; raises what :func:`run_python` raises when the
    sandbox itself cannot run or a required layer is missing.
    """
    cfg = cfg or SandboxConfig()
    script = prompt_examples(task) if task.kind == "code" else None
    program = build_program(task, source) if task.kind == "code" else source
    if script:
        program += "\n\n" + script
    result = run_python(program, cfg)
    examples = None
    if script:
        examples = "passed" if examples_passed(result.stdout) else "failed"
    stderr = result.stderr
    if result.killed_reason is not None:
        stderr = failure_detail(result)  # says which limit; the raw stderr is usually empty
    return ToolRun(
        ok=result.ok and examples != "failed",
        stdout=result.stdout,
        stderr=stderr,
        examples=examples,
        limit=result.killed_reason,
        isolation=list(result.isolation),
    )
