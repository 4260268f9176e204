"""Structured JSON logs with the request id and trace id, and the one access-log line per request.

`JsonFormatter` renders every record as one JSON object (time, level, logger, message, request_id, trace_id
and any `extra=` fields). The request id lives in a context variable set by the ingress for the duration of a
request, so library code that logs needs no plumbing. `access_record` builds the access-log fields and is the
one place that decides what may appear: the key's holder name (never the key), token counts, latencies, cache
and safety outcome; prompt and completion text only when the privacy flag allows it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("raygen_request_id", default=None)
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
ACCESS_LOGGER = "raygen.access"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        from raygen.observability.tracing import current_trace_id

        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "message": record.getMessage(),
               "request_id": getattr(record, "request_id", None) or request_id_var.get(),
               "trace_id": getattr(record, "trace_id", None) or current_trace_id()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and k not in out})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_json_logging(level: int = logging.INFO, logger: str = "raygen") -> None:
    """JSON lines on stderr for raygen's loggers (idempotent)."""
    log = logging.getLogger(logger)
    if any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(level)
    log.propagate = False


def access_record(*, route: str, status: int, model: str, version: str, key_name: str, prompt_tokens: int | None,
                  completion_tokens: int | None, ttft_s: float | None, latency_s: float, cache: str,
                  safety: str | None, prompt: str | None = None, completion: str | None = None,
                  log_text: bool = False) -> dict:
    """The access-log fields of one request. Text is dropped unless log_text (the privacy flag) is set."""
    rec = {"route": route, "status": status, "model": model, "model_version": version, "key": key_name,
           "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "ttft_ms": None if ttft_s is None else round(1000 * ttft_s, 2), "latency_ms": round(1000 * latency_s, 2),
           "cache": cache, "safety": safety}
    if log_text:
        rec.update(prompt=prompt, completion=completion)
    return rec
