"""OpenTelemetry tracing for raygen's processes: one tracer provider per process, the exporter chosen in the
config, and W3C trace context carried across Serve handle calls as a plain dict argument (`inject()` on the
caller, `extract()` in the callee), so one request is one trace across the ingress, the model replica and
back. No Ray in here.

Exporters: "off" (no tracer provider: spans are no-ops and there are no trace ids), "none" (spans are still created, so trace ids reach headers and logs, but nothing is exported),
"console" (JSON lines on stdout: the Ray worker log), "otlp" (OTLP over HTTP; needs
`pip install opentelemetry-exporter-otlp-proto-http`), "memory" (kept in the process; `finished_spans()`
reads them: tests).
"""

from __future__ import annotations

import threading

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from raygen.errors import ConfigError

EXPORTERS = ("off", "none", "console", "otlp", "memory")
_lock = threading.Lock()
_state: dict = {"exporter": None, "memory": None, "provider": None}


def setup(exporter: str = "none", service: str = "raygen", otlp_endpoint: str | None = None) -> None:
    """Install this process's tracer provider. The first call wins, except that "memory" can join later (a
    test process whose driver code already set up another exporter): its exporter is added to the provider."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"tracing exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    with _lock:
        if _state["exporter"] is not None:
            if exporter == "memory" and _state["memory"] is None:
                if _state["provider"] is None:  # it was "off": no provider was ever set, so one can be now
                    _install(TracerProvider(resource=Resource.create({"service.name": service})), "memory")
                _state["memory"] = InMemorySpanExporter()
                _state["provider"].add_span_processor(SimpleSpanProcessor(_state["memory"]))
            return
        if exporter == "off":
            _state["exporter"] = "off"
            return
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        if exporter == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif exporter == "memory":
            _state["memory"] = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(_state["memory"]))
        elif exporter == "otlp":
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as exc:
                raise ConfigError("tracing exporter otlp needs `pip install -e .[otlp]` "
                                  "(opentelemetry-exporter-otlp-proto-http)") from exc
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        _install(provider, exporter)


def _install(provider: TracerProvider, exporter: str) -> None:
    trace.set_tracer_provider(provider)
    _state.update(exporter=exporter, provider=provider)


def tracer(name: str = "raygen"):
    return trace.get_tracer(name)


def inject(span=None) -> dict[str, str]:
    """The current trace context (or `span`'s) as W3C headers ({"traceparent": ...}): pass it across a
    handle call."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span) if span is not None else None)
    return carrier


def extract(carrier: dict[str, str] | None):
    """A context to start child spans in (`tracer().start_as_current_span(..., context=extract(c))`)."""
    return propagate.extract(carrier or {})


def attach(carrier: dict[str, str] | None):
    """Make the carrier's context current; returns a token for `context.detach`."""
    return context.attach(extract(carrier))


def current_trace_id() -> str | None:
    """The 32-hex trace id of the current span, or None outside a sampled span."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def finished_spans() -> list[dict]:
    """Spans the memory exporter holds in this process: name, ids, parent, times (ns), attributes."""
    mem = _state["memory"]
    if mem is None:
        return []
    out = []
    for s in mem.get_finished_spans():
        out.append({"name": s.name, "trace_id": format(s.context.trace_id, "032x"),
                    "span_id": format(s.context.span_id, "016x"),
                    "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                    "start_ns": s.start_time, "end_ns": s.end_time, "attributes": dict(s.attributes or {})})
    return out


def record_spans(obs, service: str, name: str, start: float, end: float, children: list[tuple[str, float, float]],
                 attributes: dict | None = None) -> str | None:
    """A finished batch job as a trace after the fact: a root span and one child per (name, start, end) stage,
    times in time.time() seconds. obs: the ObservabilitySettings of the run (its exporter is set up here if
    this process has none yet). Returns the trace id (None with tracing off)."""
    setup(obs.tracing, service=service, otlp_endpoint=obs.otlp_endpoint)
    root = tracer().start_span(name, start_time=int(start * 1e9),
                               attributes={k: v for k, v in (attributes or {}).items() if v is not None})
    ctx = trace.set_span_in_context(root)
    for child, s, e in children:
        tracer().start_span(child, context=ctx, start_time=int(s * 1e9)).end(end_time=int(max(s, e) * 1e9))
    root.end(end_time=int(end * 1e9))
    c = root.get_span_context()
    return format(c.trace_id, "032x") if c.is_valid else None


class SpanSource:
    """Mixin for Serve deployments: `finished_spans()` over a handle reads that replica's memory exporter."""

    def finished_spans(self) -> list[dict]:
        return finished_spans()
