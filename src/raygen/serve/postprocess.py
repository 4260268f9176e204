"""Postprocessor deployment: drives the model's output stream and formats it as OpenAI deltas
(text per choice, logprobs with token strings, usage). Detokenization and stop strings happen in the
engine, which must cut generation the moment a stop string appears."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from raygen.engine.request import RequestOutput, SamplingParams
from raygen.serve.protocol import Delta


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class Postprocessor:
    def __init__(self, llm, model_dir: str):
        from transformers import AutoTokenizer

        self.llm = llm  # DeploymentHandle of LLMServer
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def _logprobs(self, out: RequestOutput, offset: int) -> tuple[dict, int]:
        """OpenAI completions logprobs for out's tokens, and the text offset after them."""
        tokens = [self.tokenizer.decode([lp.token_id]) for lp in out.logprobs]
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in out.logprobs],
                "top_logprobs": [{self.tokenizer.decode([t]): v for t, v in lp.top} for lp in out.logprobs],
                "text_offset": offsets}, offset

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        offsets = [0] * params.n  # text_offset of each choice's next token
        async for chunk in self.llm.options(stream=True).generate.remote(prompt_ids, params):
            for out in chunk:
                lps = None
                if out.logprobs is not None:
                    lps, offsets[out.index] = self._logprobs(out, offsets[out.index])
                if out.text or out.finish_reason or out.logprobs:
                    yield Delta(out.index, out.text, out.finish_reason, lps, out.num_prompt_tokens,
                                out.num_output_tokens, out.num_cached_tokens)
