"""Verifiers: run generated code in a sandbox, match text answers, self-check on prompt examples."""

from .code import (
    build_program,
    check_solution,
    extract_code,
    failure_detail,
    normalize_answer,
    prompt_examples,
    run_self_check,
)
from .harness import Verdict, judge
from .isolation import SandboxRefused
from .sandbox import SandboxResult, run_python

__all__ = [
    "SandboxRefused",
    "SandboxResult",
    "Verdict",
    "build_program",
    "check_solution",
    "extract_code",
    "judge",
    "failure_detail",
    "normalize_answer",
    "prompt_examples",
    "run_python",
    "run_self_check",
]
