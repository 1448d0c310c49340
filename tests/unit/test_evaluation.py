"""The evaluation without Ray: splits, matrix rows from scripted agents, cache marks, direct
calls, the equivalence of the matrix's SALE with a live auction, fitting on training rows only,
and summary.json's shape."""

import asyncio
import json

import pyarrow.parquet as pq
import pytest

import sale_ray.evaluation.weights as weights_mod
from sale_ray.agents.agent import Agent
from sale_ray.agents.llm import ChatResult
from sale_ray.agents.scripted import ScriptedAgent, scripted_evaluate
from sale_ray.auction.protocol import run_auction
from sale_ray.config import (
    AgentSpec,
    CacheConfig,
    EvalConfig,
    SaleConfig,
    SandboxConfig,
    ScriptedSpec,
    Weights,
)
from sale_ray.evaluation import (
    DEFAULT_METHODS,
    analyse,
    build_matrix,
    load_matrix,
    save_matrix,
    summarize,
)
from sale_ray.evaluation.baselines import (
    DIRECT_METHODS,
    REQUIRED_METHODS,
    RouterContext,
    make_router,
)
from sale_ray.evaluation.direct import MissingDirectCells, build_direct
from sale_ray.evaluation.live import decision_from_record, memory_available, sale_with_memory
from sale_ray.evaluation.matrix import build_row, matrix_table, rows_from_table
from sale_ray.evaluation.run import expand_methods, split_tasks
from sale_ray.types import Evaluation, Task
from tests.fakes.synthetic import synthetic_matrix

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
        assert c.execution.usage.latency_s == 0.0  # scripted agents take no time ...
        assert c.cached == {"bid": False, "jury": False, "execute": False}  # ... and use no cache


class EchoModel:
    """A chat client for real :class:`Agent` objects: a plan, a JSON verdict for every plan the
    jury shows, or the answer "4"; it takes no time, like a cache hit would."""

    model = "echo"

    def __init__(self):
        self.calls = []

    async def chat(self, messages, *, max_tokens, response_format=None, **kw):
        self.calls.append(messages)
        if response_format is not None:
            labels = response_format["json_schema"]["schema"]["required"]
            text = json.dumps({lab: 3 for lab in labels})
        elif "bidding" in messages[-1]["content"]:
            text = "add the numbers"
        else:
            text = "4"
        return ChatResult(text, "stop", 20, 3, latency_s=0.0)

    async def close(self):
        return None


def cached_pool(cfg):
    """Real agents over :class:`EchoModel`, each behind the response cache of ``cfg``."""
    pool = {}
    for a, p in PRICES.items():
        spec = AgentSpec(name=a, model=f"echo-{a}", backend="openai", base_url="http://unused/v1")
        spec = spec.model_copy(update={"price_in_per_mtok": p, "price_out_per_mtok": p})
        pool[a] = Agent(spec, cfg, client=EchoModel())
        asyncio.run(pool[a].start())
    return pool


def test_a_cache_hit_is_what_the_response_cache_says_not_a_zero_latency(tmp_path):
    cfg = SaleConfig(cache=CacheConfig(enabled=True, path=str(tmp_path / "cache")))
    task = Task(id="A/1", prompt="what is 2 + 2?", kind="answer", expected="4")

    async def four(task, answer):
        return Evaluation(passed=answer.strip() == "4")

    def row_with(pool):
        r = asyncio.run(
            build_row(
                task,
                pool,
                {a: (p, p) for a, p in PRICES.items()},
                four,
                bid_timeout_s=5,
                jury_timeout_s=5,
                execute_timeout_s=5,
            )
        )
        direct = asyncio.run(
            build_direct(task, pool, {a: (p, p) for a, p in PRICES.items()}, four, timeout_s=5)
        )
        return r, direct

    live, live_direct = row_with(cached_pool(cfg))  # zero latency, but the model answered
    for a in PRICES:
        assert live.cells[a].cached == {"bid": False, "jury": False, "execute": False}
        assert not live_direct[a].cached and live.cells[a].passed
    again_pool = cached_pool(cfg)
    again, again_direct = row_with(again_pool)
    assert not any(agent._client.inner.calls for agent in again_pool.values())
    for a in PRICES:
        assert again.cells[a].cached == {"bid": True, "jury": True, "execute": True}
        assert again_direct[a].cached and again_direct[a].usage.cached_calls == 1


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
    plan = [m for m in REQUIRED_METHODS if m not in DIRECT_METHODS]
    for m in REQUIRED_METHODS:
        assert {"pass_at_1", "cost_usd", "largest_share", "tasks"} <= set(s[m])
        assert s[m]["tasks"] == n_test
    assert s["oracle"]["pass_at_1"] >= max(s[m]["pass_at_1"] for m in plan)
    assert s["oracle_direct"]["pass_at_1"] >= max(s[m]["pass_at_1"] for m in DIRECT_METHODS)
    assert s["largest"]["largest_share"] == 1.0 and s["smallest"]["largest_share"] == 0.0
    assert s["largest_direct"]["largest_share"] == 1.0
    assert s["largest_direct"]["tokens_by_phase"]["bid"] == 0  # no plan paid for
    assert s["largest_direct"]["cost_usd"] < s["largest"]["cost_usd"]  # synthetic: shorter
    # "x largest" is against the largest agent called directly; the plan-conditioned beside it
    for m in ("sale", "knn", "largest"):
        assert s[m]["cost_vs_largest_direct"] == s[m]["cost_usd"] / s["largest_direct"]["cost_usd"]
        assert s[m]["cost_vs_largest_plan"] == s[m]["cost_usd"] / s["largest"]["cost_usd"]
    c = s["_sale"]["sale"]
    assert (c["reference"], c["oracle"]) == ("largest_direct", "oracle_direct")
    assert c["cost_vs_largest"] == s["sale"]["cost_vs_largest_direct"]
    assert c["cost_vs_largest_plan"] == s["sale"]["cost_vs_largest_plan"]
    assert {"oracle_saving_captured", "oracle_gain_captured"} <= set(c)
    assert s["_fit"]["weights"]["w_jury"] and set(s["_ablations"]) >= {"no_jury", "no_entropy"}
    assert s["_signals"]["all"]["n"] == 3 * len(rows)
    assert s["_signals"]["direct"]["all"]["n"] == 3 * len(rows)
    assert s["_run"]["cache_hit_share"]["bid"] is None  # synthetic cells carry no cache marks


def test_matrix_parquet_round_trip(tmp_path):
    rows = synthetic_matrix(12, seed=6)
    assert all(r.cells and r.direct for r in rows)
    save_matrix(rows, tmp_path / "matrix.parquet")
    assert load_matrix(tmp_path / "matrix.parquet") == rows
    assert rows_from_table(pq.read_table(tmp_path / "matrix.parquet")) == rows
    assert load_matrix(tmp_path / "absent.parquet") == []
    direct_only = [r.model_copy(update={"cells": {}}) for r in rows]  # `--methods direct`
    save_matrix(direct_only, tmp_path / "direct.parquet")
    assert load_matrix(tmp_path / "direct.parquet") == direct_only


def older_matrix(rows, path):
    """``rows`` written as a matrix file from before the direct baselines (no direct columns)."""
    table = matrix_table(rows)
    pq.write_table(table.drop([n for n in table.column_names if n.startswith("direct_")]), path)


def test_an_older_matrix_loads_and_a_direct_method_on_it_asks_for_the_fill(tmp_path):
    rows = synthetic_matrix(12, seed=6)
    older_matrix(rows, tmp_path / "matrix.parquet")
    old = load_matrix(tmp_path / "matrix.parquet")
    assert old == [r.model_copy(update={"direct": {}}) for r in rows]
    router = make_router("largest_direct", RouterContext())
    with pytest.raises(MissingDirectCells, match="rerun `sale-ray eval` with the same --out"):
        router.route(old[0])


def test_filling_an_older_matrix_adds_direct_calls_and_recomputes_nothing_else():
    cfg = SaleConfig()
    ts = tasks(4)
    splits = split_tasks(ts, 0.5, 0)
    first = scripted_pool(cfg)
    rows = [build(t, first, split=splits[t.id], order=i) for i, t in enumerate(ts)]
    assert all(not r.direct for r in rows)  # build_row makes plan-conditioned cells only
    agents = scripted_pool(cfg)
    filled = asyncio.run(
        build_matrix(
            ts,
            splits,
            _Pool(agents),
            cfg,
            scripted_evaluate,
            done=rows,
            progress=False,
            direct=True,
        )
    )
    assert all(a.calls == len(ts) for a in agents.values())  # one direct call per task, no more
    for old, new in zip(rows, filled, strict=True):
        assert new.cells == old.cells and set(new.direct) == set(PRICES)
        for d in new.direct.values():
            assert d.usage.calls == 1 and d.passed == (d.execution.answer == "PASS")


def test_methods_groups_expand_and_direct_only_analysis_fits_nothing():
    assert expand_methods(["direct"]) == list(DIRECT_METHODS)
    assert expand_methods(["knn", "direct", "knn_direct"]) == ["knn", *DIRECT_METHODS]
    rows = [r.model_copy(update={"cells": {}}) for r in synthetic_matrix(40, seed=5)]
    cfg = SaleConfig(eval=EvalConfig(embedder="hashing"))
    decisions, extras = analyse(rows, cfg, DIRECT_METHODS)
    # no SALE weights, ablations or sweep without plan-conditioned cells: only the recommended
    # configuration's fit (it reads direct calls)
    assert set(extras) == {"_recommend"}
    assert set(extras["_recommend"]["ablations"]) == {
        "recommended",
        "every_agent",
        "no_check",
        "no_memory",
        "memory_by_loss",
        "unfitted_trust",
    }
    assert {d.method for d in decisions} == set(DIRECT_METHODS)
    s = summarize(rows, decisions, extras, {})
    assert "_fit" not in s and s["_run"]["cache_hit_share"]["bid"] is None
    assert s["largest_direct"]["cost_vs_largest_direct"] == 1.0
    assert "cost_vs_largest_plan" not in s["largest_direct"]  # nothing plan-conditioned ran


def test_the_default_weights_are_the_shipped_ones():
    assert RouterContext().default_weights == Weights()


class _Pool:
    def __init__(self, agents):
        self.handles = agents
        self.prices = PRICES
        self.price_pairs = {a: (p, p) for a, p in PRICES.items()}


class CodeModel:
    """Answers every request with the same wrong function; records what it was asked."""

    model = "code"

    def __init__(self):
        self.calls = []

    async def chat(self, messages, **kw):
        self.calls.append((messages, kw))
        return ChatResult("```python\ndef add(a, b):\n    return a - b\n```", "stop", 60, 12, 0.1)

    async def close(self):
        return None


def test_a_direct_call_is_one_plain_request_whose_example_check_is_recorded_not_fed_back():
    cfg = SaleConfig(sandbox=SandboxConfig(timeout_s=20))
    spec = AgentSpec(name="qwen-0.5b", model="qwen2.5-coder-0.5b")
    model = CodeModel()
    agent = Agent(spec, cfg, client=model)
    task = Task(
        id="D/1",
        prompt='def add(a, b):\n    """Add.\n    >>> add(1, 2)\n    3\n    """\n',
        entry_point="add",
    )
    ex = asyncio.run(agent.execute_direct(task))
    assert len(model.calls) == 1  # no bid, no jury, and no fix turn after the failed check
    messages, kw = model.calls[0]
    user = messages[-1]["content"]
    assert user.startswith("Complete the following Python code.\n\n```python\ndef add(a, b):")
    assert "Complete the Python function `add` above" in user and "<plan>" not in user
    assert ex.self_checks_passed == [False] and ex.turns == 1 and ex.error is None
    assert ex.usage.calls == 1 and ex.usage.cost_usd == pytest.approx(
        (60 * agent.price_in + 12 * agent.price_out) / 1e6
    )
    assert kw["max_tokens"] == cfg.execution.max_tokens and kw["top_logprobs"] is None


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
        assert d.method == "sale_published" and d.tokens["bid"] > 0 and d.agent in PRICES


def test_reasoning_gym_tasks_have_level_bins_and_their_own_verifier():
    pytest.importorskip("reasoning_gym")
    from sale_ray.datasets import load_dataset
    from sale_ray.evaluation.measurement import make_eval_evaluator
    from sale_ray.problem_sets import verify_answer

    ts = load_dataset("reasoning_gym", 15)
    assert {t.bin for t in ts} == {0, 1, 2, 3, 4} and all(t.kind == "answer" for t in ts)
    assert len({t.metadata["rg_dataset"] for t in ts}) == 3
    t = ts[0]
    assert verify_answer(t, f"Let me think.\n{t.expected}").passed is True
    assert verify_answer(t, "no idea").passed is False
    assert verify_answer(tasks(1)[0], "x") is None  # not a reasoning-gym task
    ev = asyncio.run(make_eval_evaluator(SaleConfig())(t, f"{t.expected}\n"))
    assert ev.passed is True and "score_answer" in ev.detail
