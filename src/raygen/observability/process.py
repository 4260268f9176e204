"""One call per process (a Serve replica, an actor, a driver) that applies the `observability:` config:
the tracer provider and exporter, metrics on or off, JSON logs. Idempotent, so every deployment's
constructor can call it."""

from __future__ import annotations

from raygen.observability import metrics, tracing
from raygen.observability.config import ObservabilitySettings
from raygen.observability.logs import setup_json_logging


def init_process(obs: ObservabilitySettings | dict | None, service: str) -> ObservabilitySettings:
    """obs: the `observability:` config (a dict is validated; None: the defaults). Returns the settings used."""
    o = obs if isinstance(obs, ObservabilitySettings) else ObservabilitySettings.model_validate(obs or {})
    tracing.setup(o.tracing, service=service, otlp_endpoint=o.otlp_endpoint)
    metrics.set_enabled(o.metrics)
    if o.json_logs:
        setup_json_logging()
    return o
