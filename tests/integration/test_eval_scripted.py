"""`run_eval` end to end on a local Ray with scripted agents (no model weights needed): every
method in summary.json, the Parquet logs, the weights file, the report, and a resumed rerun."""

import json

import pyarrow.parquet as pq
import pytest

from sale_ray.agents.scripted import scripted_evaluate
from sale_ray.auction.baselines import REQUIRED_METHODS
from sale_ray.config import (
    AgentSpec,
    CacheConfig,
    EvalConfig,
    PoolSpec,
    SaleConfig,
    ScriptedSpec,
    load_config,
)
from sale_ray.evaluation import run_eval
from sale_ray.types import Task

pytestmark = pytest.mark.integration


def _config(tmp_path):
    agents = [
        AgentSpec(
            name=n,
            backend="scripted",
            model="scripted",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            scripted=ScriptedSpec(quality=q, seed=3),
        )
        for n, p, q in (("small", 0.03, 0.4), ("mid", 0.1, 0.7), ("large", 0.3, 0.9))
    ]
    return SaleConfig(
        pool=PoolSpec(agents=agents),
        cache=CacheConfig(path=str(tmp_path / "cache")),
        eval=EvalConfig(embedder="hashing"),
    )


def test_run_eval_writes_every_method_and_resumes(ray_cluster, tmp_path):
    tasks = [
        Task(
            id=f"S/{i}",
            prompt=f"scripted task {i} about {'strings' if i % 2 else 'ints'}",
            bin=i % 5,
            tests="pass",
        )
        for i in range(24)
    ]
    out = tmp_path / "eval"
    summary = run_eval(tasks, _config(tmp_path), out, evaluate=scripted_evaluate, progress=False)
    on_disk = json.loads((out / "summary.json").read_text())
    for m in REQUIRED_METHODS:
        assert {"pass_at_1", "cost_usd", "largest_share", "tasks"} <= set(on_disk[m]), m
    # SALE with memory runs live (refinement from the training split's auctions)
    assert on_disk["sale"]["tasks"] == on_disk["sale_no_memory"]["tasks"]
    assert "memory" in on_disk["_run"]["sale_note"]
    n_test = on_disk["_run"]["test_tasks"]
    assert pq.read_table(out / "decisions.parquet").num_rows == n_test * len(
        on_disk["_run"]["methods"]
    )
    assert pq.read_table(out / "matrix.parquet").num_rows == 3 * len(tasks)
    assert load_config(out / "weights.yaml").auction.weights.w_jury
    # the lean-verify policy is written as a config the live auction runs
    lean = load_config(out / "lean_verify.yaml").auction
    assert lean.reserve_agent == on_disk["_run"]["largest_agent"]
    assert lean.escalate_on_failed_check
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()

    again = run_eval(tasks, _config(tmp_path), out, evaluate=scripted_evaluate, progress=False)
    for m in REQUIRED_METHODS:
        assert (again[m]["pass_at_1"], again[m]["cost_usd"]) == (
            summary[m]["pass_at_1"],
            summary[m]["cost_usd"],
        )
