"""Postprocessor deployment: drives the model's token stream, detokenizes incrementally, applies stop strings."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from raygen.engine.detok import IncrementalDetokenizer
from raygen.serve.protocol import Delta, SamplingParams


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class Postprocessor:
    def __init__(self, llm, model_dir: str):
        from transformers import AutoTokenizer

        self.llm = llm  # DeploymentHandle of LLMServer
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

    async def stream(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Delta]:
        detok = IncrementalDetokenizer(self.tokenizer, params.stop)
        gen = self.llm.options(stream=True).generate.remote(prompt_ids, params)
        n_out = 0
        async for chunk in gen:
            n_out += len(chunk["token_ids"])
            text = detok.add(chunk["token_ids"])
            if detok.stopped:
                gen.cancel()  # frees the model replica's work for this request
                yield Delta(text, "stop", len(prompt_ids), n_out)
                return
            if chunk["finish_reason"]:
                yield Delta(text + detok.flush(), chunk["finish_reason"], len(prompt_ids), n_out)
                return
            if text:
                yield Delta(text)
