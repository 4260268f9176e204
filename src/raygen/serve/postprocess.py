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
from raygen.serve.protocol import Delta, Echo

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

    def _prompt_entries(self, prompt_ids: list[int], out: RequestOutput, k: int | None) -> list[dict]:
        """The prompt's tokens as logprob entries (the first has no logprob: nothing precedes it)."""
        dec = self.tokenizer.decode
        lps = out.prompt_logprobs or [None] * len(prompt_ids)
        return [{"token": dec([t]), "logprob": lp.logprob if lp else None,
                 "top": [[dec([i]), v] for i, v in lp.top[:k]] if lp else None}
                for t, lp in zip(prompt_ids, lps, strict=True)]

    def _vllm_prompt_logprobs(self, out: RequestOutput, k: int) -> list:
        """vLLM's choices[].prompt_logprobs: per prompt token {token id: {logprob, rank, decoded_token}} for the
        token itself and the top k (rank 1 = the most likely)."""
        dec = self.tokenizer.decode
        res: list = []
        for lp in out.prompt_logprobs or []:
            if lp is None:
                res.append(None)
                continue
            entry = {str(i): {"logprob": v, "rank": r + 1, "decoded_token": dec([i])}
                     for r, (i, v) in enumerate(lp.top[:k])}
            if str(lp.token_id) not in entry:
                rank = next((r + 1 for r, (i, _) in enumerate(lp.top) if i == lp.token_id), None)
                entry[str(lp.token_id)] = {"logprob": lp.logprob, "rank": rank, "decoded_token": dec([lp.token_id])}
            res.append(entry)
        return res

    def _echo(self, prompt_ids: list[int], out: RequestOutput, echo: Echo, params: SamplingParams, text: str,
              lps: list[dict] | None, first: bool) -> tuple[str, list[dict] | None, list | None]:
        """Apply echo to one delta of a choice: drop what was generated (max_tokens 0), put the prompt in
        front of the choice's first delta, and vLLM's prompt_logprobs beside it."""
        if not echo.keep_output:
            text, lps = "", ([] if lps is not None else None)
        if not first:
            return text, lps, None
        vllm = self._vllm_prompt_logprobs(out, params.prompt_logprobs) if echo.prompt_logprobs else None
        if echo.prompt:
            text = self.tokenizer.decode(prompt_ids) + text
            if lps is not None:
                lps = self._prompt_entries(prompt_ids, out, params.logprobs) + lps
        return text, lps, vllm

    async def stream(self, prompt_ids: list[int], params: SamplingParams, trace: dict | None = None,
                     echo: Echo | None = None) -> AsyncIterator[Delta]:
        """trace: the caller's W3C trace context; this hop's span ("postprocess") joins it and is the
        parent of the model replica's. Not made current: an async generator resumes in its caller's context.
        echo: a completions request's echo, prompt_logprobs and max_tokens 0 (protocol.Echo)."""
        span = tracer().start_span("postprocess", context=extract(trace))
        guards = [self.safety.guard() for _ in range(params.n)] if self.safety and self.safety.active else None
        gen = self.llm.options(stream=True).generate.remote(prompt_ids, params, trace=inject(span))
        live, finished, chunks = params.n, False, 0
        echo = echo if echo is not None and echo != Echo() else None
        started: set[int] = set()  # choices whose first delta went out
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
                    vllm_plp, completion_tokens = None, out.num_output_tokens
                    if echo is not None:
                        text, lps, vllm_plp = self._echo(prompt_ids, out, echo, params, text, lps,
                                                         out.index not in started)
                        started.add(out.index)
                        if not echo.keep_output:
                            completion_tokens = 0
                            reason = reason and ("content_filter" if reason == "content_filter" else "length")
                    if text or reason or lps or vllm_plp:
                        yield Delta(out.index, text, reason, lps, out.num_prompt_tokens, completion_tokens,
                                    out.num_cached_tokens, chunk.version, vllm_plp)
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
