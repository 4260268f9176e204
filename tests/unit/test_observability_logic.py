"""Tracing and logs without Ray: context carried through a dict makes one trace; JSON logs carry the ids;
the access record keeps text out unless allowed."""

from __future__ import annotations

import json
import logging

import pytest

from raygen.errors import ConfigError


def test_context_carried_in_a_dict_joins_one_trace():
    from raygen.observability import tracing

    tracing.setup("memory", service="test")
    t = tracing.tracer()
    with t.start_as_current_span("ingress") as root:
        carrier = tracing.inject()
        trace_id = tracing.current_trace_id()
    assert set(carrier) == {"traceparent"} and trace_id in carrier["traceparent"]
    # The callee (another process in real life) only sees the carrier.
    with t.start_as_current_span("llm_server.generate", context=tracing.extract(carrier)):
        with t.start_as_current_span("decode"):
            pass
    spans = {s["name"]: s for s in tracing.finished_spans()}
    assert {s["trace_id"] for s in spans.values()} == {trace_id}
    assert spans["llm_server.generate"]["parent_id"] == format(root.get_span_context().span_id, "016x")
    assert spans["decode"]["parent_id"] == spans["llm_server.generate"]["span_id"]
    with pytest.raises(ConfigError, match="use one of off, none, console, otlp, memory"):
        tracing.setup("jaeger")


def test_json_logs_carry_request_and_trace_ids_and_access_records_keep_text_out():
    from raygen.observability import tracing
    from raygen.observability.logs import JsonFormatter, access_record, request_id_var

    tracing.setup("memory")
    rec = logging.LogRecord("raygen.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    token = request_id_var.set("cmpl-1")
    try:
        with tracing.tracer().start_as_current_span("s"):
            line = json.loads(JsonFormatter().format(rec))
            tid = tracing.current_trace_id()
    finally:
        request_id_var.reset(token)
    assert line["message"] == "hello you" and line["request_id"] == "cmpl-1" and line["trace_id"] == tid
    fields = dict(route="/v1/completions", status=200, model="m", version="v1", key_name="alice", prompt_tokens=3,
                  completion_tokens=5, ttft_s=0.0123, latency_s=0.2, cache="miss", safety=None,
                  prompt="secret prompt", completion="secret answer")
    assert "prompt" not in access_record(**fields) and "completion" not in access_record(**fields)
    assert access_record(**fields, log_text=True)["prompt"] == "secret prompt"
    assert access_record(**fields)["ttft_ms"] == 12.3


def test_a_request_observer_traces_measures_and_writes_one_access_line_without_secrets(caplog):
    from raygen.observability import tracing
    from raygen.observability.requests import RequestObserver

    tracing.setup("memory")
    obs = RequestObserver("chat.completions", "m", "v3", "chatcmpl-1")
    obs.key_name = "alice"
    obs.prompt_text = "my secret prompt"
    with obs.child("rate_limit.acquire"):
        pass
    carrier = obs.carrier()
    with tracing.tracer().start_as_current_span("preprocess", context=tracing.extract(carrier)):
        pass  # another hop joins through the carrier
    obs.delta(0, 1, "Hel", 7)
    obs.delta(0, 3, "lo!", 7)
    with caplog.at_level(logging.INFO, logger="raygen.access"):
        obs.finish(200, {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
        obs.finish(500)  # idempotent: the first outcome stands
    spans = {s["name"]: s for s in tracing.finished_spans() if s["trace_id"] == obs.trace_id}
    root = spans["POST /v1/chat/completions"]
    assert root["parent_id"] is None and root["attributes"]["http.status_code"] == 200
    assert spans["rate_limit.acquire"]["parent_id"] == root["span_id"]
    assert spans["preprocess"]["parent_id"] == root["span_id"]
    assert root["attributes"]["raygen.completion_tokens"] == 3
    lines = [r for r in caplog.records if r.name == "raygen.access"]
    assert len(lines) == 1
    rec = lines[0]
    assert (rec.status, rec.key, rec.trace_id, rec.request_id) == (200, "alice", obs.trace_id, "chatcmpl-1")
    assert rec.prompt_tokens == 7 and rec.completion_tokens == 3 and rec.ttft_ms is not None
    assert "secret" not in json.dumps({k: str(v) for k, v in vars(rec).items()})


def test_access_lines_carry_text_only_with_the_privacy_flag(caplog):
    from raygen.observability import tracing
    from raygen.observability.requests import RequestObserver

    tracing.setup("memory")
    obs = RequestObserver("completions", "m", "v3", "cmpl-2", log_text=True)
    obs.prompt_text = '"say hi"'
    obs.delta(0, 2, "hi there", 3)
    with caplog.at_level(logging.INFO, logger="raygen.access"):
        obs.finish(200)
    (rec,) = [r for r in caplog.records if r.name == "raygen.access"]
    assert rec.prompt == '"say hi"' and rec.completion == "hi there" and rec.completion_tokens == 2


def test_engine_spans_follow_the_engines_timestamps():
    from opentelemetry import trace

    from raygen.engine.request import RequestTiming
    from raygen.observability import tracing
    from raygen.observability.requests import engine_spans

    tracing.setup("memory")
    with tracing.tracer().start_as_current_span("llm.generate") as parent:
        engine_spans(trace.set_span_in_context(parent), RequestTiming(100.0, 100.5, 101.25, 103.0), 0)
        engine_spans(trace.set_span_in_context(parent), RequestTiming(100.0, None, None, 100.2), 1)  # aborted early
    pid = format(parent.get_span_context().span_id, "016x")
    got = {(s["name"], s["attributes"]["raygen.choice"]): s for s in tracing.finished_spans() if s["parent_id"] == pid}
    assert set(got) == {("queue_wait", 0), ("prefill", 0), ("decode", 0)}
    assert (got["prefill", 0]["start_ns"], got["prefill", 0]["end_ns"]) == (100_500_000_000, 101_250_000_000)
    assert got["decode", 0]["end_ns"] - got["queue_wait", 0]["start_ns"] == 3_000_000_000


def test_tracing_off_makes_no_trace_ids():
    import subprocess
    import sys

    code = ("from raygen.observability import tracing\n"
            "from raygen.observability.requests import RequestObserver\n"
            "tracing.setup('off')\n"
            "o = RequestObserver('completions', 'm', 'v', 'r', access=False)\n"
            "o.finish(200)\n"
            "print(o.trace_id, o.carrier())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "None {}"


def test_batch_jobs_become_a_trace_after_the_fact():
    from raygen.observability.config import ObservabilitySettings
    from raygen.observability import tracing

    tid = tracing.record_spans(ObservabilitySettings(tracing="memory"), "test", "data.prepare", 10.0, 20.0,
                               [("data.dedup", 11.0, 15.0), ("data.features", 15.0, 19.5)], {"raygen.run": "run-1",
                                                                                             "raygen.none": None})
    spans = [s for s in tracing.finished_spans() if s["trace_id"] == tid]
    root = next(s for s in spans if s["name"] == "data.prepare")
    assert root["attributes"] == {"raygen.run": "run-1"} and root["end_ns"] == 20_000_000_000
    kids = sorted((s["name"], s["start_ns"], s["parent_id"]) for s in spans if s is not root)
    assert kids == [("data.dedup", 11_000_000_000, root["span_id"]), ("data.features", 15_000_000_000, root["span_id"])]
