"""One call per process (a Serve replica, an actor, a driver) that applies the `observability:` config:
the tracer provider and exporter, metrics on or off, JSON logs. Idempotent, so every deployment's
constructor can call it."""

from __future__ import annotations

from raygen.observability import metrics, tracing
from raygen.observability.logs import setup_json_logging


def init_process(obs: dict | None, service: str) -> dict:
    """obs: ObservabilitySettings as a dict (None: the defaults). Returns the settings used."""
    from raygen.config import ObservabilitySettings

    o = ObservabilitySettings.model_validate(obs or {})
    tracing.setup(o.tracing, service=service, otlp_endpoint=o.otlp_endpoint)
    metrics.set_enabled(o.metrics)
    if o.json_logs:
        setup_json_logging()
    return o.model_dump()
