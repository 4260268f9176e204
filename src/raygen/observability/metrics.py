"""Every raygen metric, defined once: name, kind, unit (in the name, Prometheus style), help, labels.

Exported through Ray's metrics system (`ray.util.metrics`): each process's values reach the node's metrics
agent, Ray's Prometheus endpoint and the Ray dashboard. Ray prefixes application metrics with `ray_`, so
`raygen_requests_total` is scraped as `ray_raygen_requests_total` (PROMETHEUS_PREFIX; alert signals and the
generated Prometheus rules use the scraped names). Labels are bounded by construction: HTTP status codes,
the model name, fixed routes, rule and reason names from the config, replica ids; never keys, prompts or
user ids (`check_labels` refuses anything else).

Instruments are created lazily in the process that first records one (a Ray worker or driver); outside Ray
(the engine on a GPU box, unit tests) recording is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

from raygen.errors import RaygenError

PROMETHEUS_PREFIX = "ray_"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


_DEFS = [
    # serving: the HTTP edge
    MetricDef("raygen_requests_total", "counter", "Requests answered, by HTTP status.", ("model", "route", "status")),
    MetricDef("raygen_request_latency_seconds", "histogram", "End-to-end request latency.", ("model", "route"),
              LATENCY_BUCKETS),
    MetricDef("raygen_ttft_seconds", "histogram", "Time to first token.", ("model",), LATENCY_BUCKETS),
    MetricDef("raygen_tpot_seconds", "histogram", "Time per output token after the first, per request.", ("model",),
              TOKEN_LATENCY_BUCKETS),
    MetricDef("raygen_itl_seconds", "histogram", "Inter-token latency (gaps between streamed chunks, per token).",
              ("model",), TOKEN_LATENCY_BUCKETS),
    MetricDef("raygen_prompt_tokens_total", "counter", "Prompt tokens of answered requests.", ("model",)),
    MetricDef("raygen_generation_tokens_total", "counter", "Generated tokens of answered requests.", ("model",)),
    MetricDef("raygen_response_cache_total", "counter", "Response-cache lookups, by result (hit, miss).",
              ("model", "result")),
    MetricDef("raygen_rate_limited_total", "counter", "Requests refused by the rate limiter (429).", ("model",)),
    MetricDef("raygen_gateway_failures_total", "counter", "Gateway calls that failed or timed out (it is down or "
              "being replaced; the cache then misses, the limits fail open or closed as configured).",
              ("model", "call")),
    MetricDef("raygen_safety_blocks_total", "counter", "Safety-filter blocks, by rule and side.",
              ("model", "rule", "side")),
    # serving: the model replicas
    MetricDef("raygen_llm_replica_starts_total", "counter", "Model replica starts (restarts show as repeats).",
              ("model",)),
    MetricDef("raygen_llm_replica_up", "gauge", "1 per live model replica (count() of it: replicas).",
              ("model", "replica")),
    MetricDef("raygen_queue_time_seconds", "histogram", "Time from arrival to the first scheduled step.",
              ("model",), LATENCY_BUCKETS),
    MetricDef("raygen_running_sequences", "gauge", "Sequences in the running batch.", ("model", "replica")),
    MetricDef("raygen_waiting_sequences", "gauge", "Sequences waiting for KV blocks.", ("model", "replica")),
    MetricDef("raygen_kv_cache_usage_ratio", "gauge", "Share of KV-cache blocks in use.", ("model", "replica")),
    MetricDef("raygen_prefix_cache_hit_ratio", "gauge", "Prompt tokens served from the prefix cache, share.",
              ("model", "replica")),
    MetricDef("raygen_batch_size", "histogram", "Sequences per engine step.", ("model",), BATCH_BUCKETS),
    # training
    MetricDef("raygen_train_loss", "gauge", "Training loss (mean over workers) at the last progress line.", ("run",)),
    MetricDef("raygen_train_loss_min", "gauge", "Lowest training loss of the run so far.", ("run",)),
    MetricDef("raygen_train_tokens_per_second", "gauge", "Training throughput, all workers.", ("run",)),
    MetricDef("raygen_train_mfu_ratio", "gauge", "Model FLOPs utilization against the measured peak.", ("run",)),
    # data
    MetricDef("raygen_data_documents_total", "counter", "Documents read by the data stage, and kept.", ("outcome",)),
    MetricDef("raygen_data_dropped_total", "counter", "Documents dropped, by reason.", ("reason",)),
]
METRICS: dict[str, MetricDef] = {m.name: m for m in _DEFS}
_instances: dict[str, object] = {}
_enabled = {"on": True}


def set_enabled(on: bool) -> None:
    """Turn this process's recording on or off (observability.metrics in the config)."""
    _enabled["on"] = bool(on)


def scraped_name(name: str) -> str:
    """The name Prometheus sees for a raygen metric."""
    return PROMETHEUS_PREFIX + name


def check_labels(name: str, labels: dict[str, str]) -> None:
    d = METRICS[name]
    if set(labels) != set(d.labels):
        raise RaygenError(f"metric {name} takes labels {d.labels}, got {sorted(labels)}")


def _instrument(name: str):
    inst = _instances.get(name)
    if inst is None:
        try:
            import ray
            from ray.util import metrics as rm
        except ImportError:
            return None
        if not ray.is_initialized():
            return None
        d = METRICS[name]
        if d.kind == "counter":
            inst = rm.Counter(d.name, d.help, tag_keys=d.labels)
        elif d.kind == "gauge":
            inst = rm.Gauge(d.name, d.help, tag_keys=d.labels)
        else:
            inst = rm.Histogram(d.name, d.help, boundaries=list(d.buckets), tag_keys=d.labels)
        _instances[name] = inst
    return inst


def record(name: str, value: float = 1.0, **labels: str) -> None:
    """Counter: add value (a zero adds nothing); gauge: set it; histogram: observe it."""
    check_labels(name, labels)
    if not _enabled["on"]:
        return
    inst = _instrument(name)
    if inst is None:
        return
    tags = {k: str(v) for k, v in labels.items()}
    kind = METRICS[name].kind
    if kind == "counter":
        if value > 0:  # Ray's counters refuse 0 (nothing to add)
            inst.inc(value, tags=tags)
    elif kind == "gauge":
        inst.set(value, tags=tags)
    else:
        inst.observe(value, tags=tags)
