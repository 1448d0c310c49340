"""Analytics: AUCs, per-method statistics, and report files from synthetic logs."""

import json

import pyarrow.parquet as pq
import pytest

from sale_ray.config import EvalConfig, SaleConfig
from sale_ray.errors import UserError
from sale_ray.evaluation import DEFAULT_METHODS, analyse, summarize
from sale_ray.evaluation.analytics import (
    auc,
    decisions_from_auctions,
    method_stats,
    signal_aucs,
    write_report,
)
from sale_ray.evaluation.comparison import compare_to_oracle
from sale_ray.evaluation.matrix import decisions_table, matrix_table
from sale_ray.types import (
    AuctionRecord,
    Bid,
    Evaluation,
    Execution,
    ScoredBid,
    Usage,
    records_table,
)
from tests.fakes.synthetic import synthetic_matrix


def test_auc_is_the_rank_statistic():
    assert auc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auc([0.9, 0.8, 0.2, 0.1], [False, False, True, True]) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], [False, True, False, True]) == 0.5
    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == 0.75
    assert auc([1, 2], [True, True]) is None
    assert auc([float("nan"), 1, 2], [True, False, True]) == 1.0


def _decision(method, i, passed, cost, largest, agent="a", b=0):
    return {
        "method": method,
        "task_id": f"t{i}",
        "bin": b,
        "order": i,
        "agent": agent,
        "executed": [agent],
        "provisional": None,
        "passed": passed,
        "largest": largest,
        "cost_usd": cost,
        "note": "",
        "bid_tokens": 10 if method == "sale" else 0,
        "jury_tokens": 0,
        "refine_tokens": 0,
        "execute_tokens": 40,
        "bid_cost_usd": 0.0,
        "jury_cost_usd": 0.0,
        "refine_cost_usd": 0.0,
        "execute_cost_usd": cost,
    }


def test_method_stats_report_per_task_length_when_the_run_knows_the_lengths():
    rows = [_decision("largest", i, i % 2 == 0, 1.0, True) for i in range(6)]
    lengths = {"t0": "short", "t1": "short", "t2": "long", "t3": "long", "t4": "long", "t5": None}
    per = method_stats(rows, lengths)["largest"]["per_length"]
    assert list(per) == ["short", "long"]  # unlabelled tasks count in neither
    assert per["short"]["tasks"] == 2 and per["short"]["pass_at_1"] == 0.5
    assert per["long"]["tasks"] == 3 and per["long"]["pass_at_1"] == pytest.approx(2 / 3)
    assert "per_length" not in method_stats(rows)["largest"]  # a log alone has no lengths


def test_method_stats_and_oracle_capture():
    rows = []
    for i in range(4):
        rows.append(_decision("largest", i, i < 3, 1.0, True))
        rows.append(_decision("oracle", i, True, 0.25, False))
        rows.append(_decision("sale", i, i < 3 or False, 0.5, i == 0, b=i % 2))
    st = method_stats(rows)
    assert st["largest"]["pass_at_1"] == 0.75 and st["largest"]["largest_share"] == 1.0
    assert st["sale"]["auction_overhead"] == pytest.approx(10 / 40)
    assert st["sale"]["per_bin"]["1"]["tasks"] == 2
    c = compare_to_oracle(st, "sale")
    assert c["cost_vs_largest"] == 0.5
    assert c["oracle_saving_captured"] == pytest.approx((4 - 2) / (4 - 1))
    assert c["oracle_gain_captured"] == 0.0
    assert c["targets"]["cost_le_0.60_largest"] and c["targets"]["largest_share_le_0.40"]


def test_signal_aucs_find_the_planted_signals():
    s = signal_aucs(matrix_table(synthetic_matrix(100, seed=1)).to_pylist())
    assert s["all"]["neg_entropy"] > 0.75 and s["all"]["jury_mean"] > 0.75
    assert set(s["by_agent"]) == {"small", "mid", "large"}
    assert set(s["by_bin"]) == {"0", "1", "2", "3", "4"}
    assert s["by_juror"]["mid"]["large"] > 0.6
    assert s["jury_parse_failure"]["small"] == 0.0


def _write_eval_folder(tmp_path):
    rows = synthetic_matrix(50, seed=3)
    decisions, extras = analyse(
        rows, SaleConfig(eval=EvalConfig(embedder="hashing")), DEFAULT_METHODS, sweep=False
    )
    summary = summarize(rows, decisions, extras, {"dataset": "synthetic"})
    pq.write_table(matrix_table(rows), tmp_path / "matrix.parquet")
    pq.write_table(decisions_table(decisions, "large"), tmp_path / "decisions.parquet")
    (tmp_path / "summary.json").write_text(json.dumps(summary, default=str))


def test_report_files_from_a_synthetic_eval_log(tmp_path):
    _write_eval_folder(tmp_path)
    md = write_report(str(tmp_path))
    assert md == tmp_path / "report" / "report.md"
    text = md.read_text()
    for section in (
        "## Methods",
        "Reliance on the largest agent",
        "Per complexity bin",
        "Winner share over the task stream",
        "Token overhead per auction phase",
        "Spend per phase",
        "Signals",
        "| oracle |",
        "| knn |",
        "| cascade |",
    ):
        assert section in text, section
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.startswith("<!doctype html>") and "<table>" in html
    pngs = {p.name for p in (tmp_path / "report").glob("*.png")}
    assert {
        "cost_vs_pass.png",
        "largest_share.png",
        "per_bin.png",
        "winner_share_stream.png",
        "phase_tokens.png",
        "phase_spend.png",
    } <= pngs
    assert "cost_vs_pass.png" in text


def test_report_without_plots_and_from_a_plain_run_log(tmp_path):
    recs = []
    for i, (winner, ok) in enumerate([("small", True), ("large", False), ("small", True)]):
        bids = [
            ScoredBid(
                bid=Bid(
                    agent=a,
                    plan="p",
                    plan_tokens=10,
                    usage=Usage(
                        prompt_tokens=10, completion_tokens=10, cost_usd=20 * p / 1e6, calls=1
                    ),
                ),
                score=0.0,
            )
            for a, p in (("small", 0.03), ("large", 0.3))
        ]
        recs.append(
            AuctionRecord(
                auction_id=f"a{i}",
                task_id=f"t{i}",
                kind="code",
                bin=i,
                bids=bids,
                provisional_winner=winner,
                winner=winner,
                started_at=float(i),
                execution=Execution(agent=winner, answer="x"),
                evaluation=Evaluation(passed=ok),
                phase_usage={
                    "bid": Usage(prompt_tokens=20, completion_tokens=20, cost_usd=1e-6),
                    "execute": Usage(completion_tokens=100, cost_usd=3e-6),
                },
            )
        )
    pq.write_table(records_table(recs), tmp_path / "auctions.parquet")
    ds = decisions_from_auctions(pq.read_table(tmp_path / "auctions.parquet"))
    assert [d["largest"] for d in ds] == [False, True, False]
    md = write_report(str(tmp_path), tmp_path / "out", plots=False)
    assert "| run |" in md.read_text()
    assert not list((tmp_path / "out").glob("*.png"))


def test_report_on_an_empty_folder_is_a_clear_user_error(tmp_path):
    with pytest.raises(UserError, match="no decisions.parquet"):
        write_report(str(tmp_path))


def test_target_lines_say_met_or_missed_and_by_how_much():
    from sale_ray.evaluation.comparison import target_lines

    rows = []
    for i in range(4):
        rows.append(_decision("largest", i, i < 2, 1.0, True))
        rows.append(_decision("oracle", i, True, 0.2, False))
        rows.append(_decision("knn", i, i < 2, 0.5, False))
        rows.append(_decision("sale", i, i < 3, 0.9, i < 2))
    lines = target_lines(method_stats(rows), "sale")
    text = "\n".join(lines)
    assert "(+0.250; target >= 0): met" in text
    assert "cost 0.90 x largest (target <= 0.60): missed by 0.30 x largest" in text
    assert "largest share 50.0% (target <= 40 %): missed by 10.0%" in text
    assert "vs knn" in text and "not dominated" in text
    assert target_lines(method_stats(rows), "absent") == []
