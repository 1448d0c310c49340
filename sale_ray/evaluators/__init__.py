"""Verifiers: run generated code in a sandbox, match text answers, self-check on prompt examples."""

from .code import (
    build_program,
    check_solution,
    extract_code,
    failure_detail,
    normalize_answer,
    program_with_tests,
    prompt_examples,
    run_self_check,
)
from .sandbox import SandboxResult, run_python

__all__ = [
    "SandboxResult",
    "build_program",
    "check_solution",
    "extract_code",
    "failure_detail",
    "normalize_answer",
    "program_with_tests",
    "prompt_examples",
    "run_python",
    "run_self_check",
]
