"""The Grafana dashboard of cluster/grafana-dashboard.json: the key panels over raygen's metrics (as scraped
from Ray's Prometheus endpoint). Regenerate the file with `python -m raygen.observability.export`."""

from __future__ import annotations

from raygen.observability.alerts import SIGNALS

# (title, unit, [(legend, PromQL)])
_P = "ray_raygen_"
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Requests by status", "reqps", [("{{status}}", f"sum by (status) (rate({_P}requests_total[1m]))")]),
    ("Error rate (5xx)", "percentunit", [("5xx", SIGNALS["error_rate"].promql)]),
    ("Time to first token", "s", [(f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate({_P}ttft_seconds_bucket[5m])))")
                                  for q in (50, 99)]),
    ("Inter-token latency", "s", [(f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate({_P}itl_seconds_bucket[5m])))")
                                  for q in (50, 99)]),
    ("Time per output token", "s", [(f"p{q}", f"histogram_quantile(0.{q}, sum by (le) "
                                              f"(rate({_P}tpot_seconds_bucket[5m])))") for q in (50, 99)]),
    ("Batch size p50", "short", [("p50", f"histogram_quantile(0.5, sum by (le) (rate({_P}batch_size_bucket[5m])))")]),
    ("End-to-end latency p99", "s", [("{{route}}", f"histogram_quantile(0.99, sum by (le, route) "
                                                   f"(rate({_P}request_latency_seconds_bucket[5m])))")]),
    ("Queue time p99", "s", [("p99", f"histogram_quantile(0.99, sum by (le) (rate({_P}queue_time_seconds_bucket[5m])))")]),
    ("Sequences", "short", [("running {{replica}}", f"{_P}running_sequences"),
                            ("waiting {{replica}}", f"{_P}waiting_sequences")]),
    ("KV cache usage", "percentunit", [("{{replica}}", f"{_P}kv_cache_usage_ratio")]),
    ("Prefix-cache hit rate", "percentunit", [("{{replica}}", f"{_P}prefix_cache_hit_ratio")]),
    ("Tokens per second", "short", [("prompt", f"sum(rate({_P}prompt_tokens_total[1m]))"),
                                    ("generated", f"sum(rate({_P}generation_tokens_total[1m]))")]),
    ("Response cache", "reqps", [("{{result}}", f"sum by (result) (rate({_P}response_cache_total[1m]))")]),
    ("Rate-limited and safety-blocked", "reqps", [("429", f"sum(rate({_P}rate_limited_total[1m]))"),
                                                  ("{{rule}}", f"sum by (rule) (rate({_P}safety_blocks_total[1m]))")]),
    ("Model replicas", "short", [("live", f"count({_P}llm_replica_up)"),
                                 ("starts (10m)", f"sum(increase({_P}llm_replica_starts_total[10m]))")]),
    ("Training loss", "short", [("{{run}}", f"{_P}train_loss")]),
    ("Training throughput and MFU", "short", [("tok/s {{run}}", f"{_P}train_tokens_per_second"),
                                              ("MFU {{run}}", f"{_P}train_mfu_ratio")]),
    ("Data drops by reason", "short", [("{{reason}}", f"sum by (reason) (increase({_P}data_dropped_total[1h]))")]),
]


def grafana_dashboard() -> dict:
    """A Grafana dashboard (JSON model) with the key panels, two per row, on a Prometheus datasource."""
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title, "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [{"refId": chr(65 + j), "expr": expr, "legendFormat": legend}
                        for j, (legend, expr) in enumerate(targets)]})
    return {"title": "raygen", "uid": "raygen-overview", "schemaVersion": 39, "time": {"from": "now-1h", "to": "now"},
            "refresh": "30s", "tags": ["raygen", "ray"],
            "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
            "panels": panels}
