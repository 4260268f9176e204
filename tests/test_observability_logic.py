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
    with pytest.raises(ConfigError, match="use one of none, console, otlp, memory"):
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
