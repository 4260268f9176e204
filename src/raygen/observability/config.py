"""Observability's config: tracing, metrics, logs and the alert evaluator (`observability:` in YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raygen._config_base import ConfigModel


class AlertSettings(ConfigModel):
    enabled: bool = Field(False, description="Run the alert evaluator actor (raygen/observability/alert_actor.py).")
    rules_file: str | None = Field(None, description="YAML list of rules; unset: raygen's default rules.")
    webhooks: list[str] = Field(default_factory=list, description="URLs that get firing/resolved JSON POSTs.")
    metrics_urls: list[str] = Field(default_factory=list, description="Prometheus endpoints to scrape; empty: "
                                                                      "Ray's endpoint on every node.")
    interval_s: float = Field(15, gt=0, description="Seconds between evaluations.")
    retries: int = Field(3, ge=0, description="Webhook retries (exponential backoff) before giving up.")


class ObservabilitySettings(ConfigModel):
    tracing: Literal["off", "none", "console", "otlp", "memory"] = Field(
        "none", description="Span exporter: otlp (needs `pip install -e .[otlp]`), console (JSON lines in the worker "
                            "log), memory (tests), none (spans made, so trace ids reach headers and logs, but not "
                            "exported) or off (no spans, no trace ids).")
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; unset: the exporter's default.")
    metrics: bool = Field(True, description="Record raygen's metrics in Ray's metrics system (Prometheus, dashboard).")
    json_logs: bool = Field(True, description="raygen's loggers write JSON lines with request and trace ids.")
    access_log: bool = Field(True, description="One JSON access-log line per request (logger raygen.access).")
    log_text: bool = Field(False, description="Privacy flag: put prompt and completion text in access logs.")
    alerts: AlertSettings = Field(default_factory=AlertSettings)
