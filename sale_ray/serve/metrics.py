"""Prometheus metrics of one gateway replica (``GET /metrics``, text format 0.0.4).

Names follow Prometheus' conventions: a ``sale_`` prefix, base units in the name (``_seconds``;
money as ``_dollars``, US dollars, the unit every price in the project is in), ``_total`` on
counters, and what varies in labels: ``agent``, ``phase`` (``bid``, ``jury``, ``refine``,
``execute``, ``evaluate``; ``passthrough`` for a call straight to one agent), ``tenant`` (the
API key's tenant, docs/serve.md; ``anonymous`` without auth, ``none`` before a key was
checked), ``policy`` (``sale``, ``sale:lean`` …), ``route``, ``status``, ``outcome``,
``direction``. Ratios (winner share, auctions per second) are left to PromQL over the
counters, so replicas sum correctly; ``cluster/grafana/sale-ray.json`` draws them.

A private registry per :class:`Metrics` (no process-global state: tests and several apps in
one process do not collide). On Serve one :class:`Metrics` lives in the service's auctioneer
actor and every replica reports to it (``service.handle.ServiceMetrics``), so ``/metrics`` is
the same from any replica.
"""

from __future__ import annotations

import time

from ..types import PHASES, AuctionRecord, Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Auction phases take seconds to minutes on local models: buckets up to 20 min.
_PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
PASSTHROUGH = "passthrough"
#: Spend of a record's ``phase_usage`` keys (``execute`` holds an escalation's second run too).
SPEND_PHASES = tuple(p for p in PHASES if p != "evaluate")


class Metrics:
    """Requests per route, spend and tokens per agent / phase / tenant, auctions and wins per
    policy, and latency histograms per route, per auction phase and per whole auction."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        r = self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "sale_requests",
            "HTTP requests answered, by route, status and tenant.",
            ["route", "status", "tenant"],
            registry=r,
        )
        self.latency = Histogram(
            "sale_request_duration_seconds",
            "Seconds to answer a request (streams: to the first byte), by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.spend = Counter(
            "sale_spend_dollars",
            "US dollars spent on model calls, by agent, phase and tenant.",
            ["agent", "phase", "tenant"],
            registry=r,
        )
        self.tokens = Counter(
            "sale_tokens",
            "Tokens of model calls, by agent, phase, direction (prompt / completion), tenant.",
            ["agent", "phase", "direction", "tenant"],
            registry=r,
        )
        self.auctions = Counter(
            "sale_auctions",
            "Auctions run, by policy, outcome (won / no_winner) and tenant.",
            ["policy", "outcome", "tenant"],
            registry=r,
        )
        self.wins = Counter(
            "sale_auction_wins",
            "Auctions won (the agent whose answer was sent), by agent, policy and tenant.",
            ["agent", "policy", "tenant"],
            registry=r,
        )
        self.phase_latency = Histogram(
            "sale_auction_phase_duration_seconds",
            "Seconds one auction spent in a phase (bid, jury, refine, execute, evaluate).",
            ["phase"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )
        self.auction_latency = Histogram(
            "sale_auction_duration_seconds",
            "Seconds from an auction's start to its record, by policy.",
            ["policy"],
            buckets=_PHASE_BUCKETS,
            registry=r,
        )

    def observe_request(self, route: str, status: int, seconds: float, tenant: str) -> None:
        self.requests.labels(route, str(status), tenant).inc()
        self.latency.labels(route).observe(seconds)

    def observe_usage(self, agent: str, usage: Usage, phase: str, tenant: str) -> None:
        if usage.cost_usd:
            self.spend.labels(agent, phase, tenant).inc(usage.cost_usd)
        if usage.prompt_tokens:
            self.tokens.labels(agent, phase, "prompt", tenant).inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.tokens.labels(agent, phase, "completion", tenant).inc(usage.completion_tokens)

    def observe_record(
        self, rec: AuctionRecord, *, policy: str = "sale", tenant: str = "none"
    ) -> None:
        """Spend of every call of an auction per phase (bids — the reserve's and refined ones
        included —, jury, execution), phase and total latency, and who won."""
        for sb in rec.bids:
            phase = "refine" if sb.bid.refined else "bid"
            self.observe_usage(sb.bid.agent, sb.bid.usage, phase, tenant)
        seen: set[str] = set()
        for v in rec.verdicts:  # refinement re-asks the same jurors after the first verdicts
            self.observe_usage(v.juror, v.usage, "refine" if v.juror in seen else "jury", tenant)
            seen.add(v.juror)
        ex, spec = rec.execution, rec.speculation
        if spec is not None:  # a speculative execution that lost: paid all the same
            self.observe_usage(spec.agent, spec.usage, "execute", tenant)
        if ex is not None:
            self.observe_usage(ex.agent, ex.usage, "execute", tenant)
            # an escalation's first execution is in the phase's total only: its agent is the
            # winner before escalating (the provisional one: serve runs no refinement)
            first = rec.phase_usage.get("execute", Usage()).cost_usd - ex.usage.cost_usd
            first -= spec.usage.cost_usd if spec is not None else 0.0
            if first > 1e-15 and rec.provisional_winner and rec.provisional_winner != ex.agent:
                self.spend.labels(rec.provisional_winner, "execute", tenant).inc(first)
        for phase, seconds in rec.phase_seconds.items():
            self.phase_latency.labels(phase).observe(seconds)
        if rec.started_at:
            self.auction_latency.labels(policy).observe(max(0.0, time.time() - rec.started_at))
        if rec.winner:
            self.auctions.labels(policy, "won", tenant).inc()
            self.wins.labels(rec.winner, policy, tenant).inc()
        else:
            self.auctions.labels(policy, "no_winner", tenant).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
