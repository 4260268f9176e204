"""One HTTP request's observability, in one object the ingress carries from arrival to the last byte: the
root span (children for each hop, and the W3C carrier that crosses Serve handle calls), the request
metrics (status, latency, TTFT, inter-token latency, tokens, cache and rate-limit outcomes) and the single
access-log line. No Ray in here: metrics are no-ops outside Ray, so this unit-tests in milliseconds.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from raygen.observability.logs import ACCESS_LOGGER, access_record
from raygen.observability.metrics import record
from raygen.observability.tracing import tracer

access_log = logging.getLogger(ACCESS_LOGGER)


class RequestObserver:
    def __init__(self, route: str, model: str, version: str, request_id: str, *, log_text: bool = False,
                 access: bool = True, parent: dict[str, str] | None = None):
        """parent: the HTTP request's headers; a W3C `traceparent` there makes this request part of the
        caller's trace."""
        self.route, self.model, self.version, self.request_id = route, model, version, request_id
        self.log_text, self.access = log_text, access
        self.t0 = time.perf_counter()
        self.span = tracer().start_span(f"POST /v1/{route.replace('.', '/')}", kind=SpanKind.SERVER,
                                        context=propagate.extract(parent or {}),
                                        attributes={"http.route": f"/v1/{route.replace('.', '/')}",
                                                    "raygen.request_id": request_id, "raygen.model": model,
                                                    "raygen.model_version": version})
        self.ctx = trace.set_span_in_context(self.span)
        self.key_name = "anonymous"
        self.cache = "skip"  # skip (not looked up: cache off, or the request is not deterministic) | miss | hit
        self.safety: str | None = None  # None | refused_input | cut_output
        self.first_token_s: float | None = None
        self._last_token_s: float | None = None
        self._seen: dict[int, int] = {}  # choice -> output tokens seen
        self.prompt_tokens: int | None = None
        self.prompt_text: str | None = None
        self.completion: list[str] = []
        self._done = False

    # -- tracing ----------------------------------------------------------------------------------------
    @property
    def trace_id(self) -> str | None:
        c = self.span.get_span_context()
        return format(c.trace_id, "032x") if c.is_valid else None

    def carrier(self) -> dict[str, str]:
        """W3C trace context of the root span: pass as `trace=` to the next hop."""
        out: dict[str, str] = {}
        propagate.inject(out, context=self.ctx)
        return out

    @contextmanager
    def child(self, name: str, **attributes):
        with tracer().start_as_current_span(name, context=self.ctx, attributes=attributes) as s:
            yield s

    # -- events -----------------------------------------------------------------------------------------
    def cache_result(self, hit: bool) -> None:
        self.cache = "hit" if hit else "miss"
        record("raygen_response_cache_total", model=self.model, result=self.cache)

    def delta(self, index: int, num_output_tokens: int, text: str, num_prompt_tokens: int) -> None:
        """A streamed chunk arrived: TTFT on the first, inter-token latency (per token) after that."""
        now = time.perf_counter()
        new = num_output_tokens - self._seen.get(index, 0)
        self._seen[index] = num_output_tokens
        self.prompt_tokens = num_prompt_tokens
        if self.log_text and index == 0:
            self.completion.append(text)
        if new <= 0:
            return
        if self.first_token_s is None:
            self.first_token_s = now - self.t0
            record("raygen_ttft_seconds", self.first_token_s, model=self.model)
            self.span.add_event("first_token")
        elif self._last_token_s is not None:
            gap = (now - self._last_token_s) / new
            for _ in range(min(new, 16)):  # one observation per token (bounded per chunk)
                record("raygen_itl_seconds", gap, model=self.model)
        self._last_token_s = now

    def finish(self, status: int, usage: dict | None = None, error: str | None = None) -> None:
        """The response is complete (or failed): metrics, the access-log line, end the span. Idempotent."""
        if self._done:
            return
        self._done = True
        latency = time.perf_counter() - self.t0
        labels = {"model": self.model, "route": self.route}
        record("raygen_requests_total", model=self.model, route=self.route, status=str(status))
        record("raygen_request_latency_seconds", latency, **labels)
        prompt = (usage or {}).get("prompt_tokens", self.prompt_tokens)
        completion = (usage or {}).get("completion_tokens", sum(self._seen.values()) if self._seen else None)
        if status < 400 and self.cache != "hit":
            record("raygen_prompt_tokens_total", prompt or 0, model=self.model)
            record("raygen_generation_tokens_total", completion or 0, model=self.model)
            first = self._seen.get(0, 0)
            if self.first_token_s is not None and self._last_token_s is not None and first > 1:
                tpot = (self._last_token_s - self.t0 - self.first_token_s) / (first - 1)  # choice 0's pace
                record("raygen_tpot_seconds", tpot, model=self.model)
        if status == 429:
            record("raygen_rate_limited_total", model=self.model)
        self.span.set_attribute("http.status_code", status)
        self.span.set_attribute("raygen.cache", self.cache)
        if prompt is not None:
            self.span.set_attribute("raygen.prompt_tokens", prompt)
        if completion is not None:
            self.span.set_attribute("raygen.completion_tokens", completion)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR, error or str(status)))
        self.span.end()
        if self.access:
            rec = access_record(route=self.route, status=status, model=self.model, version=self.version,
                                key_name=self.key_name, prompt_tokens=prompt, completion_tokens=completion,
                                ttft_s=self.first_token_s, latency_s=latency, cache=self.cache, safety=self.safety,
                                prompt=self.prompt_text, completion="".join(self.completion) or None,
                                log_text=self.log_text)
            access_log.info("%s %s %d", "POST", f"/v1/{self.route.replace('.', '/')}", status,
                            extra={**rec, "request_id": self.request_id, "trace_id": self.trace_id,
                                   **({"error": error} if error else {})})


def _ns(t: float) -> int:
    return int(t * 1e9)


def engine_spans(ctx, timing, index: int) -> None:
    """queue_wait / prefill / decode spans of one finished sequence, children in context `ctx`."""
    t = tracer()
    marks = [("queue_wait", timing.arrival, timing.scheduled), ("prefill", timing.scheduled, timing.first_token),
             ("decode", timing.first_token, timing.finished)]
    for name, start, end in marks:
        if start is not None and end is not None:
            t.start_span(name, context=ctx, start_time=_ns(start), attributes={"raygen.choice": index}
                         ).end(end_time=_ns(max(end, start)))
