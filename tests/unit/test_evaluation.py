"""The evaluation without Ray: splits, matrix rows from scripted agents, the equivalence of the
matrix's SALE with a live auction, fitting on training rows only, and summary.json's shape."""

import asyncio

import pyarrow.parquet as pq
import pytest

import sale_ray.auction.weights as weights_mod
from sale_ray.agents.scripted import ScriptedAgent, scripted_evaluate
from sale_ray.auction.baselines import REQUIRED_METHODS, RouterContext, make_router
from sale_ray.auction.matrix import build_row, rows_from_table, synthetic_matrix
from sale_ray.auction.protocol import run_auction
from sale_ray.config import AgentSpec, EvalConfig, SaleConfig, ScriptedSpec, Weights
from sale_ray.evaluation import (
    DEFAULT_METHODS,
    analyse,
    load_matrix,
    save_matrix,
    split_tasks,
    summarize,
)
from sale_ray.live_eval import decision_from_record, memory_available, sale_with_memory
from sale_ray.types import Task

PRICES = {"small": 0.03, "mid": 0.1, "large": 0.3}
QUALITY = {"small": 0.3, "mid": 0.6, "large": 0.9}


def tasks(n):
    return [
        Task(id=f"T/{i}", prompt=f"task number {i}", bin=i % 5, entry_point="f", tests="pass")
        for i in range(n)
    ]


def scripted_pool(config, fail=()):
    agents = {}
    for a, p in PRICES.items():
        spec = AgentSpec(
            name=a,
            backend="scripted",
            model="scripted",
            price_in_per_mtok=p,
            price_out_per_mtok=p,
            scripted=ScriptedSpec(quality=QUALITY[a], seed=1, fail_rate=1.0 if a in fail else 0.0),
        )
        agents[a] = ScriptedAgent(spec, config)
    return agents


def build(task, agents, split="test", order=0):
    return asyncio.run(
        build_row(
            task,
            agents,
            {a: (p, p) for a, p in PRICES.items()},
            scripted_evaluate,
            bid_timeout_s=5,
            jury_timeout_s=5,
            execute_timeout_s=5,
            split=split,
            order=order,
        )
    )


def test_splits_are_seeded_stable_under_more_tasks_and_never_empty():
    ts = tasks(200)
    s = split_tasks(ts, 0.5, seed=0)
    assert s == split_tasks(list(reversed(ts)), 0.5, seed=0)
    assert 70 < sum(v == "train" for v in s.values()) < 130
    s40 = split_tasks(ts[:40], 0.5, seed=0)
    assert all(s40[t] == s[t] for t in s40)  # --limit 40 agrees with the full run
    assert s != split_tasks(ts, 0.5, seed=1)
    for n in (2, 3):
        small = split_tasks(ts[:n], 0.5, seed=0)
        assert set(small.values()) == {"train", "test"}


def test_a_matrix_row_has_every_agents_bid_verdict_and_own_execution():
    cfg = SaleConfig()
    r = build(tasks(1)[0], scripted_pool(cfg))
    assert r.by_price() == ["small", "mid", "large"]
    for a, c in r.cells.items():
        assert c.bid.valid and c.verdict.juror == a and set(c.verdict.scores) == set(PRICES)
        assert c.execution.agent == a and c.evaluation.passed == (c.execution.answer == "PASS")
        assert c.cached == {"bid": True, "jury": True, "execute": True}  # scripted: no latency


def test_a_failed_bidder_still_executes_and_a_lone_bid_skips_the_jury():
    cfg = SaleConfig()
    agents = scripted_pool(cfg)
    for a in ("small", "mid"):  # bids fail, executions would too: swap in failing bids only
        agents[a].bid = _raise
    r = build(tasks(1)[0], agents)
    assert not r.cells["small"].bid.valid and r.cells["small"].execution is not None
    assert r.verdicts == []  # one valid bid: nothing to compare, as in the live auction


async def _raise(task):
    raise RuntimeError("bid failed")


@pytest.mark.parametrize("i", range(6))
def test_sale_on_the_matrix_equals_a_live_auction_with_the_same_agents(i):
    cfg = SaleConfig()
    task = tasks(6)[i]
    row = build(task, scripted_pool(cfg))
    d = make_router("sale_default", RouterContext(default_weights=cfg.auction.weights)).route(row)
    rec = asyncio.run(
        run_auction(task, scripted_pool(cfg), PRICES, cfg, evaluate=scripted_evaluate)
    )
    live = decision_from_record("sale", rec, 0)
    assert (d.agent, d.passed) == (live.agent, live.passed)
    assert d.tokens == live.tokens
    assert d.total_cost == pytest.approx(live.total_cost)


def test_fitting_only_ever_sees_training_rows(monkeypatch):
    rows = synthetic_matrix(40, seed=2)
    seen = []
    real = weights_mod.fit_weights

    def spy(train, **kw):
        seen.append({r.task_id for r in train})
        return real(train, **kw)

    monkeypatch.setattr(weights_mod, "fit_weights", spy)
    test_ids = {r.task_id for r in rows if r.split == "test"}
    analyse(rows, SaleConfig(eval=EvalConfig(embedder="hashing")), DEFAULT_METHODS, sweep=True)
    assert seen and all(not (ids & test_ids) for ids in seen)


def test_summary_has_every_method_with_the_promised_fields(tmp_path):
    rows = synthetic_matrix(40, seed=5)
    cfg = SaleConfig(eval=EvalConfig(embedder="hashing"))
    decisions, extras = analyse(rows, cfg, DEFAULT_METHODS, sweep=False)
    s = summarize(rows, decisions, extras, {"dataset": "synthetic"})
    n_test = sum(r.split == "test" for r in rows)
    for m in REQUIRED_METHODS:
        assert {"pass_at_1", "cost_usd", "largest_share", "tasks"} <= set(s[m])
        assert s[m]["tasks"] == n_test
    assert s["oracle"]["pass_at_1"] >= max(s[m]["pass_at_1"] for m in REQUIRED_METHODS)
    assert s["largest"]["largest_share"] == 1.0 and s["smallest"]["largest_share"] == 0.0
    assert {"oracle_saving_captured", "oracle_gain_captured"} <= set(s["_sale"]["sale"])
    assert s["_fit"]["weights"]["w_jury"] and set(s["_ablations"]) >= {"no_jury", "no_entropy"}
    assert s["_signals"]["all"]["n"] == 3 * len(rows)
    assert s["_run"]["cache_hit_share"]["bid"] is None  # synthetic cells carry no cache marks


def test_matrix_parquet_round_trip(tmp_path):
    rows = synthetic_matrix(12, seed=6)
    save_matrix(rows, tmp_path / "matrix.parquet")
    assert load_matrix(tmp_path / "matrix.parquet") == rows
    assert rows_from_table(pq.read_table(tmp_path / "matrix.parquet")) == rows
    assert load_matrix(tmp_path / "absent.parquet") == []


def test_the_default_weights_are_the_shipped_ones():
    assert RouterContext().default_weights == Weights()


class _Pool:
    def __init__(self, agents):
        self.handles = agents
        self.prices = PRICES


def test_sale_with_memory_refines_on_held_out_tasks_and_counts_every_phase():
    if not memory_available()[0]:
        pytest.skip(memory_available()[1])
    cfg = SaleConfig(eval=EvalConfig(embedder="hashing"))
    ts = tasks(12)
    agents = scripted_pool(cfg)
    split = split_tasks(ts, 0.5, 0)
    rows = [build(t, agents, split=split[t.id], order=i) for i, t in enumerate(ts)]
    live, note = asyncio.run(sale_with_memory(ts, rows, _Pool(agents), cfg, scripted_evaluate))
    assert set(live) == {r.task_id for r in rows if r.split == "test"} and "warmed" in note
    refined = [d for d in live.values() if d.tokens["refine"] > 0]
    assert refined  # cheaper agents found contrastive pairs in the warmed memory
    for d in live.values():
        assert d.method == "sale" and d.tokens["bid"] > 0 and d.agent in PRICES


def test_reasoning_gym_tasks_have_level_bins_and_their_own_verifier():
    pytest.importorskip("reasoning_gym")
    from sale_ray.datasets import load_dataset, verify_answer
    from sale_ray.evaluation import make_eval_evaluator

    ts = load_dataset("reasoning_gym", 15)
    assert {t.bin for t in ts} == {0, 1, 2, 3, 4} and all(t.kind == "answer" for t in ts)
    assert len({t.metadata["rg_dataset"] for t in ts}) == 3
    t = ts[0]
    assert verify_answer(t, f"Let me think.\n{t.expected}").passed is True
    assert verify_answer(t, "no idea").passed is False
    assert verify_answer(tasks(1)[0], "x") is None  # not a reasoning-gym task
    ev = asyncio.run(make_eval_evaluator(SaleConfig())(t, f"{t.expected}\n"))
    assert ev.passed is True and "score_answer" in ev.detail
