"""Postprocessor deployment: drives the model's output stream; response formatting (text per choice,
logprobs with token strings, usage) and the output safety filter.

Incremental detokenization (UTF-8 split across tokens, stop strings split across chunks) happens in the
engine (raygen/engine/detok.py), which must stop generating the moment a stop string completes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator

from ray import serve

from raygen.engine.request import RequestOutput, SamplingParams
from raygen.observability.config import ObservabilitySettings
from raygen.observability.metrics import record
from raygen.observability.process import init_process
from raygen.observability.tracing import SpanSource, extract, inject, tracer
from raygen.registry import local_model_dir
from raygen.serve.config import SafetySettings
from raygen.serve.preprocess import build_safety
from raygen.serve.protocol import Delta

log = logging.getLogger(__name__)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Postprocessor(SpanSource):
    def __init__(self, llm, model_dir: str, safety: SafetySettings | None = None, model_name: str = "model",
                 observability: ObservabilitySettings | None = None):
        from transformers import AutoTokenizer

        init_process(observability, "raygen-postprocessor")
        self.model_name = model_name
        self.llm = llm  # DeploymentHandle of LLMServer
        self.tokenizer = AutoTokenizer.from_pretrained(local_model_dir(model_dir))
        self.safety = build_safety(safety) if safety else None
        self.blocked: Counter[str] = Counter()  # safety rule -> outputs it cut


    def safety_stats(self) -> dict[str, int]:
        return dict(self.blocked)

    def _logprobs(self, out: RequestOutput) -> list[dict]:
        dec = self.tokenizer.decode
        return [{"token": dec([lp.token_id]), "logprob": lp.logprob, "top": [[dec([t]), v] for t, v in lp.top]}
                for lp in out.logprobs]

    async def stream(self, prompt_ids: list[int], params: SamplingParams, trace: dict | None = None
                     ) -> AsyncIterator[Delta]:
        """trace: the caller's W3C trace context; this hop's span ("postprocess") joins it and is the
        parent of the model replica's. Not made current: an async generator resumes in its caller's context."""
        span = tracer().start_span("postprocess", context=extract(trace))
        guards = [self.safety.guard() for _ in range(params.n)] if self.safety and self.safety.active else None
        gen = self.llm.options(stream=True).generate.remote(prompt_ids, params, trace=inject(span))
        live, finished, chunks = params.n, False, 0
        try:
            async for chunk in gen:
                chunks += 1
                for out in chunk.outputs:
                    text, reason = out.text, out.finish_reason
                    if guards:
                        g = guards[out.index]
                        if g.violation:
                            continue  # this choice was already cut
                        text = g.feed(text) + (g.flush() if reason else "")
                        if g.violation:
                            self.blocked[g.violation.rule] += 1
                            record("raygen_safety_blocks_total", model=self.model_name, rule=g.violation.rule,
                                   side="output")
                            span.add_event("safety.cut", {"rule": g.violation.rule, "choice": out.index})
                            log.warning("safety: output of choice %d cut by %s", out.index, g.violation.rule)
                            reason = "content_filter"
                    lps = self._logprobs(out) if out.logprobs is not None else None
                    if text or reason or lps:
                        yield Delta(out.index, text, reason, lps, out.num_prompt_tokens, out.num_output_tokens,
                                    out.num_cached_tokens, chunk.version)
                    if reason:
                        live -= 1
                        if reason == "content_filter" and live == 0:
                            return  # every choice cut: stop generating (finally)
            finished = True
        finally:
            if not finished:
                gen.cancel()  # cut, client gone or failure: the engine frees the request's blocks
            span.set_attribute("raygen.chunks", chunks)
            span.set_attribute("raygen.completed", finished)
            span.end()
