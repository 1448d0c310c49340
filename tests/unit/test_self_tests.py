"""A check that needs no examples: the tests an agent writes for itself, parsed and run."""

from __future__ import annotations

import asyncio

from sale_ray.agents.agent import Agent
from sale_ray.agents.llm import ChatResult
from sale_ray.config import AgentSpec, SaleConfig
from sale_ray.evaluators.code import prompt_examples
from sale_ray.evaluators.self_tests import (
    parse_asserts,
    run_self_tests,
    self_test_script,
    strip_examples,
    tally,
)
from sale_ray.types import Task

PROMPT = '''from typing import List


def add_one(xs: List[int]) -> List[int]:
    """Return the list with every element incremented by 1.
    Keep the order.
    >>> add_one([1, 2])
    [2, 3]
    >>> add_one([])
    []
    """
'''
TASK = Task(id="t", prompt=PROMPT, kind="code", entry_point="add_one")
RIGHT = "def add_one(xs):\n    return [x + 1 for x in xs]\n"
WRONG = "def add_one(xs):\n    return [x + 2 for x in xs]\n"


def test_stripping_keeps_the_description_and_drops_every_example():
    stripped = strip_examples(TASK)
    assert prompt_examples(TASK) is not None
    assert stripped is not None and prompt_examples(stripped) is None
    assert "incremented by 1" in stripped.prompt and "Keep the order." in stripped.prompt
    assert ">>>" not in stripped.prompt and "[2, 3]" not in stripped.prompt
    compile(stripped.prompt + "    pass\n", "<stripped>", "exec")  # still a valid stub


def test_prose_examples_are_cut_too():
    prompt = 'def f(n):\n    """Double n.\n    For example:\n    f(2) ==> 4\n    """\n'
    stripped = strip_examples(Task(id="p", prompt=prompt, kind="code", entry_point="f"))
    assert stripped is not None and "==>" not in stripped.prompt and "Double n." in stripped.prompt


def test_a_task_that_cannot_be_stripped_is_refused_not_guessed():
    no_doc = Task(id="n", prompt="def f(n):\n    pass\n", kind="code", entry_point="f")
    answer = Task(id="a", prompt="2+2?", kind="answer")
    assert strip_examples(no_doc) is None and strip_examples(answer) is None


def test_only_parsing_asserts_that_call_the_function_are_tests():
    reply = (
        "Here you go:\n```python\n"
        "assert add_one([1]) == [2]\n"
        "assert add_one([1]) == [2]\n"  # a duplicate counts once
        "assert len([1]) == 1\n"  # does not call the function
        "assert add_one([1) == [2]\n"  # does not parse
        "def add_one(xs): return xs\n"  # not a test
        "assert add_one([]) == []\n```\nassert add_one([5]) == [6]\n"  # prose outside the fence
    )
    assert parse_asserts(reply, "add_one") == [
        "assert add_one([1]) == [2]",
        "assert add_one([]) == []",
    ]
    many = "\n".join(f"assert add_one([{i}]) == [{i + 1}]" for i in range(9))
    assert len(parse_asserts(many, "add_one", limit=5)) == 5


def test_each_test_counts_on_its_own():
    tests = ["assert add_one([1]) == [2]", "assert add_one([]) == []", "assert add_one([1]) == [3]"]
    assert run_self_tests(TASK, RIGHT, tests) == (2, 3)  # the third test is itself wrong
    assert run_self_tests(TASK, WRONG, tests) == (2, 3)  # [] passes either way; [1] -> [3]
    assert run_self_tests(TASK, WRONG, tests[:1]) == (0, 1)


def test_code_that_does_not_run_passes_nothing():
    tests = ["assert add_one([1]) == [2]"]
    assert run_self_tests(TASK, "def add_one(xs) return xs\n", tests) == (0, 1)
    assert run_self_tests(TASK, "raise SystemExit(0)\n", tests) == (0, 1)  # no report printed
    assert run_self_tests(TASK, "", tests) == (0, 1)
    assert run_self_tests(TASK, RIGHT, []) == (0, 0)


def test_the_report_is_the_last_line_or_nothing():
    assert tally("noise\nSELF-TESTS 3/5 passed\n") == (3, 5)
    assert tally("SELF-TESTS 3/5 passed\ntrailing") is None
    assert "SELF-TESTS" in self_test_script(["assert True"])


class _Reply:
    def __init__(self, text: str):
        self.text, self.seen = text, []

    async def chat(self, messages, **kw):
        self.seen.append((messages[-1]["content"], kw))
        return ChatResult(self.text, "stop", 40, 20, 0.01)


def test_an_agent_writes_tests_from_the_prompt_it_is_shown_and_is_charged_for_them():
    spec = AgentSpec(
        name="w",
        backend="openai",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        price_in_per_mtok=1.0,
        price_out_per_mtok=2.0,
    )
    client = _Reply("```python\nassert add_one([1]) == [2]\n```")
    agent = Agent(spec, SaleConfig(), client=client)
    stripped = strip_examples(TASK)
    out = asyncio.run(agent.write_tests(stripped, n=3))
    prompt, kw = client.seen[0]
    assert "add_one" in prompt and "3 test cases" in prompt and ">>>" not in prompt
    assert kw["max_tokens"] == 256
    assert parse_asserts(out.answer, "add_one") == ["assert add_one([1]) == [2]"]
    assert out.usage.cost_usd == (40 * 1.0 + 20 * 2.0) / 1e6
    answer_task = Task(id="a", prompt="2+2?", kind="answer")
    assert asyncio.run(agent.write_tests(answer_task)).error is not None
    assert len(client.seen) == 1  # no model call for a task it cannot test
