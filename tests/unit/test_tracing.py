"""Tracing: a finished AuctionRecord becomes one auction span with one child span per phase it
ran (in PHASES order, back to back from started_at), carrying the record's tokens and dollars;
spans go to a JSON-lines file or an exporter, and no tracing failure reaches the auction."""

import json
import logging
import subprocess
import sys

import pytest
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from sale_ray import tracing
from sale_ray.config import SaleConfig
from sale_ray.errors import ConfigError
from sale_ray.tracing import TracingConfig
from sale_ray.types import (
    AuctionRecord,
    Bid,
    Evaluation,
    Execution,
    JuryVerdict,
    ScoredBid,
    Usage,
)

T0 = 1_700_000_000.0
SECONDS = {"bid": 1.5, "jury": 0.75, "refine": 0.5, "execute": 4.0, "evaluate": 0.25}
USAGE = {
    "bid": Usage(prompt_tokens=200, completion_tokens=80, cost_usd=3e-5, calls=2),
    "jury": Usage(prompt_tokens=300, completion_tokens=20, cost_usd=2e-5, calls=1),
    "refine": Usage(prompt_tokens=90, completion_tokens=30, cost_usd=1e-6, calls=1),
    "execute": Usage(prompt_tokens=400, completion_tokens=150, cost_usd=7e-5, calls=1),
}


def _bid(agent, tokens, cost, latency, refined=False, rejected=None):
    usage = Usage(
        prompt_tokens=tokens, completion_tokens=tokens // 2, cost_usd=cost, latency_s=latency
    )
    return ScoredBid(
        bid=Bid(agent=agent, plan="p", usage=usage, refined=refined, rejected=rejected),
        score=None if rejected else 0.1,
    )


def record(error=None, phases=tuple(SECONDS), passed=True, auction_id="a1"):
    """Auction ``a1``: small and large bid (large's bid is slower than the whole phase), one
    juror, small refines and executes; only ``phases`` are in the record."""
    return AuctionRecord(
        auction_id=auction_id,
        task_id="t1",
        kind="code",
        bin=2,
        bids=[
            _bid("small", 100, 1e-5, 0.5),
            _bid("large", 100, 2e-5, 9.0),
            _bid("small", 90, 1e-6, 0.4, refined=True),
        ],
        verdicts=[JuryVerdict(juror="large", scores={"small": 4.0}, usage=USAGE["jury"])],
        winner=None if error else "small",
        execution=None if error else Execution(agent="small", answer="x", usage=USAGE["execute"]),
        evaluation=Evaluation(passed=None if error else passed),
        phase_usage={p: u for p, u in USAGE.items() if p in phases},
        phase_seconds={p: s for p, s in SECONDS.items() if p in phases},
        error=error,
        failure="final" if error else None,
        started_at=T0,
    )


def _on(tmp_path, exporter):
    """Tracing on, written as each span ends, to a file and to ``exporter``."""
    cfg = TracingConfig(enabled=True, file=str(tmp_path / "spans.jsonl"), processor="simple")
    tracing.configure(cfg, exporters=[exporter])


@pytest.fixture
def memory(tmp_path):
    """Tracing on; the spans the tests read are kept in memory."""
    exporter = InMemorySpanExporter()
    _on(tmp_path, exporter)
    yield exporter
    tracing.configure(TracingConfig())


def _by_name(exporter):
    spans = exporter.get_finished_spans()
    return {s.name: s for s in spans}, spans


def test_one_auction_span_and_one_span_per_phase_as_children(memory):
    tracing.export_record(record(), tenant="acme")
    named, spans = _by_name(memory)
    root = named["auction"]
    phase_spans = [
        s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id
    ]
    assert [s.name for s in phase_spans] == ["bid", "jury", "refine", "execute", "evaluate"]
    assert root.parent is None
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert root.attributes["sale.auction_id"] == "a1"
    assert root.attributes["sale.tenant"] == "acme"
    assert root.attributes["sale.winner"] == "small"
    assert root.attributes["sale.passed"] is True
    assert root.status.status_code is StatusCode.UNSET


def test_phases_are_back_to_back_from_started_at_inside_the_auction(memory):
    tracing.export_record(record())
    named, _ = _by_name(memory)
    root = named["auction"]
    assert root.start_time == int(T0 * 1e9)
    cursor = root.start_time
    for p, s in SECONDS.items():
        span = named[p]
        assert span.start_time == cursor, p
        assert span.end_time - span.start_time == pytest.approx(s * 1e9, abs=2), p
        cursor = span.end_time
    assert root.end_time == cursor
    assert (root.end_time - root.start_time) / 1e9 == pytest.approx(sum(SECONDS.values()))


def test_only_the_phases_in_the_record_get_spans(memory):
    tracing.export_record(record(phases=("bid", "jury", "execute")))
    named, _ = _by_name(memory)
    assert {"bid", "jury", "execute"} <= set(named)
    assert not {"refine", "evaluate"} & set(named)
    # execute follows jury directly: refine is not in the record
    assert named["execute"].start_time == named["jury"].end_time


def test_phase_attributes_carry_the_records_tokens_and_dollars(memory):
    rec = record()
    tracing.export_record(rec)
    named, _ = _by_name(memory)
    for p, u in rec.phase_usage.items():
        a = named[p].attributes
        assert a["sale.phase"] == p
        assert a["sale.prompt_tokens"] == u.prompt_tokens, p
        assert a["sale.completion_tokens"] == u.completion_tokens, p
        assert a["sale.cost_usd"] == pytest.approx(u.cost_usd), p
    assert named["evaluate"].attributes["sale.cost_usd"] == 0.0  # no usage recorded
    root = named["auction"].attributes
    assert root["sale.cost_usd"] == pytest.approx(rec.cost_usd)
    assert root["sale.prompt_tokens"] == sum(u.prompt_tokens for u in USAGE.values())
    assert named["execute"].attributes["sale.agent"] == "small"
    assert list(named["bid"].attributes["sale.agents"]) == ["small", "large"]


def test_bids_and_jurors_are_children_of_their_phase_clamped_to_it(memory):
    tracing.export_record(record())
    named, spans = _by_name(memory)
    bids = [s for s in spans if s.name == "bid.agent"]
    under = {
        s.attributes["sale.agent"] + ("*" if s.attributes["sale.refined"] else ""): s for s in bids
    }
    assert set(under) == {"small", "large", "small*"}
    assert under["small"].parent.span_id == named["bid"].context.span_id
    assert under["small*"].parent.span_id == named["refine"].context.span_id
    assert under["small"].attributes["sale.cost_usd"] == pytest.approx(1e-5)
    assert under["small"].end_time - under["small"].start_time == pytest.approx(0.5e9, abs=2)
    # large's bid took 9 s of a 1.5 s phase: it ends with the phase, not after it
    assert under["large"].end_time == named["bid"].end_time
    (juror,) = [s for s in spans if s.name == "jury.juror"]
    assert juror.parent.span_id == named["jury"].context.span_id
    assert juror.attributes["sale.prompt_tokens"] == 300


def test_an_auction_error_sets_error_status_and_attributes(memory):
    tracing.export_record(record(error="budget exhausted"))
    named, _ = _by_name(memory)
    root = named["auction"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.status.description == "budget exhausted"
    assert root.attributes["sale.error"] == "budget exhausted"
    assert root.attributes["sale.failure"] == "final"
    assert "sale.winner" not in root.attributes and "sale.passed" not in root.attributes


def test_the_file_exporter_writes_json_lines_that_parse_back(tmp_path):
    path = tmp_path / "traces" / "spans.jsonl"
    tracing.configure(TracingConfig(enabled=True, file=str(path), processor="batch"))
    try:
        tracing.export_record(record(auction_id="a1"), tenant="acme")
        tracing.export_record(record(auction_id="a2"))
        assert tracing.flush()
    finally:
        tracing.configure(TracingConfig())
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    roots = [r for r in rows if r["name"] == "auction"]
    assert sorted(r["attributes"]["sale.auction_id"] for r in roots) == ["a1", "a2"]
    a1 = next(r for r in roots if r["attributes"]["sale.auction_id"] == "a1")
    phases = [
        r["name"]
        for r in rows
        if r["parent_id"] == a1["context"]["span_id"] and "sale.phase" in r["attributes"]
    ]
    assert sorted(phases) == sorted(SECONDS)
    assert a1["attributes"]["sale.tenant"] == "acme"
    assert a1["resource"]["attributes"]["service.name"] == "sale-ray"


def test_disabled_exports_nothing(tmp_path):
    path = tmp_path / "spans.jsonl"
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(enabled=False, file=str(path)), exporters=[exporter])
    tracing.export_record(record())
    tracing.flush()
    assert exporter.get_finished_spans() == ()
    assert not path.exists()


def test_an_otlp_endpoint_without_the_package_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setattr(tracing, "_module_available", lambda name: False)
    cfg = SaleConfig.model_validate(
        {"tracing": {"enabled": True, "otlp_endpoint": "http://localhost:4318"}}
    ).tracing
    with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp-proto-http"):
        tracing.configure(cfg)


def test_config_checks():
    with pytest.raises(ValueError, match="tracing.file or tracing.otlp_endpoint"):
        TracingConfig(enabled=True)
    with pytest.raises(ValueError, match="http"):
        TracingConfig(otlp_endpoint="localhost:4318")
    with pytest.raises(ValueError, match="extra"):
        TracingConfig(enabled=True, file="x", sample=0.5)
    assert TracingConfig(file="rel/spans.jsonl").file.startswith("/")
    assert tracing.traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert tracing.traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert tracing.traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"


class _Broken(SpanExporter):
    def __init__(self):
        self.calls = 0

    def export(self, spans):
        self.calls += 1
        raise RuntimeError("collector down")

    def shutdown(self):
        pass


def test_a_raising_exporter_does_not_raise_from_export_record(tmp_path):
    broken = _Broken()
    _on(tmp_path, broken)
    try:
        tracing.export_record(record())
        assert broken.calls > 0  # it was really called, and raised
    finally:
        tracing.configure(TracingConfig())


def test_a_provider_that_cannot_be_built_warns_once_and_never_raises(tmp_path, caplog):
    # The file is a directory: opening it fails when the provider is built, on the first export.
    cfg = TracingConfig(enabled=True, file=str(tmp_path), processor="simple")
    tracing.configure(cfg)
    try:
        with caplog.at_level(logging.WARNING, logger="sale_ray.tracing"):
            tracing.export_record(record(auction_id="a1"))
            tracing.export_record(record(auction_id="a2"))
    finally:
        tracing.configure(TracingConfig())
    warnings = [r for r in caplog.records if r.name == "sale_ray.tracing"]
    assert len(warnings) == 1
    assert "a1" in warnings[0].getMessage()


def test_export_record_reports_its_own_bug_without_raising(memory, monkeypatch, caplog):
    def boom(*a, **k):
        raise KeyError("bug")

    monkeypatch.setattr(tracing, "_emit", boom)
    with caplog.at_level(logging.WARNING, logger="sale_ray.tracing"):
        tracing.export_record(record())
    assert "KeyError" in caplog.text


def test_importing_sale_ray_imports_no_opentelemetry():
    code = (
        "import sys, sale_ray.config, sale_ray.tracing; "
        "sys.exit(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
