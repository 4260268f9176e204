"""The engine on tiny random models against transformers `generate` (fp32, greedy): token for token.

Random init uses a large initializer_range so that logits are spread out: with the default 0.02 the top
two logits of a random model often differ by less than fp32 noise, and any two correct implementations
could then disagree.

The device is RAYGEN_TEST_DEVICE (default cpu): `RAYGEN_TEST_DEVICE=cuda pytest tests/unit/test_engine.py`
runs the same comparisons on a GPU, both sides there (benchmarks/gpu_check.sh does).
"""

import asyncio
import os
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from raygen.engine.engine import AsyncLLMEngine, EngineConfig, LLMEngine
from raygen.engine.models import UnsupportedModelError
from raygen.engine.request import SamplingParams
from raygen.engine.scheduler import PromptTooLongError

DEVICE = os.environ.get("RAYGEN_TEST_DEVICE", "cpu")
V = 500
COMMON = dict(vocab_size=V, initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=None)
CONFIGS = {
    "gpt2": lambda: GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, **COMMON),
    "llama": lambda: LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=128, max_position_embeddings=256, **COMMON),
    "qwen2": lambda: Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                 intermediate_size=128, max_position_embeddings=256, **COMMON),
    # A window shorter than the sequences, so the sliding-window masks are exercised.
    "mistral": lambda: MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=128, max_position_embeddings=256, sliding_window=24, **COMMON),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, make in CONFIGS.items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(make()).eval()
        model.save_pretrained(root / name)
        out[name] = (str(root / name), model.to(DEVICE))
    return out


def workload(n, seed=1, prompt=(3, 60), output=(1, 40)):
    rng = random.Random(seed)
    prompts = [[rng.randrange(V) for _ in range(rng.randint(*prompt))] for _ in range(n)]
    return prompts, [rng.randint(*output) for _ in range(n)]


def hf_greedy(model, prompt, max_tokens):
    ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def engine(path, **kw):
    # On a GPU an unset KV budget is 90% of free memory: a small pool keeps each test's engine cheap.
    default_kv = {} if DEVICE == "cpu" else {"kv_cache_mib": 64}
    eng = LLMEngine(EngineConfig(path, dtype=kw.pop("dtype", "float32"), device=DEVICE,
                                 **{"block_size": 4, **default_kv, **kw}))
    assert eng.runner.device.type == torch.device(DEVICE).type
    return eng


def greedy(eng, prompts, max_tokens):
    res = eng.generate(prompts, [SamplingParams(max_tokens=m, temperature=0) for m in max_tokens])
    return [r[0].token_ids for r in res]


def assert_all_blocks_free(eng):
    s = eng.stats()
    assert s.num_free_blocks == s.num_blocks and s.num_running == s.num_waiting == 0
    assert all(b.ref_count == 0 for b in eng.bm.blocks)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_alone_and_in_a_mixed_batch_of_32_match_transformers(models, family):
    path, model = models[family]
    prompts, max_tokens = workload(32)
    ref = [hf_greedy(model, p, m) for p, m in zip(prompts, max_tokens, strict=True)]
    eng = engine(path)
    assert [greedy(eng, [p], [m])[0] for p, m in zip(prompts[:4], max_tokens[:4], strict=True)] == ref[:4]
    # A small token budget forces chunked prefill mixed with decodes in the same steps.
    eng = engine(path, max_num_batched_tokens=48)
    assert greedy(eng, prompts, max_tokens) == ref
    assert_all_blocks_free(eng)


def test_greedy_matches_on_the_torch_attention_path_too(models, monkeypatch):
    """CUDA (and CPUs without a C compiler) decode through gather + SDPA instead of the CPU kernel."""
    from raygen.engine import kernels

    monkeypatch.setattr(kernels, "supports", lambda device, dtype: False)
    path, model = models["llama"]
    prompts, max_tokens = workload(12, seed=11)
    eng = engine(path, max_num_batched_tokens=64)
    eng.step_log = []
    assert not eng.runner.pool.use_kernel
    assert greedy(eng, prompts, max_tokens) == [hf_greedy(model, p, m) for p, m in zip(prompts, max_tokens,
                                                                                         strict=True)]
    assert max(len(r.tokens) for r in eng.step_log) >= 8  # many sequences decoding in the same steps


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bf16_greedy_is_close_to_transformers_in_bf16(models, family):
    """bf16 against transformers in bf16 on the same device. Two correct bf16 implementations round
    differently and their greedy paths may part, so vLLM's criterion: the tokens agree up to the first
    difference, and there each side's token is among the other's top 5."""
    path, _ = models[family]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(DEVICE).eval()
    # Fewer on CPU: bf16 matmuls crawl on CPUs without AVX512-BF16 or AMX (this tier's 2-core VM among them).
    prompts, max_tokens = workload(3 if DEVICE == "cpu" else 8, seed=12, output=(8, 24))
    eng = engine(path, dtype="bfloat16", max_num_batched_tokens=48)
    outs = [r[0] for r in eng.generate(prompts, [SamplingParams(max_tokens=m, temperature=0, logprobs=5)
                                                 for m in max_tokens])]
    for p, m, o in zip(prompts, max_tokens, outs, strict=True):
        ids = torch.tensor([p], device=DEVICE)
        with torch.inference_mode():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=m, do_sample=False,
                                 pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        ref_ids = ref.sequences[0, len(p):].tolist()
        i = next((i for i, (a, b) in enumerate(zip(o.token_ids, ref_ids, strict=True)) if a != b), None)
        if i is not None:  # where they part, each side's token is among the other's top 5
            assert ref_ids[i] in [t for t, _ in o.logprobs[i].top], (p, i)
            assert o.token_ids[i] in ref.logits[i][0].float().topk(5).indices.tolist(), (p, i)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_matches_under_forced_preemption(models, family):
    path, model = models[family]
    prompts, max_tokens = workload(24, seed=2, prompt=(10, 40), output=(20, 40))
    ref = [hf_greedy(model, p, m) for p, m in zip(prompts, max_tokens, strict=True)]
    per_block = 2 * 2 * 4 * (64 if family == "gpt2" else 32) * 4  # layers × K,V × tokens × KV width × fp32
    eng = engine(path, kv_cache_mib=24 * per_block / 2**20)  # 24 blocks of 4: about one long sequence and a half
    assert eng.runner.num_blocks == 24
    assert greedy(eng, prompts, max_tokens) == ref
    assert eng.stats().num_preemptions > 0
    assert_all_blocks_free(eng)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_matches_with_prefix_cache_hits(models, family):
    path, model = models[family]
    rng = random.Random(3)
    system = [rng.randrange(V) for _ in range(37)]
    prompts = [system + [rng.randrange(V) for _ in range(rng.randint(1, 9))] for _ in range(8)]
    ref = [hf_greedy(model, p, 12) for p in prompts]
    eng = engine(path)
    assert greedy(eng, prompts[:1], [12]) == ref[:1]  # fills the cache with the system prompt
    assert greedy(eng, prompts[1:], [12] * 7) == ref[1:]
    stats = eng.stats()
    assert stats.prefix_hit_rate > 0.6 and stats.num_cached_blocks > 0
    # The hit requests computed only their suffix: 36 of 37 system tokens came from the cache each time.
    assert stats.num_prompt_tokens_computed < sum(map(len, prompts)) - 7 * 36 + 7


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_qwen2_and_mistral_configs_match_transformers(models, family):
    path, model = models[family]
    prompts, max_tokens = workload(8, seed=4, prompt=(20, 50), output=(10, 30))
    ref = [hf_greedy(model, p, m) for p, m in zip(prompts, max_tokens, strict=True)]
    assert greedy(engine(path, max_num_batched_tokens=40), prompts, max_tokens) == ref


def test_bf16_runs_and_mostly_agrees_with_fp32(models):
    path, _ = models["llama"]
    prompts, max_tokens = workload(8, seed=5, output=(8, 8))
    eng = engine(path, dtype="bfloat16")
    assert eng.runner.pool.kv.dtype == torch.bfloat16
    first = [t[0] for t in greedy(eng, prompts, max_tokens)]
    assert sum(a == b[0] for a, b in zip(first, greedy(engine(path), prompts, max_tokens), strict=True)) >= 6


def test_seeded_sampling_is_the_same_alone_and_in_a_batch(models):
    path, _ = models["llama"]
    prompts, _ = workload(12, seed=6)
    params = SamplingParams(max_tokens=20, temperature=0.9, top_k=50, top_p=0.95, min_p=0.02, seed=1234,
                            repetition_penalty=1.1, presence_penalty=0.2, frequency_penalty=0.1)
    eng = engine(path)
    alone = eng.generate(prompts[:1], params)[0][0].token_ids
    others = [SamplingParams(max_tokens=15, temperature=1.0) for _ in prompts[1:]]
    batch = eng.generate(prompts, [params, *others])[0][0].token_ids
    assert alone == batch
    assert eng.generate(prompts[:1], SamplingParams(max_tokens=20, temperature=0.9, seed=99))[0][0].token_ids != alone


def test_n_sequences_share_the_prompt_blocks(models):
    path, _ = models["gpt2"]
    prompt = workload(1, seed=7, prompt=(30, 30))[0][0]
    eng = engine(path)
    outs = eng.generate([prompt], SamplingParams(max_tokens=10, temperature=1.0, n=4, seed=5))[0]
    assert [o.index for o in outs] == [0, 1, 2, 3] and all(len(o.token_ids) == 10 for o in outs)
    assert len({tuple(o.token_ids) for o in outs}) > 1  # different samples from one prefill
    assert eng.stats().num_prompt_tokens_computed == 30  # the prompt ran once, not four times
    assert_all_blocks_free(eng)
    # Sequence i draws from seed + i, so a request's sequences are reproducible one by one.
    again = eng.generate([prompt], SamplingParams(max_tokens=10, temperature=1.0, n=4, seed=5))[0]
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]


def test_logprobs_match_the_models_distribution(models):
    path, model = models["llama"]
    prompt = workload(1, seed=8)[0][0]
    out = engine(path).generate([prompt], SamplingParams(max_tokens=1, temperature=0, logprobs=3))[0][0]
    with torch.inference_mode():
        ref = model(torch.tensor([prompt], device=DEVICE)).logits[0, -1].float().log_softmax(-1)
    lp = out.logprobs[0]
    top = ref.topk(3)
    assert lp.token_id == out.token_ids[0] == top.indices[0].item()
    assert [t for t, _ in lp.top] == top.indices.tolist()
    assert lp.logprob == pytest.approx(top.values[0].item(), abs=1e-4)


def test_bad_requests_fail_at_once_with_clear_errors(models, tmp_path):
    path, _ = models["gpt2"]
    eng = engine(path, kv_cache_mib=8 * 2048 / 2**20)  # 8 blocks of 4 tokens
    with pytest.raises(PromptTooLongError, match="larger KV budget"):
        eng.add_request("long", list(range(30)), SamplingParams(max_tokens=5))
    with pytest.raises(ValueError, match=r"must be in \[0, 500\)"):
        eng.add_request("oov", [1, 2, 999], SamplingParams())
    with pytest.raises(ValueError, match="context of 256"):
        engine(path).add_request("ctx", [1] * 250, SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="need a tokenizer"):
        eng.add_request("stop", [1, 2], SamplingParams(stop=["x"]))
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    assert_all_blocks_free(eng)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(
        __import__("transformers").GPTNeoXConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                                 intermediate_size=64, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match="gpt_neox"):
        engine(str(tmp_path))


def test_thousand_random_requests_with_aborts_and_preemptions_return_every_block(models):
    path, _ = models["llama"]
    rng = random.Random(9)
    eng = engine(path, kv_cache_mib=24 * 2048 / 2**20, max_num_seqs=32, max_num_batched_tokens=96,
                 max_num_waiting=None)  # a deep queue on purpose: bookkeeping under pressure, not the bound
    live, added, aborted, finished = set(), 0, 0, 0
    system = [rng.randrange(V) for _ in range(12)]  # some prefix sharing, so cached blocks are in play
    while added < 1000 or eng.has_unfinished():
        for _ in range(rng.randint(0, 12) if added < 1000 else 0):
            prompt = (system if rng.random() < 0.5 else []) + [rng.randrange(V) for _ in range(rng.randint(1, 30))]
            n = 2 if rng.random() < 0.1 else 1
            eng.add_request(f"r{added}", prompt, SamplingParams(max_tokens=rng.randint(1, 40), n=n,
                                                                temperature=rng.choice([0, 1.0])))
            live.add(f"r{added}")
            added += 1
        if live and rng.random() < 0.05:
            victim = rng.choice(sorted(live))
            aborted += bool(eng.abort(victim))
            live.discard(victim)
        for o in eng.step():
            if o.finished and o.req_id not in eng._requests:
                live.discard(o.req_id)
                finished += 1
    assert eng.stats().num_preemptions > 0 and aborted > 30 and finished > 500
    assert_all_blocks_free(eng)
    assert not eng._owner


def test_async_stream_abort_and_stats(models):
    path, _ = models["gpt2"]

    async def main():
        eng = AsyncLLMEngine(engine(path))
        try:
            prompts, _ = workload(3, seed=10)
            outs = [o async for o in eng.add_request(prompts[0], SamplingParams(max_tokens=7, temperature=0))]
            assert sum(len(o.token_ids) for o in outs) == 7 and outs[-1].finish_reason == "length"
            assert outs[-1].num_output_tokens == 7 and outs[-1].num_prompt_tokens == len(prompts[0])
            # Leaving the iterator early aborts the request and frees its blocks at once.
            stream = eng.add_request(prompts[1], SamplingParams(max_tokens=200, temperature=0))
            async for _ in stream:
                break
            await stream.aclose()
            stats = eng.stats()
            assert stats.num_free_blocks == stats.num_blocks and not eng.engine.has_unfinished()
            # Concurrent streams interleave and all finish.
            async def collect(p):
                return [o async for o in eng.add_request(p, SamplingParams(max_tokens=5, temperature=0))]
            results = await asyncio.gather(*(collect(p) for p in prompts))
            assert all(r[-1].finished for r in results)
        finally:
            eng.shutdown()

    asyncio.run(main())


def test_busy_streams_are_coalesced_into_fewer_chunks_with_the_same_tokens(models):
    """Past stream_coalesce_above live streams, a stream's chunks come at most every stream_interval_ms and
    carry the steps made meanwhile; the first token is not held, and no token is lost or reordered."""
    import time

    path, _ = models["gpt2"]
    prompts, _ = workload(3, seed=12)

    async def run(**kw):
        eng = AsyncLLMEngine(engine(path, **kw))
        try:
            async def one(p):
                t0, chunks = time.perf_counter(), []
                async for chunk in eng.add_request(p, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True),
                                                   batched=True):
                    chunks.append((time.perf_counter() - t0, [t for o in chunk for t in o.token_ids]))
                return chunks
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            eng.shutdown()

    plain = asyncio.run(run(stream_interval_ms=0))
    busy = asyncio.run(run(stream_interval_ms=150, stream_coalesce_above=0))
    quiet = asyncio.run(run(stream_interval_ms=150, stream_coalesce_above=3))  # 3 streams: not busy
    for a, b, c in zip(plain, busy, quiet, strict=True):
        tokens = [t for _, ts in a for t in ts]
        assert len(tokens) == 40
        assert [t for _, ts in b for t in ts] == tokens == [t for _, ts in c for t in ts]
        assert len(b[0][1]) == 1  # the first token alone, at once
        mid = b[1:-1]  # a request's last chunk (its finish) is not held either
        gaps = [y - x for (x, _), (y, _) in zip(mid, mid[1:], strict=False)]
        assert all(g >= 0.14 for g in gaps), gaps  # the chunks between at least the interval apart
        assert len(b) < len(a) and len(b) <= 2 + (b[-1][0] - b[0][0]) / 0.14
        assert max(len(ts) for _, ts in c) <= 8  # not coalesced: at most MAX_CHUNK_OUTPUTS steps a chunk


def test_stop_strings_end_the_output_exactly_before_the_stop_text(tmp_path):
    try:
        from raygen.data.features import train_tokenizer
        from raygen.data.sources import builtin_documents
    except ImportError as exc:  # the GPU image: no Ray, so no raygen.data
        pytest.skip(f"raygen.data does not import here ({exc})")

    tok = train_tokenizer(iter(d["text"] for d in builtin_documents()[:40]), 600, str(tmp_path))
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, vocab_size=len(tok), initializer_range=0.3,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    eng = engine(str(tmp_path))
    prompt = tok("The import statement")["input_ids"]
    full = eng.generate([prompt], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))[0][0]
    assert full.text == tok.decode(full.token_ids, skip_special_tokens=True) and len(full.text) > 20
    stop = full.text[12:15]
    cut = eng.generate([prompt], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True,
                                                stop=["never appears \x00", stop]))[0][0]
    assert cut.text == full.text[:full.text.find(stop)] and cut.finish_reason == "stop"
    assert len(cut.token_ids) < len(full.token_ids)
    assert_all_blocks_free(eng)


def test_the_engine_imports_and_runs_without_ray(models):
    """The GPU image has torch and transformers but no Ray: nothing under raygen.engine may import it."""
    import subprocess
    import sys

    code = ("import sys, builtins\n"
            "real = builtins.__import__\n"
            "def guard(name, *a, **k):\n"
            "    if name == 'ray' or name.startswith('ray.'): raise ImportError('ray is not installed here')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = guard\n"
            "from raygen.engine.engine import EngineConfig, LLMEngine\n"
            "from raygen.engine.request import SamplingParams\n"
            "e = LLMEngine(EngineConfig(sys.argv[1], dtype='float32', kv_cache_mib=1))\n"
            "print(len(e.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0))[0][0].token_ids))\n")
    out = subprocess.run([sys.executable, "-c", code, models["gpt2"][0]], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "4"


def test_outputs_carry_the_requests_engine_timestamps(models):
    engine = LLMEngine(EngineConfig(str(models["gpt2"][0]), dtype="float32", kv_cache_mib=4, device=DEVICE))
    engine.add_request("r", [1, 2, 3, 4], SamplingParams(max_tokens=5, temperature=0, n=2, ignore_eos=True))
    outs = []
    while engine.has_unfinished():
        outs += engine.step()
    assert engine.drain_step_sizes() and not engine.drain_step_sizes()  # drained once
    last = [o for o in outs if o.finished]
    assert len(last) == 2 and all(o.timing is None for o in outs if not o.finished)
    for o in last:
        t = o.timing
        assert t.arrival <= t.scheduled <= t.first_token <= t.finished


def run_bounded(eng, max_steps=2000):
    """Step until every request finishes; a step count past max_steps means the engine stopped making
    progress (the test fails instead of spinning)."""
    got: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not eng.has_unfinished():
            return got
        for o in eng.step():
            got.setdefault(o.req_id, []).extend(o.token_ids)
    pytest.fail(f"no progress after {max_steps} steps: {eng.stats()}")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_lone_prompt_longer_than_the_step_budget_finishes_and_matches(models, family):
    """Chunked prefill with nothing else running: steps that only prefill (nothing samples) must still
    book their progress, or the prompt is prefilled chunk after chunk forever."""
    path, model = models[family]
    prompt = workload(1, seed=21, prompt=(150, 150))[0][0]
    eng = engine(path, max_num_batched_tokens=48)
    eng.add_request("long", prompt, SamplingParams(max_tokens=8, temperature=0))
    got = run_bounded(eng, max_steps=50)
    assert got["long"] == hf_greedy(model, prompt, 8)
    assert eng.stats().num_steps == 4 + 7  # ceil(150 / 48) prefill chunks (the last one samples), 7 decodes
    assert_all_blocks_free(eng)


def test_two_long_prompts_both_mid_prefill_finish_and_match(models):
    """Two prompts longer than the budget, admitted together, nothing decoding: steps where one prompt's
    chunk ends and the other's begins, and steps where nobody samples at all."""
    path, model = models["llama"]
    prompts = workload(2, seed=22, prompt=(130, 170))[0]
    eng = engine(path, max_num_batched_tokens=40)
    eng.step_log = []
    for i, p in enumerate(prompts):
        eng.add_request(f"p{i}", p, SamplingParams(max_tokens=6, temperature=0))
    got = run_bounded(eng, max_steps=100)
    assert [got["p0"], got["p1"]] == [hf_greedy(model, p, 6) for p in prompts]
    assert any(r.num_sampled == 0 for r in eng.step_log) and any(len(r.tokens) == 2 for r in eng.step_log)
    assert_all_blocks_free(eng)


def test_a_long_prompt_through_the_async_engine_streams_tokens(models):
    path, model = models["gpt2"]
    prompt = workload(1, seed=23, prompt=(200, 200))[0][0]

    async def main():
        eng = AsyncLLMEngine(engine(path, max_num_batched_tokens=32))
        try:
            outs = await asyncio.wait_for(_collect(eng.add_request(prompt, SamplingParams(max_tokens=5,
                                                                                          temperature=0))), 60)
            assert [t for o in outs for t in o.token_ids] == hf_greedy(model, prompt, 5)
        finally:
            eng.shutdown()

    asyncio.run(main())


async def _collect(stream):
    return [o async for o in stream]


def test_the_waiting_queue_is_bounded_and_frees_up_as_requests_are_admitted(models):
    from raygen.engine import EngineOverloadedError

    path, _ = models["gpt2"]
    eng = engine(path, max_num_seqs=2, max_num_waiting=3)
    params = SamplingParams(max_tokens=3, temperature=0)
    for i in range(3):  # nothing is admitted before a step: all three wait
        eng.add_request(f"w{i}", [1, 2, 3], params)
    with pytest.raises(EngineOverloadedError, match="max_num_waiting=3"):
        eng.add_request("w3", [1, 2, 3], params)
    assert "w3" not in eng._requests and eng.stats().num_waiting == 3
    eng.step()  # two admitted, one waits: room again
    eng.add_request("w3", [1, 2, 3], params)
    run_bounded(eng, max_steps=50)
    assert_all_blocks_free(eng)
