"""`run_eval` end to end on a local Ray with scripted agents (no model weights needed): every
method in summary.json, the Parquet logs, the weights file, the report, a resumed rerun, and a
direct-only run whose matrix a later full run completes."""

import json

import pyarrow.parquet as pq
import pytest

from sale_ray.agents.scripted import scripted_evaluate
from sale_ray.config import (
    AgentSpec,
    CacheConfig,
    EvalConfig,
    PoolSpec,
    SaleConfig,
    ScriptedSpec,
    load_config,
)
from sale_ray.evaluation import load_matrix, run_eval, save_matrix
from sale_ray.evaluation.baselines import DIRECT_METHODS, REQUIRED_METHODS
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


def _tasks(n=24):
    return [
        Task(
            id=f"S/{i}",
            prompt=f"scripted task {i} about {'strings' if i % 2 else 'ints'}",
            bin=i % 5,
            tests="pass",
        )
        for i in range(n)
    ]


def test_run_eval_writes_every_method_and_resumes(ray_cluster, tmp_path):
    tasks = _tasks()
    out = tmp_path / "eval"
    summary = run_eval(tasks, _config(tmp_path), out, evaluate=scripted_evaluate, progress=False)
    on_disk = json.loads((out / "summary.json").read_text())
    for m in REQUIRED_METHODS:
        assert {"pass_at_1", "cost_usd", "largest_share", "tasks"} <= set(on_disk[m]), m
    # SALE with memory runs live (refinement from the training split's auctions)
    assert on_disk["sale_published"]["tasks"] == on_disk["sale_no_memory"]["tasks"]
    assert "memory" in on_disk["_run"]["sale_note"]
    n_test = on_disk["_run"]["test_tasks"]
    assert pq.read_table(out / "decisions.parquet").num_rows == n_test * len(
        on_disk["_run"]["methods"]
    )
    matrix = pq.read_table(out / "matrix.parquet").to_pylist()
    assert len(matrix) == 3 * len(tasks)
    assert all(r["bid_json"] and r["direct_json"] for r in matrix)  # both parts, every cell
    # "x largest" is the largest agent called directly; the plan-conditioned ratio beside it
    lg = on_disk["largest_direct"]["cost_usd"]
    assert on_disk["sale"]["cost_vs_largest_direct"] == pytest.approx(
        on_disk["sale"]["cost_usd"] / lg
    )
    assert on_disk["_sale"]["sale"]["reference"] == "largest_direct"
    # scripted agents never touch the response cache, although they take no time
    assert on_disk["_run"]["cache_hit_share"] == {
        "bid": 0.0,
        "jury": 0.0,
        "execute": 0.0,
        "direct": 0.0,
    }
    assert load_config(out / "weights.yaml").auction.weights.w_jury
    # the lean-verify policy is written as a config the live auction runs
    lean = load_config(out / "lean_verify.yaml").auction
    assert lean.reserve_agent == on_disk["_run"]["largest_agent"]
    assert lean.escalate_on_failed_check
    # and so is the recommended configuration, the method `sale`
    rec = load_config(out / "recommended.yaml").auction
    assert rec.bid == "answer" and rec.answer_agents[-1] == on_disk["_run"]["largest_agent"]
    assert on_disk["_recommend"]["fit"]["chosen"].startswith("ladder")
    assert on_disk["sale"]["pass_at_1_diff_ci"][0] <= on_disk["sale"]["pass_at_1_diff_ci"][1]
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()

    again = run_eval(tasks, _config(tmp_path), out, evaluate=scripted_evaluate, progress=False)
    for m in REQUIRED_METHODS:
        assert (again[m]["pass_at_1"], again[m]["cost_usd"]) == (
            summary[m]["pass_at_1"],
            summary[m]["cost_usd"],
        )


def test_a_direct_only_run_is_completed_by_a_later_full_run(ray_cluster, tmp_path):
    tasks = _tasks(16)
    out = tmp_path / "eval"
    direct = run_eval(
        tasks,
        _config(tmp_path),
        out,
        methods=["direct"],
        evaluate=scripted_evaluate,
        progress=False,
    )
    assert {m for m in direct if not m.startswith("_")} == set(DIRECT_METHODS)
    assert direct["_run"]["matrix_parts"] == {"plan": False, "direct": True}
    assert not (out / "weights.yaml").exists() and "_fit" not in direct
    rows = load_matrix(out / "matrix.parquet")
    assert all(r.direct and not r.cells for r in rows)
    assert direct["oracle_direct"]["pass_at_1"] >= direct["largest_direct"]["pass_at_1"]
    # mark one stored direct call, so that a recomputation would show
    cell = rows[0].direct["large"]
    marked = cell.model_copy(
        update={"execution": cell.execution.model_copy(update={"answer": "kept"})}
    )
    rows[0] = rows[0].model_copy(update={"direct": {**rows[0].direct, "large": marked}})
    save_matrix(rows, out / "matrix.parquet")

    full = run_eval(tasks, _config(tmp_path), out, evaluate=scripted_evaluate, progress=False)
    again = load_matrix(out / "matrix.parquet")
    assert all(r.cells and r.direct for r in again)  # the plan-conditioned part was filled in
    assert [r.direct for r in again] == [r.direct for r in rows]  # the direct part was kept
    assert again[0].direct["large"].execution.answer == "kept"
    for m in DIRECT_METHODS:
        assert (full[m]["pass_at_1"], full[m]["cost_usd"]) == (
            direct[m]["pass_at_1"],
            direct[m]["cost_usd"],
        )
    assert full["largest"]["cost_vs_largest_plan"] == 1.0
