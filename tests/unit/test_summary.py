"""The run summary: pass@1, money per phase, winner share and auction overhead."""

from sale_ray.summary import format_summary, summarize
from sale_ray.types import AuctionRecord, Evaluation, Usage, records_table


def _rec(i, winner, passed, bid_tokens, exec_tokens):
    return AuctionRecord(
        auction_id=f"a{i}",
        task_id=f"t{i}",
        kind="code",
        winner=winner,
        evaluation=Evaluation(passed=passed),
        phase_usage={
            "bid": Usage(completion_tokens=bid_tokens, cost_usd=1e-6),
            "execute": Usage(completion_tokens=exec_tokens, cost_usd=3e-6),
        },
        phase_seconds={"bid": 1.0, "execute": 3.0},
    )


def test_summary_counts_what_the_log_says():
    table = records_table(
        [_rec(0, "a", True, 100, 200), _rec(1, "b", False, 50, 100), _rec(2, "a", True, 50, 100)]
    )
    s = summarize(table)
    assert (s.tasks, s.passed, s.verified) == (3, 2, 3)
    assert abs(s.pass_at_1 - 2 / 3) < 1e-9
    assert abs(s.cost_usd - 12e-6) < 1e-12
    assert s.auction_overhead == 200 / 400
    assert s.winner_share == {"a": 2 / 3, "b": 1 / 3}
    assert s.seconds_by_phase["execute"] == 3.0


def test_the_printed_summary_ends_with_the_winner_share():
    text = format_summary(summarize(records_table([_rec(0, "a", True, 10, 10)])))
    assert text.splitlines()[0] == "== sale-ray summary =="
    assert text.splitlines()[-1].startswith("winner share")


def test_an_empty_log_summarises_without_dividing_by_zero():
    s = summarize(records_table([]))
    assert s.tasks == 0 and s.pass_at_1 is None and s.auction_overhead is None
