"""Preprocessor deployment: tokenization and parameter configuration (defaults, limits, context window)."""

from __future__ import annotations

import json
from pathlib import Path

from ray import serve

from raygen.errors import RequestError
from raygen.engine.request import SamplingParams
from raygen.serve.protocol import CompletionRequest


def context_window(model_dir: str | Path) -> int:
    cfg = json.loads(Path(model_dir, "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if key in cfg:
            return int(cfg[key])
    raise ValueError(f"{model_dir}/config.json names no context length")


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Preprocessor:
    def __init__(self, model_dir: str, max_tokens_default: int, max_tokens_limit: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.context = context_window(model_dir)
        self.max_tokens_default = max_tokens_default
        self.max_tokens_limit = max_tokens_limit

    def prepare(self, req: CompletionRequest) -> tuple[list[int], SamplingParams]:
        if isinstance(req.prompt, str):
            ids = self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = list(req.prompt)
            bad = [t for t in ids if not 0 <= t < len(self.tokenizer)]
            if bad:
                raise RequestError(f"prompt token ids {bad[:5]} are outside the vocabulary "
                                   f"(0..{len(self.tokenizer) - 1})", param="prompt")
        if not ids:
            raise RequestError("prompt encodes to zero tokens", param="prompt")
        max_tokens = req.max_tokens or self.max_tokens_default
        if max_tokens > self.max_tokens_limit:
            raise RequestError(f"max_tokens {max_tokens} exceeds this server's limit of {self.max_tokens_limit}",
                               param="max_tokens")
        if len(ids) + max_tokens > self.context:
            raise RequestError(f"this model's context window is {self.context} tokens; the prompt has {len(ids)} "
                               f"and max_tokens is {max_tokens}: shorten the prompt or lower max_tokens",
                               param="prompt", code="context_length_exceeded")
        return ids, SamplingParams(
            max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p,
            repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, seed=req.seed, n=req.n, stop=req.stop or [],
            ignore_eos=req.ignore_eos, logprobs=req.logprobs)
