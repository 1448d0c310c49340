"""``/metrics`` follows Prometheus' naming conventions, and the Grafana dashboard
(``cluster/grafana/sale-ray.json``) queries only series the endpoint exposes, by labels they
have. The exposition is read with ``prometheus_client``'s own parser, from the real app under
uvicorn after an auction, a passthrough call and a refused request."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2 as httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import ScriptedUpstream
from tests.unit.test_serve_app import KEY, _config, _serve

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "sale-ray.json"
LABELS = {"route", "status", "tenant", "agent", "phase", "direction", "policy", "outcome"}
PHASES = {"bid", "jury", "refine", "execute", "evaluate", "passthrough"}


@pytest.fixture(scope="module")
def exposition() -> str:
    up = ScriptedUpstream().start()
    app = _serve(_config(up.base_url))
    try:
        client = openai.OpenAI(base_url=app.url + "/v1", api_key=KEY, max_retries=0)
        client.chat.completions.create(model="sale", messages=[{"role": "user", "content": "a"}])
        client.chat.completions.create(
            model="sale:lean", messages=[{"role": "user", "content": "b"}]
        )
        client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "c"}])
        assert httpx.get(app.url + "/v1/models").status_code == 401
        return httpx.get(app.url + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    finally:
        app.stop()
        up.stop()


def _series(text: str) -> dict[str, set[str]]:
    """Every sample name exposed -> the label names its samples carry."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_the_exposition_follows_prometheus_conventions(exposition):
    families = list(text_string_to_metric_families(exposition))
    kinds = {f.name: f.type for f in families if not f.name.endswith("_created")}
    assert kinds == {
        "sale_requests": "counter",
        "sale_request_duration_seconds": "histogram",
        "sale_spend_dollars": "counter",
        "sale_tokens": "counter",
        "sale_auctions": "counter",
        "sale_auction_wins": "counter",
        "sale_auction_phase_duration_seconds": "histogram",
        "sale_auction_duration_seconds": "histogram",
    }
    for f in families:
        assert re.fullmatch(r"sale_[a-z_]+", f.name), f.name
        assert f.documentation, f.name
        for s in f.samples:
            if f.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            if f.type == "histogram":  # a base unit in the name
                assert f.name.endswith("_seconds"), f.name
            assert set(s.labels) - {"le"} <= LABELS, s
            if "phase" in s.labels:
                assert s.labels["phase"] in PHASES, s
    series = _series(exposition)
    spend = [
        s
        for f in families
        for s in f.samples
        if s.name == "sale_spend_dollars_total" and s.labels["tenant"] == "default"
    ]
    assert {(s.labels["agent"], s.labels["phase"]) for s in spend} >= {
        ("cheap", "bid"),
        ("dear", "jury"),
        ("cheap", "passthrough"),
    }
    assert {"policy", "tenant", "outcome"} <= series["sale_auctions_total"]
    assert 'sale_requests_total{route="models",status="401",tenant="none"}' in exposition
    assert 'policy="sale:lean"' in exposition


def _queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if isinstance(var.get("query"), dict):
            exprs.append(var["query"]["query"])
    return exprs


def test_every_series_the_dashboard_queries_is_exposed_with_the_labels_it_uses(exposition):
    dashboard = json.loads(DASHBOARD.read_text())
    series = _series(exposition)
    exprs = _queries(dashboard)
    assert len(exprs) >= 10
    queried: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\bsale_[a-z_]+\b", expr))
        assert names, expr
        for name in names:
            assert name in series, f"{name} (in {expr!r}) is not exposed"
        labels = set(series[next(iter(names))]).union(*(series[n] for n in names))
        used = {
            lab
            for group in re.findall(r"\b(?:by|ignoring)\s*\(([^)]*)\)", expr)
            for lab in re.split(r"\s*,\s*", group.strip())
            if lab
        }
        used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
        used |= set(re.findall(r"label_values\(\w+,\s*(\w+)\)", expr))
        assert used <= labels, (expr, used - labels)
        queried |= names
    # what the issue asks the dashboard to show
    assert {
        "sale_spend_dollars_total",
        "sale_auctions_total",
        "sale_auction_wins_total",
        "sale_auction_phase_duration_seconds_bucket",
    } <= queried
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for shown in ["spend per agent", "auctions per second", "phase latency p50 / p99", "winner"]:
        assert shown in titles, shown
