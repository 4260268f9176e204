"""Prompt logprobs in the engine (what /v1/completions with echo and logprobs returns, and what evaluation
harnesses score): each prompt token's logprob given the tokens before it, against transformers' own forward,
through chunked prefill, prefix caching, n > 1 and preemption."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from raygen.engine.engine import EngineConfig, LLMEngine
from raygen.engine.request import SamplingParams
from tests.unit.test_engine import CONFIGS, V


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("plp-models")
    out = {}
    for name in ("gpt2", "llama"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(CONFIGS[name]()).eval()
        model.save_pretrained(root / name)
        out[name] = (str(root / name), model)
    return out


def reference(model, prompt: list[int]) -> torch.Tensor:
    """log p(prompt[i] | prompt[:i]) for i >= 1, from one transformers forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].float()
    lp = logits.log_softmax(-1)
    return lp[:-1].gather(1, torch.tensor(prompt[1:]).unsqueeze(1)).squeeze(1)


def check(out, model, prompt, k):
    got = out.prompt_logprobs
    assert got is not None and len(got) == len(prompt) and got[0] is None
    ref = reference(model, prompt)
    vals = torch.tensor([e.logprob for e in got[1:]])
    assert [e.token_id for e in got[1:]] == prompt[1:]
    assert torch.allclose(vals, ref, atol=1e-4), (vals - ref).abs().max()
    for e in got[1:]:
        assert len(e.top) == k and all(a[1] >= b[1] for a, b in zip(e.top, e.top[1:], strict=False))
        assert e.top[0][1] >= e.logprob - 1e-5 if k else True


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_prompt_logprobs_match_transformers_through_chunked_prefill(models, name):
    path, model = models[name]
    rng = random.Random(4)
    prompts = [[rng.randrange(V) for _ in range(n)] for n in (1, 2, 17, 90, 200)]
    # 64-token steps: the 90- and 200-token prompts are prefilled in several chunks, beside the others
    engine = LLMEngine(EngineConfig(model=path, max_num_batched_tokens=64, kv_cache_mib=16))
    outs = engine.generate(prompts, SamplingParams(max_tokens=2, temperature=0, prompt_logprobs=3))
    for (o,), p in zip(outs, prompts, strict=True):
        check(o, model, p, 3)


def test_a_cached_prefix_is_still_scored_and_others_still_share_it(models):
    path, model = models["gpt2"]
    engine = LLMEngine(EngineConfig(model=path, kv_cache_mib=16, block_size=8))
    prompt = list(range(3, 60))
    engine.generate([prompt], SamplingParams(max_tokens=1))  # its blocks are now cached
    (o,), = engine.generate([prompt], SamplingParams(max_tokens=1, prompt_logprobs=0))
    check(o, model, prompt, 0)
    assert o.num_cached_tokens == 0  # ran the whole prompt: a cached block has no logits
    (o,), = engine.generate([prompt], SamplingParams(max_tokens=1))
    assert o.num_cached_tokens > 0 and o.prompt_logprobs is None  # asked for nothing, and reused the cache


def test_every_choice_carries_them_and_preemption_does_not_disturb_them(models):
    path, model = models["llama"]
    # A pool too small for all of it: sequences are preempted and prompts recomputed.
    engine = LLMEngine(EngineConfig(model=path, kv_cache_mib=0.25, block_size=8, max_num_batched_tokens=48))
    rng = random.Random(9)
    prompts = [[rng.randrange(V) for _ in range(rng.randint(20, 60))] for _ in range(6)]
    outs = engine.generate(prompts, SamplingParams(max_tokens=30, temperature=1.0, seed=1, n=3, prompt_logprobs=1,
                                                   ignore_eos=True))
    assert engine.stats().num_preemptions > 0
    for choices, p in zip(outs, prompts, strict=True):
        assert len(choices) == 3
        for o in choices:
            check(o, model, p, 1)


def test_out_of_range_prompt_logprobs_are_refused():
    from raygen.errors import InvalidPromptError

    with pytest.raises(InvalidPromptError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)


def test_a_long_prompt_on_a_4k_context_llama_shape(tmp_path):
    """A 2,000-token prompt on a Llama shape with a 4k context, prefilled in 512-token chunks: every one of its
    logprobs against transformers' single forward."""
    from transformers import LlamaConfig

    torch.manual_seed(1)
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, max_position_embeddings=4096, vocab_size=V, initializer_range=0.3,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(tmp_path)
    rng = random.Random(2)
    prompt = [rng.randrange(V) for _ in range(2000)]
    engine = LLMEngine(EngineConfig(model=str(tmp_path), max_num_batched_tokens=512, kv_cache_mib=32))
    (o,), = engine.generate([prompt], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2))
    check(o, model, prompt, 2)
