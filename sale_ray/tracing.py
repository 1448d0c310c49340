"""OpenTelemetry traces of finished auctions: one span per auction and one per phase.

Spans are built *after* an auction, from its :class:`~sale_ray.types.AuctionRecord`, rather
than around the running code: the record already carries every phase's seconds, tokens and
dollars, so the auction kernel stays free of tracing and a trace says exactly what the log says.
The phases run one after another in :data:`~sale_ray.types.PHASES` order, so each phase span
starts where the previous one ended, from ``started_at``; the auction span covers them all.

The provider is this module's own (never the global one, which Ray and other libraries may
set), created lazily on the first export, one per process. Importing this module imports no
OpenTelemetry: it is loaded only when tracing is enabled. :func:`export_record` never raises —
a tracing failure must not fail an auction — it logs one warning and goes on.

Reading a trace file: docs/tracing.md.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError
from .types import PHASES, AuctionRecord, Usage

if TYPE_CHECKING:  # only for annotations: importing sale_ray must not import OpenTelemetry
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

#: The pip package that provides OTLP over HTTP (an optional dependency).
OTLP_PACKAGE = "opentelemetry-exporter-otlp-proto-http"
_OTLP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"


class TracingConfig(BaseModel):
    """Where the spans of finished auctions go (docs/tracing.md). Off by default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=False, description="Export one trace per finished auction.")
    file: str | None = Field(
        default=None,
        description="JSON-lines file the spans are appended to, one span per line (made "
        "absolute at load time: Ray workers run in another directory).",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector URL, e.g. http://localhost:4318 (/v1/traces is added "
        f"when the URL has no path). Needs `pip install {OTLP_PACKAGE}`.",
    )
    service_name: str = Field(
        default="sale-ray", min_length=1, description="The `service.name` resource attribute."
    )
    processor: Literal["batch", "simple"] = Field(
        default="batch",
        description="'batch': spans are exported by a background thread (the auction never "
        "waits on the collector; the last spans of a killed process may be lost). 'simple': "
        "each span is written as it ends (tests, files read at once).",
    )

    @field_validator("file")
    @classmethod
    def _absolute(cls, v: str | None) -> str | None:
        return None if v is None else str(Path(v).expanduser().absolute())

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL (OTLP over HTTP)")
        return v

    @model_validator(mode="after")
    def _has_destination(self) -> TracingConfig:
        if self.enabled and not (self.file or self.otlp_endpoint):
            raise ValueError("tracing.enabled needs tracing.file or tracing.otlp_endpoint")
        return self


# --- the process's provider ------------------------------------------------------------------
_lock = threading.Lock()
_config = TracingConfig()
_extra: tuple[SpanExporter, ...] = ()
_provider: TracerProvider | None = None
_broken = False  # the provider could not be built: stop trying until the next configure()
_warned = False


def configure(cfg: TracingConfig, *, exporters: Sequence[SpanExporter] = ()) -> None:
    """Set this process's tracing from ``cfg`` (replacing, and flushing, any earlier setting).

    ``exporters`` are added beside the configured file / OTLP ones (an in-memory exporter in
    tests). The provider itself is built on the first :func:`export_record`; what can be checked
    without building it is checked here, so a config that cannot work fails when it is loaded.

    Raises:
        ConfigError: an OTLP endpoint is set but the OTLP/HTTP exporter is not installed.
    """
    global _config, _extra, _broken, _warned
    if cfg.enabled and cfg.otlp_endpoint and not _module_available(_OTLP_MODULE):
        raise ConfigError(
            f"tracing.otlp_endpoint is set but the OTLP/HTTP exporter is not installed: "
            f"pip install {OTLP_PACKAGE}"
        )
    shutdown()
    with _lock:
        _config, _extra, _broken, _warned = cfg, tuple(exporters), False, False


def export_record(rec: AuctionRecord, *, tenant: str | None = None) -> None:
    """Export the spans of one finished auction; a no-op when tracing is off.

    Cheap (the spans are queued for the processor, see ``TracingConfig.processor``) and never
    raises: a failure is logged once as a warning and the auction's result is untouched.
    """
    if not _config.enabled or _broken:
        return
    try:
        provider = _get_provider()
        if provider is not None:
            _emit(provider.get_tracer(__name__), rec, tenant)
    except Exception as e:  # noqa: BLE001 - tracing must never fail an auction
        _warn_once(f"tracing: auction {rec.auction_id} not exported: {type(e).__name__}: {e}")


def flush(timeout_s: float = 30.0) -> bool:
    """Wait until queued spans are exported; True when everything went out in time."""
    p = _provider
    return True if p is None else bool(p.force_flush(int(timeout_s * 1000)))


def shutdown() -> None:
    """Flush and close the provider; the next export builds a fresh one from the same config."""
    global _provider
    with _lock:
        p, _provider = _provider, None
    if p is not None:
        p.shutdown()


def _get_provider() -> TracerProvider | None:
    global _provider, _broken
    with _lock:
        if _provider is None and not _broken:
            try:
                _provider = _build_provider(_config, _extra)
            except Exception:
                _broken = True  # e.g. an unwritable file: do not retry on every auction
                raise
        return _provider


def _build_provider(cfg: TracingConfig, extra: Sequence[SpanExporter]) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    exporters: list[SpanExporter] = []
    if cfg.file:
        exporters.append(_make_file_exporter(cfg.file))
    if cfg.otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter(endpoint=traces_url(cfg.otlp_endpoint)))
    exporters.extend(extra)
    processor = BatchSpanProcessor if cfg.processor == "batch" else SimpleSpanProcessor
    # shutdown_on_exit: the SDK flushes a batch queue at interpreter exit.
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}))
    for ex in exporters:
        provider.add_span_processor(processor(ex))
    return provider


def traces_url(endpoint: str) -> str:
    """The OTLP traces URL for ``endpoint``: a bare collector address gets ``/v1/traces``, as
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` does; a URL with a path is used as given."""
    u = urlsplit(endpoint)
    if u.path in ("", "/"):
        return urlunsplit(u._replace(path="/v1/traces"))
    return endpoint


def _make_file_exporter(path: str) -> SpanExporter:
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class JsonLinesSpanExporter(SpanExporter):
        """Appends each span as one line of JSON (the SDK's ``ReadableSpan.to_json``)."""

        def __init__(self, path: str) -> None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # O_APPEND and one write() per line: several processes (auctioneer replicas) can
            # share the file without their lines interleaving.
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            if self._fd is None:
                return SpanExportResult.FAILURE
            for span in spans:
                os.write(self._fd, (span.to_json(indent=None) + "\n").encode())
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True  # os.write is unbuffered

    return JsonLinesSpanExporter(path)


# --- record -> spans -------------------------------------------------------------------------
def _emit(tracer: Any, rec: AuctionRecord, tenant: str | None) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    phases = [p for p in PHASES if p in rec.phase_seconds or p in rec.phase_usage]
    phases += sorted((set(rec.phase_seconds) | set(rec.phase_usage)) - set(PHASES))
    total_s = sum(max(rec.phase_seconds.get(p, 0.0), 0.0) for p in phases)
    # A record built without a start time (tests, old logs): it has just finished, so end now.
    start_s = rec.started_at if rec.started_at > 0 else time.time() - total_s
    t0 = _ns(start_s)

    usage = sum(rec.phase_usage.values(), Usage())
    attrs = {
        "sale.auction_id": rec.auction_id,
        "sale.task_id": rec.task_id,
        "sale.tenant": tenant,
        "sale.kind": rec.kind,
        "sale.bin": rec.bin,
        "sale.winner": rec.winner,
        "sale.passed": rec.passed,
        "sale.error": rec.error,
        "sale.failure": rec.failure,
        **_usage_attrs(usage),
    }
    root = tracer.start_span("auction", start_time=t0, attributes=_clean(attrs))
    if rec.error:
        root.set_status(Status(StatusCode.ERROR, rec.error))
    root_ctx = trace.set_span_in_context(root)

    cursor = t0
    spans: dict[str, tuple[Any, int, int]] = {}  # phase -> (span, start ns, end ns)
    for p in phases:
        end = cursor + _ns(max(rec.phase_seconds.get(p, 0.0), 0.0))
        a: dict[str, Any] = {
            "sale.auction_id": rec.auction_id,
            "sale.phase": p,
            **_usage_attrs(rec.phase_usage.get(p, Usage())),
        }
        if p == "bid":
            a["sale.agents"] = [sb.bid.agent for sb in rec.bids if not sb.bid.refined]
        if p == "execute" and rec.execution is not None:
            a["sale.agent"] = rec.execution.agent
            a["sale.error"] = rec.execution.error
            a["sale.stop"] = rec.execution.stop
        if p == "evaluate":
            a["sale.passed"] = rec.passed
        span = tracer.start_span(p, context=root_ctx, start_time=cursor, attributes=_clean(a))
        if p == "execute" and rec.execution is not None and rec.execution.error:
            span.set_status(Status(StatusCode.ERROR, rec.execution.error))
        spans[p] = (span, cursor, end)
        cursor = end

    # Calls inside a phase ran side by side from its start: one child span per bid (bids under
    # `bid`, refined bids under `refine`) and per juror, as long as the call took.
    for sb in rec.bids:
        b = sb.bid
        extra = {"sale.rejected": b.rejected, "sale.score": sb.score, "sale.refined": b.refined}
        _child(
            tracer,
            spans.get("refine" if b.refined else "bid"),
            "bid.agent",
            b.agent,
            b.usage,
            extra,
        )
    for v in rec.verdicts:
        _child(tracer, spans.get("jury"), "jury.juror", v.juror, v.usage, {"sale.error": v.error})

    for span, _, end in spans.values():
        span.end(end_time=end)
    root.end(end_time=max(cursor, t0))


def _child(
    tracer: Any,
    parent: tuple[Any, int, int] | None,
    name: str,
    agent: str,
    usage: Usage,
    extra: dict[str, Any],
) -> None:
    from opentelemetry import trace

    if parent is None:  # the phase is not in the record: nothing to hang the call under
        return
    span, start, end = parent
    attrs = {"sale.agent": agent, **_usage_attrs(usage), **extra}
    child = tracer.start_span(
        name, context=trace.set_span_in_context(span), start_time=start, attributes=_clean(attrs)
    )
    # Clamped to the phase, so a child never sticks out of its parent in a trace viewer.
    child.end(end_time=min(start + _ns(max(usage.latency_s, 0.0)), end))


def _usage_attrs(u: Usage) -> dict[str, Any]:
    return {
        "sale.prompt_tokens": u.prompt_tokens,
        "sale.completion_tokens": u.completion_tokens,
        "sale.cost_usd": u.cost_usd,
        "sale.calls": u.calls,
    }


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    """OpenTelemetry attributes cannot be None: leave unset ones out."""
    return {k: v for k, v in attrs.items() if v is not None}


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _warn_once(msg: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("%s (further tracing failures are not logged)", msg)
