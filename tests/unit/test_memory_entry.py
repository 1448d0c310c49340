"""MemoryEntry from auction records, and the contrastive-pair rule in both modes."""

from __future__ import annotations

import pytest

from sale_ray.memory.config import MemoryConfig, StorageConfig
from sale_ray.memory.entry import (
    MemoryBid,
    MemoryEntry,
    contrastive_pairs,
    entries_from_table,
    entries_table,
    entry_from_record,
)
from sale_ray.types import AuctionRecord, Bid, Evaluation, ScoredBid


def _sb(
    agent: str, plan: str, score: float | None, refined: bool = False, rejected: str | None = None
):
    return ScoredBid(
        bid=Bid(agent=agent, plan=plan, refined=refined, rejected=rejected), score=score
    )


def _record(**kw) -> AuctionRecord:
    base = dict(auction_id="a1", task_id="t1", kind="code", started_at=123.0)
    return AuctionRecord(**(base | kw))


def test_entry_from_record_marks_provisional_winner_and_skips_rejected():
    rec = _record(
        bids=[
            _sb("small", "small plan", 1.0),
            _sb("big", "big plan", -1.0),
            _sb("mid", "", None, rejected="timeout"),
        ],
        provisional_winner="big",
        winner="big",
        evaluation=Evaluation(passed=True),
    )
    e = entry_from_record(rec, "sum two numbers")
    assert (e.auction_id, e.task_id, e.task_text, e.created_at) == (
        "a1",
        "t1",
        "sum two numbers",
        123.0,
    )
    assert e.passed is True and e.winner == "big"
    assert [(b.agent, b.won) for b in e.bids] == [("small", False), ("big", True)]


def test_entry_from_record_refined_winner_wins_with_its_refined_bid():
    rec = _record(
        bids=[
            _sb("small", "first", 2.0),
            _sb("big", "big plan", 0.0),
            _sb("small", "refined A", -0.5, refined=True),
            _sb("small", "refined B", -0.9, refined=True),
        ],
        provisional_winner="big",
        winner="small",
    )
    e = entry_from_record(rec, "x")
    assert [b.plan for b in e.bids if b.won] == ["refined B"]
    assert e.passed is None


def test_entry_without_winner_marks_nothing():
    e = entry_from_record(_record(bids=[_sb("small", "p", 1.0)]), "x")
    assert not any(b.won for b in e.bids) and e.winning_bid() is None


def _entry(aid: str, winner: str, passed: bool | None, bids: list[tuple[str, str, bool]]):
    return MemoryEntry(
        auction_id=aid,
        task_id=f"task-{aid}",
        task_text=f"text {aid}",
        created_at=1.0,
        winner=winner,
        passed=passed,
        bids=[MemoryBid(agent=a, plan=p, refined=r, won=a == winner and not r) for a, p, r in bids],
    )


ENTRIES = [
    # big won and passed: small and mid both lost
    _entry("e1", "big", True, [("small", "s1", False), ("mid", "m1", False), ("big", "b1", False)]),
    # big won but failed
    _entry("e2", "big", False, [("small", "s2", False), ("big", "b2", False)]),
    # no verifier
    _entry("e3", "big", None, [("small", "s3", False), ("big", "b3", False)]),
    # small itself won (and passed)
    _entry("e4", "small", True, [("small", "s4", False), ("big", "b4", False)]),
    # small did not bid
    _entry("e5", "big", True, [("mid", "m5", False), ("big", "b5", False)]),
    # small bid, refined, still lost: its original plan is the losing one
    _entry(
        "e6", "mid", True, [("small", "s6", False), ("small", "s6r", True), ("mid", "m6", False)]
    ),
]


def test_pairs_auction_mode_is_the_paper():
    pairs = contrastive_pairs(ENTRIES, "small", "auction")
    assert [(p.auction_id, p.losing_plan, p.winning_plan) for p in pairs] == [
        ("e1", "s1", "b1"),
        ("e2", "s2", "b2"),
        ("e3", "s3", "b3"),
        ("e6", "s6", "m6"),
    ]
    assert pairs[0].task_text == "text e1" and pairs[0].winner == "big"


def test_pairs_outcome_mode_needs_a_passing_winner():
    pairs = contrastive_pairs(ENTRIES, "small", "outcome")
    assert [(p.auction_id, p.losing_plan, p.winning_plan) for p in pairs] == [
        ("e1", "s1", "b1"),
        ("e6", "s6", "m6"),
    ]


def test_pairs_verified_mode_drops_failed_winners_and_keeps_unverified_tasks():
    pairs = contrastive_pairs(ENTRIES, "small")  # the default
    assert [p.auction_id for p in pairs] == ["e1", "e3", "e6"]  # e2's winner failed its tests


def test_pairs_for_the_winner_itself_are_empty():
    assert contrastive_pairs([ENTRIES[3]], "small", "auction") == []
    assert contrastive_pairs([ENTRIES[3]], "small", "outcome") == []
    assert [p.auction_id for p in contrastive_pairs(ENTRIES, "mid", "auction")] == ["e1", "e5"]


def test_entries_table_round_trip():
    assert entries_from_table(entries_table(ENTRIES)) == ENTRIES


def test_configs_forbid_unknown_keys_and_check_uris():
    assert MemoryConfig().k == 8 and MemoryConfig().shards == 4
    with pytest.raises(ValueError):
        MemoryConfig(shardz=3)
    with pytest.raises(ValueError):
        MemoryConfig(contrast_on="both")
    assert StorageConfig(snapshot_uri="s3://bucket/prefix").snapshot_uri == "s3://bucket/prefix"
    for bad in ("gs://x/y", "s3://", "  "):
        with pytest.raises(ValueError):
            StorageConfig(snapshot_uri=bad)
    with pytest.raises(ValueError):
        StorageConfig(endpoint_url="127.0.0.1:9000")
