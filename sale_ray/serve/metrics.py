"""Prometheus metrics of one gateway replica (``GET /metrics``, text format 0.0.4).

A private registry per :class:`Metrics` (no process-global state: tests and several apps in
one process do not collide). Each replica reports its own counts; sum them in Prometheus.
"""

from __future__ import annotations

from collections import Counter as Tally

from ..types import AuctionRecord, Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Request counts and latency per route, spend and tokens per agent, wins and win share."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "sale_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "sale_request_seconds",
            "Seconds to answer (streams: to the first byte), by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.spend = Counter("sale_spend_usd", "Dollars spent, by agent.", ["agent"], registry=r)
        self.tokens = Counter(
            "sale_tokens",
            "Tokens used, by agent and direction.",
            ["agent", "direction"],
            registry=r,
        )
        self.auctions = Counter(
            "sale_auctions", "Auctions run, by outcome (won / no_winner).", ["outcome"], registry=r
        )
        self.wins = Counter("sale_auction_wins", "Auctions won, by agent.", ["agent"], registry=r)
        self.share = Gauge(
            "sale_winner_share",
            "Share of this replica's auctions each agent won.",
            ["agent"],
            registry=r,
        )
        self._wins: Tally[str] = Tally()
        self._auctions = 0

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_usage(self, agent: str, usage: Usage) -> None:
        if usage.cost_usd:
            self.spend.labels(agent).inc(usage.cost_usd)
        if usage.prompt_tokens:
            self.tokens.labels(agent, "prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.tokens.labels(agent, "completion").inc(usage.completion_tokens)

    def observe_record(self, rec: AuctionRecord) -> None:
        """Spend of every call of an auction (bids, jury, refine, execution), and who won."""
        for sb in rec.bids:
            self.observe_usage(sb.bid.agent, sb.bid.usage)
        for v in rec.verdicts:
            self.observe_usage(v.juror, v.usage)
        if rec.execution is not None:
            self.observe_usage(rec.execution.agent, rec.execution.usage)
        self._auctions += 1
        if rec.winner:
            self.auctions.labels("won").inc()
            self.wins.labels(rec.winner).inc()
            self._wins[rec.winner] += 1
        else:
            self.auctions.labels("no_winner").inc()
        for agent in {sb.bid.agent for sb in rec.bids} | set(self._wins):
            self.share.labels(agent).set(self._wins[agent] / self._auctions)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
