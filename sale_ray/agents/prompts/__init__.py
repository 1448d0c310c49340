"""Prompt templates (package data, ``string.Template`` syntax: ``$name``).

Templates are versioned with the package: ``PROMPT_VERSION`` goes into every auction log so that
results from different prompt sets are never mixed silently.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template

from ...types import Task

PROMPT_VERSION = "1"


@cache
def _template(name: str) -> Template:
    text = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return Template(text.strip())


def render(name: str, **values: object) -> str:
    """Fill template ``name`` (a file ``<name>.txt`` here); a missing value is an error."""
    return _template(name).substitute({k: str(v) for k, v in values.items()})


def task_block(task: Task) -> str:
    """The task as the model is most used to seeing it: code prompts in a python fence.

    Measured on HumanEval with Qwen2.5-Coder-0.5B: the bare prompt under "follow your plan"
    failed tasks the standard "complete this function" framing passes.
    """
    if task.kind == "code":
        return f"Complete the following Python code.\n\n```python\n{task.prompt.rstrip()}\n```"
    return f"TASK:\n{task.prompt}"
