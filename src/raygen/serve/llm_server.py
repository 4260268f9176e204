"""LLMServer deployment: one raygen engine per replica; token ids in, per-sequence output chunks out.

Observability: each request's span ("llm.generate") joins the caller's trace and gets children for its
time in the engine (queue wait, prefill, decode) from the engine's own timestamps; the replica's gauges
(running and waiting sequences, KV-cache use, prefix-cache hit rate) and the batch-size histogram are
recorded when Serve polls `record_routing_stats` (every second).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from ray import serve

from raygen.engine.config import EngineConfig
from raygen.engine.request import RequestOutput, SamplingParams
from raygen.errors import EngineOverloadedError, GrammarError, RequestError, unavailable
from raygen.observability.config import ObservabilitySettings
from raygen.observability.metrics import record
from raygen.observability.process import init_process
from raygen.observability.requests import engine_spans
from raygen.observability.tracing import SpanSource, extract, tracer
from raygen.serve.protocol import ReplicaChunk
from raygen.registry import local_model_dir


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
class LLMServer(SpanSource):
    def __init__(self, model_dir: str, engine: EngineConfig, torch_threads: int = 0, model_name: str = "model",
                 observability: ObservabilitySettings | None = None, version: str = "",
                 retry_after_s: int = 1):
        """engine: the serve.engine section of the raygen config, served from model_dir (a local directory
        or a registry version's URI, copied to this node first); version: the registry version this replica
        serves (every chunk it yields names it)."""
        import torch

        from raygen.engine.engine import AsyncLLMEngine

        init_process(observability, "raygen-llm")
        self.model_name, self.version, self.retry_after_s = model_name, version, retry_after_s
        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        local = str(local_model_dir(model_dir))
        self.engine = AsyncLLMEngine.from_config(dataclasses.replace(engine, model=local))
        record("raygen_llm_replica_starts_total", model=model_name)

    async def generate(self, prompt_ids: list[int], params: SamplingParams, trace: dict | None = None
                       ) -> AsyncIterator[ReplicaChunk]:
        """Yields the deltas of the sequences that advanced (one per sequence), until every sequence has
        finished. Cancelling the call (client gone) aborts the request and frees its KV blocks. trace: the
        caller's W3C trace context. A full waiting queue is a 503 with Retry-After."""
        span = tracer().start_span("llm.generate", context=extract(trace),
                                   attributes={"raygen.prompt_tokens": len(prompt_ids), "raygen.n": params.n,
                                               "raygen.max_tokens": params.max_tokens})
        try:
            try:
                if params.structured is not None:  # compiled on a worker thread, once per spec (cached)
                    await self.engine.compile_grammar(params.structured)
                stream = self.engine.add_request(prompt_ids, params, batched=True)
            except GrammarError as exc:  # a schema, regex or grammar that does not compile
                raise RequestError(str(exc), param=exc.param) from exc
            except ValueError as exc:  # too long for the cache, bad ids: the caller's fault
                raise RequestError(str(exc), param="prompt") from exc
            except EngineOverloadedError as exc:
                raise unavailable(f"the model replica is overloaded: {exc}", self.retry_after_s) from exc
            try:
                async for chunk in stream:
                    for out in chunk:
                        if out.timing is not None:
                            self._finished(span, out)
                    yield ReplicaChunk(self.version, chunk)
            finally:
                await stream.aclose()
        except Exception as exc:  # not GeneratorExit or cancellation: the caller left, nothing failed
            if not isinstance(exc, RequestError):
                span.set_status(Status(StatusCode.ERROR, repr(exc)))
            raise
        finally:
            span.end()

    def _finished(self, span, out: RequestOutput) -> None:
        t = out.timing
        engine_spans(trace.set_span_in_context(span), t, out.index)
        span.set_attribute("raygen.cached_tokens", out.num_cached_tokens)
        if out.index == 0 and t.scheduled is not None:
            record("raygen_queue_time_seconds", t.scheduled - t.arrival, model=self.model_name)

    def stats(self) -> dict:
        """Engine stats of this replica, with its Serve replica id, actor name and process id."""
        from dataclasses import asdict

        import ray

        return {"replica": serve.get_replica_context().replica_id.unique_id, "version": self.version,
                "actor_name": ray.get_runtime_context().get_actor_name(), "pid": os.getpid(),
                **asdict(self.engine.stats())}

    def record_routing_stats(self) -> dict:
        """What PrefixAwareRouter balances on (Serve polls it every request_routing_stats_period_s); the
        replica's gauges are recorded on the same beat."""
        s = self.engine.stats()
        labels = {"model": self.model_name, "replica": serve.get_replica_context().replica_id.unique_id}
        record("raygen_llm_replica_up", 1, **labels)
        record("raygen_running_sequences", s.num_running, **labels)
        record("raygen_waiting_sequences", s.num_waiting, **labels)
        record("raygen_kv_cache_usage_ratio", s.kv_usage, **labels)
        record("raygen_prefix_cache_hit_ratio", s.prefix_hit_rate, **labels)
        for n in self.engine.drain_step_sizes():
            record("raygen_batch_size", n, model=self.model_name)
        return {"load": s.num_running + s.num_waiting, "kv_usage": s.kv_usage, "at": time.time()}


    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()

