"""The evaluation on real local models (two HumanEval tasks, two small agents): real bids,
verdicts, executions, direct calls and sandboxed tests in the matrix; then a rerun from the
response cache gives the same numbers without generating a token."""

import pyarrow.parquet as pq
import pytest

from sale_ray.config import (
    AgentSpec,
    AuctionConfig,
    CacheConfig,
    EvalConfig,
    ExecutionConfig,
    PoolSpec,
    SaleConfig,
)
from sale_ray.evaluation import run_eval
from sale_ray.evaluation.baselines import REQUIRED_METHODS
from sale_ray.problem_sets import load_humaneval
from tests.conftest import require_models

pytestmark = [pytest.mark.integration, pytest.mark.models]


def test_eval_on_real_models_and_a_free_cached_rerun(ray_cluster, tmp_path):
    require_models("smollm2-135m", "qwen2.5-coder-0.5b")
    config = SaleConfig(
        pool=PoolSpec(
            agents=[
                AgentSpec(name="smollm2-135m", model="smollm2-135m"),
                AgentSpec(name="qwen-0.5b", model="qwen2.5-coder-0.5b"),
            ]
        ),
        auction=AuctionConfig(
            plan_max_tokens=48, bid_timeout_s=300, jury_timeout_s=300, execute_timeout_s=600
        ),
        execution=ExecutionConfig(max_tokens=384, self_check_turns=1),
        cache=CacheConfig(path=str(tmp_path / "cache")),
        eval=EvalConfig(embedder="hashing"),
    )
    tasks = load_humaneval(limit=2)
    first = run_eval(tasks, config, tmp_path / "a", progress=False, report=False)
    rows = pq.read_table(tmp_path / "a" / "matrix.parquet").to_pylist()
    assert len(rows) == 4
    for r in rows:
        assert r["plan_tokens"] > 0 and 0 <= r["entropy"] <= 1 and r["passed"] in (True, False)
        assert r["execute_tokens"] > 0 and r["bid_cached"] is False
        # the direct call: one request, the answer checked on the prompt's examples
        assert r["direct_tokens"] > 0 and r["direct_cached"] is False
        assert r["direct_passed"] in (True, False) and r["direct_self_check"] in (True, False)
    assert first["_run"]["train_tasks"] == 1 and first["_run"]["test_tasks"] == 1
    assert first["_sale"]["sale"]["reference"] == "largest_direct"

    second = run_eval(tasks, config, tmp_path / "b", progress=False, report=False)
    assert second["_run"]["cache_hit_share"] == {
        "bid": 1.0,
        "jury": 1.0,
        "execute": 1.0,
        "direct": 1.0,
    }
    for m in REQUIRED_METHODS:
        assert (second[m]["pass_at_1"], second[m]["cost_usd"], second[m]["largest_share"]) == (
            first[m]["pass_at_1"],
            first[m]["cost_usd"],
            first[m]["largest_share"],
        ), m
