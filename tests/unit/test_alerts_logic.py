"""Alert rules without Ray: scrape parsing, signals over two scrapes, rule states, silences, PromQL."""

from __future__ import annotations


import pytest

from raygen.errors import ConfigError, RaygenError
from raygen.observability.alerts import AlertEvaluator, Rule, Window, parse_prometheus_text

SCRAPE = """# HELP ray_raygen_requests_total Requests.
# TYPE ray_raygen_requests_total counter
ray_raygen_requests_total{model="demo",route="/v1/completions",status="200"} 90
ray_raygen_requests_total{model="demo",route="/v1/completions",status="500"} 10
ray_raygen_ttft_seconds_bucket{le="0.1"} 50
ray_raygen_ttft_seconds_bucket{le="0.5"} 90
ray_raygen_ttft_seconds_bucket{le="+Inf"} 100
ray_raygen_kv_cache_usage_ratio{replica="a"} 0.4
ray_raygen_kv_cache_usage_ratio{replica="b"} 0.97
"""


def _samples(ok: float, failed: float, buckets=(50, 90, 100)):
    text = (f'ray_raygen_requests_total{{status="200"}} {ok}\nray_raygen_requests_total{{status="503"}} {failed}\n'
            f'ray_raygen_ttft_seconds_bucket{{le="0.1"}} {buckets[0]}\nray_raygen_ttft_seconds_bucket{{le="0.5"}} '
            f'{buckets[1]}\nray_raygen_ttft_seconds_bucket{{le="+Inf"}} {buckets[2]}\n')
    return parse_prometheus_text(text)


def test_parse_and_signals():
    s = parse_prometheus_text(SCRAPE)
    assert s[("ray_raygen_requests_total", (("model", "demo"), ("route", "/v1/completions"), ("status", "500")))] == 10
    w = Window(prev={}, now=s, seconds=60)
    assert w.delta("ray_raygen_requests_total") == 100
    assert w.delta("ray_raygen_requests_total", {"status": "5.."}) == 10
    assert w.gauge("ray_raygen_kv_cache_usage_ratio") == 0.97
    assert w.quantile(0.5, "ray_raygen_ttft_seconds") == pytest.approx(0.1)
    assert w.quantile(0.99, "ray_raygen_ttft_seconds") == 0.5  # in the +Inf bucket: its lower bound, as Prometheus
    assert w.quantile(0.7, "ray_raygen_ttft_seconds") == pytest.approx(0.1 + 0.4 * 0.5)  # linear within (0.1, 0.5]
    assert w.delta("missing_total") is None


def test_counter_reset_counts_from_zero():
    w = Window(prev=_samples(100, 0), now=_samples(5, 0), seconds=10)  # the process restarted
    assert w.delta("ray_raygen_requests_total") == 5


def test_rule_fires_after_for_resolves_and_is_silenced_on_flaps():
    rule = Rule.from_dict({"name": "Errors", "expr": "error_rate > 0.05", "for": "20s", "severity": "critical",
                           "message": "{error_rate:.0%} fail", "silence": "5m"})
    ev = AlertEvaluator([rule])
    base = _samples(0, 0)
    bad = lambda k: Window(prev=_samples(100 * k, 10 * k), now=_samples(100 * (k + 1), 10 * (k + 1)), seconds=10)  # noqa: E731
    good = Window(prev=base, now=_samples(100, 0), seconds=10)
    assert ev.step(bad(0), now=0) == []  # pending
    assert ev.step(bad(1), now=10) == []
    [n] = ev.step(bad(2), now=20)
    assert (n.status, n.severity, n.message, n.values) == ("firing", "critical", "9% fail", {"error_rate": 10 / 110})
    assert ev.step(bad(3), now=30) == [] and ev.firing() == ["Errors"]  # de-duplicated while firing
    [r] = ev.step(good, now=40)
    assert r.status == "resolved" and ev.firing() == []
    for t in (50, 60, 70):  # fires again within the silence: state firing, nobody paged
        assert ev.step(bad(4), now=t) == []
    assert ev.firing() == ["Errors"]
    assert ev.step(good, now=80) == []  # its resolve is not sent either
    for t in (400, 410):
        ev.step(bad(5), now=t)
    assert [n.status for n in ev.step(bad(6), now=420)] == ["firing"]  # after the silence: paged


def test_no_data_means_no_alert_and_bad_rules_are_refused():
    ev = AlertEvaluator([Rule("Kv", "kv_cache_usage > 0.95"), Rule("Nan", "train_loss_nan == 1 or error_rate > 0.5")])
    assert ev.step(Window({}, {}, 10), now=0) == []
    [n] = ev.step(Window({}, parse_prometheus_text(SCRAPE), 10), now=1)
    assert n.rule == "Kv"
    for bad, message in [("nope > 1", "unknown signal 'nope'"), ("__import__('os')", "Call is not allowed"),
                         ("error_rate >", "not an expression"), ("error_rate > 'x'", "only numbers")]:
        with pytest.raises(ConfigError, match=message):
            Rule("R", bad)
    with pytest.raises(ConfigError, match="needs name and expr"):
        Rule.from_dict({"name": "R"})
    with pytest.raises(ConfigError, match="unique"):
        AlertEvaluator([Rule("R", "error_rate > 1"), Rule("R", "error_rate > 2")])


def test_promql_of_a_rule_uses_each_signals_query():
    q = Rule("R", "error_rate > 0.05 and ttft_p99_seconds > 2").promql()
    assert q.startswith('((sum(rate(ray_raygen_requests_total{status=~"5.."}[5m])) or vector(0)) / '
                        'sum(rate(ray_raygen_requests_total[5m]))) > 0.05 and on() (histogram_quantile(0.99')


def test_each_signal_is_one_definition_that_renders_promql_and_evaluates_a_window():
    """The forms cannot drift: both come from one tree. Each node's two renderings, on two-run scrapes."""
    from raygen.observability.signals import SIGNALS

    loss = ('ray_raygen_train_loss{run="a"} 4.0\nray_raygen_train_loss{run="b"} 3.0\n'
            'ray_raygen_train_loss_min{run="a"} 2.0\nray_raygen_train_loss_min{run="b"} 1.0\n')
    w = Window({}, parse_prometheus_text(loss), 60)
    # Per run, as PromQL's one-to-one matching does: run b is 3x its best (max(loss)/min(best) would say 4).
    assert SIGNALS["train_loss_ratio"].value(w) == 3.0
    assert SIGNALS["train_loss_ratio"].promql == "max(ray_raygen_train_loss / ray_raygen_train_loss_min)"
    assert SIGNALS["train_loss_nan"].value(w) == 0.0
    nan = Window({}, parse_prometheus_text(loss.replace(" 3.0", " NaN")), 60)
    assert SIGNALS["train_loss_nan"].value(nan) == 1.0  # PromQL: x != bool x is 1 only for NaN
    assert SIGNALS["train_loss_nan"].promql == "max(ray_raygen_train_loss != bool ray_raygen_train_loss)"
    ok_only = Window({}, _samples(100, 0), 60)  # no 5xx yet: 0%, in both forms (`or vector(0)`)
    ok_only.now = {k: v for k, v in ok_only.now.items() if dict(k[1]).get("status") != "503"}
    assert SIGNALS["error_rate"].value(ok_only) == 0.0 and "or vector(0)" in SIGNALS["error_rate"].promql
    assert SIGNALS["rate_limited_per_second"].value(Window({}, parse_prometheus_text(
        "ray_raygen_rate_limited_total 30\n"), 60)) == 0.5
    for name, sig in SIGNALS.items():  # every signal evaluates the recorded scrape, or says it has no data
        v = sig.value(Window({}, parse_prometheus_text(SCRAPE), 60))
        assert v is None or isinstance(v, float), (name, v)


def test_default_rules_load_and_the_prometheus_file_is_current():
    from pathlib import Path

    import yaml

    from raygen.observability.alerts import load_rules, prometheus_rules

    rules = load_rules()
    assert {r.name for r in rules} >= {"HighErrorRate", "TTFTAboveSLO", "KVCacheSaturated", "ReplicasRestarting",
                                       "RateLimitSurge", "SafetyBlocksSurge", "TrainingLossNaN", "TrainingDiverging",
                                       "DataDropRateJump"}
    checked_in = yaml.safe_load((Path(__file__).parents[2] / "cluster" / "prometheus-rules.yaml").read_text())
    assert checked_in == prometheus_rules(rules), "regenerate: python -m raygen.observability.export"


def test_metric_names_follow_prometheus_conventions_and_labels_are_bounded():
    from raygen.observability.alerts import SIGNALS
    from raygen.observability.metrics import METRICS, record, scraped_name

    for name, d in METRICS.items():
        assert name.startswith("raygen_") and name == name.lower()
        if d.kind == "counter":
            assert name.endswith("_total"), name
        if "latency" in name or "time" in name or name.endswith("ttft_seconds"):
            assert name.endswith("_seconds") and d.kind == "histogram", name
        assert not {"key", "api_key", "prompt", "user", "user_id", "text"} & set(d.labels), name
    # Every metric a signal reads is defined, under its scraped name.
    scraped = {scraped_name(n) for n in METRICS} | {scraped_name(n) + "_bucket" for n, d in METRICS.items()
                                                    if d.kind == "histogram"}
    import re

    for s in SIGNALS.values():
        for metric in re.findall(r"ray_raygen_[a-z_]+", s.promql):
            assert metric in scraped, metric
    with pytest.raises(RaygenError, match="takes labels"):
        record("raygen_requests_total", model="m", status="200")  # route missing
    record("raygen_requests_total", model="m", route="/v1/completions", status="200")  # no Ray here: a no-op


def test_grafana_dashboard_is_current_and_reads_defined_metrics():
    import json
    import re
    from pathlib import Path

    from raygen.observability.dashboard import grafana_dashboard
    from raygen.observability.metrics import METRICS, scraped_name

    board = grafana_dashboard()
    checked_in = json.loads((Path(__file__).parents[2] / "cluster" / "grafana-dashboard.json").read_text())
    assert checked_in == board, "regenerate: python -m raygen.observability.export"
    known = {scraped_name(n) + suffix for n in METRICS for suffix in ("", "_bucket")}
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(board["panels"]) >= 12
    for metric in {m for e in exprs for m in re.findall(r"ray_raygen_[a-z_]+", e)}:
        assert metric in known, metric
