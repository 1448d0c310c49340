"""Two real HumanEval auctions end to end: agent actors on a local Ray, real llama.cpp servers,
real sandboxed tests, and the Parquet log the CLI writes."""

import asyncio

import pyarrow.parquet as pq
import pytest

from sale_ray.batch import run_tasks, write_results
from sale_ray.config import AgentSpec, ExecutionConfig, PoolSpec, SaleConfig
from sale_ray.problem_sets import load_humaneval
from sale_ray.summary import summarize
from tests.conftest import require_models

pytestmark = [pytest.mark.integration, pytest.mark.models]


@pytest.fixture(scope="module")
def two_auctions(ray_cluster, tmp_path_factory):
    require_models("smollm2-135m", "qwen2.5-coder-0.5b")
    config = SaleConfig(
        pool=PoolSpec(
            agents=[
                AgentSpec(name="smollm2-135m", model="smollm2-135m"),
                AgentSpec(name="qwen-0.5b", model="qwen2.5-coder-0.5b"),
            ]
        ),
        execution=ExecutionConfig(max_tokens=384, self_check_turns=1),
    )
    tasks = load_humaneval(limit=2)
    records = asyncio.run(run_tasks(tasks, config, concurrency=1, progress=False))
    out = tmp_path_factory.mktemp("run")
    path, summary = write_results(records, out)
    return tasks, records, path, summary


def test_every_task_gets_exactly_one_record_with_a_winner(two_auctions):
    tasks, records, _, _ = two_auctions
    assert [r.task_id for r in records] == [t.id for t in tasks]
    for r in records:
        assert r.winner in {"smollm2-135m", "qwen-0.5b"}, r.error
        assert r.execution is not None and r.execution.agent == r.winner
        assert r.passed in (True, False)


def test_bids_carry_real_plans_with_entropy_and_jury_scores(two_auctions):
    _, records, _, _ = two_auctions
    for r in records:
        valid = [s for s in r.bids if s.bid.valid]
        assert valid, [s.bid.rejected for s in r.bids]
        for s in valid:
            assert s.bid.plan and s.bid.plan_tokens > 0
            assert 0.0 <= s.bid.entropy <= 1.0
            assert s.bid.usage.prompt_tokens > 0 and s.bid.usage.cost_usd > 0
        if len(valid) > 1:
            assert r.verdicts and any(v.error is None for v in r.verdicts)


def test_tokens_and_money_are_counted_per_phase(two_auctions):
    _, records, _, summary = two_auctions
    for r in records:
        assert r.phase_usage["bid"].completion_tokens > 0
        assert r.phase_usage["execute"].completion_tokens > 0
        assert r.cost_usd > 0
    assert summary.tasks == 2 and summary.auction_overhead is not None


def test_the_parquet_log_has_the_promised_columns(two_auctions):
    _, _, path, summary = two_auctions
    table = pq.read_table(path)
    for col in ["task_id", "winner", "passed", "cost_usd", "bids"]:
        assert col in table.column_names
    bid_fields = {f.name for f in table.schema.field("bids").type.value_type}
    assert {"agent", "plan", "plan_tokens", "entropy", "score"} <= bid_fields
    assert summarize(table) == summary
