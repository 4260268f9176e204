"""The engine's correctness on one device, with torch and transformers alone (no pytest, no Ray):

    python benchmarks/engine_parity.py --device cuda          # what benchmarks/gpu_check.sh runs on a GPU
    python benchmarks/engine_parity.py --device cpu --quick   # the CPU smoke (CI)

Checks, each printed PASS or FAIL with its figures; the exit status is the number of failures (capped):
- decode attention: the gather + SDPA path (CUDA's, and the CPU fallback) and, on CPU, the C kernel,
  against a dense fp32 reference, in fp32 and bf16, with GQA and a sliding window;
- fp32 greedy parity: the engine against transformers `generate` on the same device, token for token, on
  tiny random models of each supported family, all prompts in one mixed batch with a small token budget
  (chunked prefills beside decodes), then again as prefix-cache hits; on CPU through both decode paths;
- bf16 greedy parity: the engine in bf16 against transformers in bf16. Exact agreement is not to be had
  (two correct bf16 implementations round differently and greedy paths then part), so vLLM's criterion:
  up to where the two first differ the tokens are equal, and there each side's token is among the
  other's top 5.

tests/unit/test_engine.py holds the same comparisons and more under pytest (RAYGEN_TEST_DEVICE=cuda runs it
on a GPU); this module is what still runs where pytest is not installed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

V = 500
TOP = 5
# Random init with a large initializer_range, so logits are spread well beyond fp32 noise (see test_engine.py).
COMMON = dict(vocab_size=V, initializer_range=0.3, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def configs():
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    return {
        "gpt2": lambda: GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, **COMMON),
        "llama": lambda: LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                     intermediate_size=128, max_position_embeddings=256, **COMMON),
        "qwen2": lambda: Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                     intermediate_size=128, max_position_embeddings=256, **COMMON),
        "mistral": lambda: MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                         sliding_window=24, **COMMON),
    }


def workload(n: int, seed: int, prompt=(3, 60), output=(1, 40)) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    prompts = [[rng.randrange(V) for _ in range(rng.randint(*prompt))] for _ in range(n)]
    return prompts, [rng.randint(*output) for _ in range(n)]


# -- the two sides ------------------------------------------------------------------------------------
def hf_greedy(model, prompt: list[int], max_tokens: int) -> tuple[list[int], list[list[int]]]:
    """transformers' greedy tokens and, per position, its top-TOP token ids."""
    dev = model.device
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt], device=dev), attention_mask=torch.ones(1, len(prompt), dtype=torch.long,
                                                                                          device=dev),
                             max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=0,
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt):].tolist(), [lg[0].float().topk(TOP).indices.tolist() for lg in out.logits]


def make_engine(path: str, device: str, dtype: str, torch_path: bool = False, **kw):
    from raygen.engine.engine import EngineConfig, LLMEngine

    eng = LLMEngine(EngineConfig(path, dtype=dtype, device=device, tokenizer=None,
                                 **{"block_size": 4, "kv_cache_mib": 16, "max_num_batched_tokens": 48, **kw}))
    if torch_path:  # the gather + SDPA decode path that CUDA runs, on CPU too
        eng.runner.pool.use_kernel = False
    return eng


def engine_greedy(eng, prompts: list[list[int]], max_tokens: list[int]) -> tuple[list[list[int]], list[list[list[int]]]]:
    from raygen.engine.request import SamplingParams

    res = eng.generate(prompts, [SamplingParams(max_tokens=m, temperature=0, ignore_eos=True, logprobs=TOP)
                                 for m in max_tokens])
    outs = [r[0] for r in res]
    return [o.token_ids for o in outs], [[[t for t, _ in lp.top] for lp in o.logprobs] for o in outs]


def close(a: list[int], top_a: list[list[int]], b: list[int], top_b: list[list[int]]) -> tuple[bool, int]:
    """vLLM's check_logprobs_close: (passes, tokens equal before the first difference)."""
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return x in top_b[i] and y in top_a[i], i
    return True, len(a)


# -- checks -------------------------------------------------------------------------------------------
def check_decode_attention(device: str) -> list[tuple[str, bool, str]]:
    from raygen.engine import attention, kernels

    dev, out = torch.device(device), []
    paths = [False] + ([True] if kernels.supports(dev, torch.float32) else [])
    for use_kernel in paths:
        for dtype, tol in ((torch.float32, 1e-5 if dev.type == "cpu" else 1e-4), (torch.bfloat16, 2e-2)):
            worst = 0.0
            for heads, kv_heads, window in ((4, 4, None), (8, 2, None), (4, 2, 7)):
                worst = max(worst, _decode_error(dev, dtype, heads, kv_heads, window, use_kernel, attention))
            name = f"decode attention, {'CPU kernel' if use_kernel else 'gather + SDPA'}, {str(dtype)[6:]}"
            out.append((name, worst < tol, f"max |error| {worst:.2e} (tolerance {tol:.0e})"))
    return out


def _decode_error(dev, dtype, heads, kv_heads, window, use_kernel, attention) -> float:
    torch.manual_seed(0)
    bs, d, lens = 4, 16, [1, 5, 12, 30]
    pool = attention.KVPool(1, 64, bs, kv_heads, d, dtype, dev, heads, use_kernel=use_kernel)
    assert pool.use_kernel == use_kernel
    perm = torch.randperm(64).tolist()
    tables, ks, vs, slots = [], [], [], []
    for n in lens:
        blocks = [perm.pop() for _ in range(-(-n // bs))]
        tables.append(blocks + [0] * (8 - len(blocks)))
        ks.append(torch.randn(n, kv_heads, d, dtype=dtype, device=dev))
        vs.append(torch.randn(n, kv_heads, d, dtype=dtype, device=dev))
        slots += [blocks[p // bs] * bs + p % bs for p in range(n)]
    idx = torch.tensor(slots, device=dev)
    pool.kv[0, 0].view(-1, kv_heads, d)[idx] = torch.cat(ks)
    pool.kv[0, 1].view(-1, kv_heads, d)[idx] = torch.cat(vs)
    q = torch.randn(len(lens), heads, d, dtype=dtype, device=dev)
    last = torch.tensor([t[(n - 1) // bs] * bs + (n - 1) % bs for t, n in zip(tables, lens, strict=True)], device=dev)
    meta = attention.StepMetadata(last, [attention.DecodeGroup(0, torch.tensor(tables, device=dev),
                                                               torch.tensor(lens, device=dev))], [])
    got = pool.attention(0, q, torch.stack([k[-1] for k in ks]), torch.stack([v[-1] for v in vs]), meta, d ** -0.5,
                         window).view(len(lens), heads, d)
    worst = 0.0
    for i, n in enumerate(lens):
        k = ks[i].float().repeat_interleave(heads // kv_heads, dim=1)
        v = vs[i].float().repeat_interleave(heads // kv_heads, dim=1)
        keep = torch.arange(n, device=dev) > (n - 1 - window) if window else torch.ones(n, dtype=torch.bool, device=dev)
        p = (torch.einsum("hd,nhd->hn", q[i].float(), k) * d ** -0.5).masked_fill(~keep, float("-inf")).softmax(-1)
        worst = max(worst, (got[i].float() - torch.einsum("hn,nhd->hd", p, v)).abs().max().item())
    return worst


def check_greedy(device: str, root: Path, families: list[str], dtype: str, n: int,
                 paths: list[bool]) -> list[tuple[str, bool, str]]:
    out = []
    for family in families:
        try:
            out += _check_family(device, root, family, dtype, n, paths)
        except Exception as exc:  # one family's crash is its FAIL line, not the end of the run
            out.append((f"greedy {dtype} {family}", False, f"raised {exc!r}"[:500]))
    return out


def _check_family(device: str, root: Path, family: str, dtype: str, n: int,
                  paths: list[bool]) -> list[tuple[str, bool, str]]:
    """One family in one dtype: every prompt against transformers, through each decode path asked for."""
    from transformers import AutoModelForCausalLM

    out = []
    path = root / family
    if not path.exists():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(configs()[family]()).save_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    prompts, max_tokens = workload(n, seed=1)
    # Then prompts behind a shared 37-token prefix: the first fills the cache, the others read it.
    rng = random.Random(3)
    system = [rng.randrange(V) for _ in range(37)]
    shared = [system + p[:8] for p in prompts[: max(2, n // 2)]]
    ref = [hf_greedy(model, p, m) for p, m in zip(prompts + shared, max_tokens + [12] * len(shared), strict=True)]
    for torch_path in paths:
        t = time.perf_counter()
        eng = make_engine(str(path), device, dtype, torch_path)
        kind = "CPU kernel" if eng.runner.pool.use_kernel else "gather + SDPA"
        got = engine_greedy(eng, prompts, max_tokens)
        first = engine_greedy(eng, shared[:1], [12])  # fills the cache with the shared prefix
        rest = engine_greedy(eng, shared[1:], [12] * (len(shared) - 1))
        got_shared = (first[0] + rest[0], first[1] + rest[1])
        hits = eng.stats().prefix_hit_rate
        pairs = list(zip(zip(*got, strict=True), ref[:n], strict=True)) + \
            list(zip(zip(*got_shared, strict=True), ref[n:], strict=True))
        tokens = sum(len(r[0]) for _, r in pairs)
        if dtype == "float32":
            equal = sum(g[0] == r[0] for g, r in pairs)
            ok, detail = equal == len(pairs), f"{equal}/{len(pairs)} sequences equal token for token"
        else:
            verdicts = [close(g[0], g[1], r[0], r[1]) for g, r in pairs]
            same = sum(i for _, i in verdicts)
            ok = all(v for v, _ in verdicts)
            detail = (f"{sum(v for v, _ in verdicts)}/{len(pairs)} close (top-{TOP}), {same}/{tokens} tokens "
                      "equal before the first difference")
        ok = ok and eng.runner.device.type == torch.device(device).type and hits > 0
        out.append((f"greedy {dtype} {family}, {kind}", ok,
                    f"{detail}; {tokens} tokens, prefix hit rate {hits:.2f}, {time.perf_counter() - t:.1f} s"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--quick", action="store_true", help="gpt2 and llama only, fewer prompts (on CPU: the gather "
                    "+ SDPA path only, bf16 on gpt2 only)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    families = ["gpt2", "llama"] if args.quick else list(configs())
    cpu = torch.device(args.device).type == "cpu"
    from raygen.engine import kernels

    # On CPU both decode paths (the C kernel's and CUDA's gather + SDPA; --quick: CUDA's only); on a GPU
    # gather + SDPA is the one path.
    kernel = cpu and kernels.supports(torch.device("cpu"), torch.float32)
    paths = ([True] if args.quick else [False, True]) if kernel else [False]
    results: list[tuple[str, bool, str]] = []

    def record(new: list[tuple[str, bool, str]]) -> None:  # printed as they come: a timeout keeps what ran
        for name, ok, detail in new:
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)
        results.extend(new)

    try:
        record(check_decode_attention(args.device))
    except Exception as exc:  # a crash is a FAIL line too
        record([("decode attention", False, f"raised {exc!r}"[:500])])
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in args.dtypes.split(","):
            fp32 = dtype == "float32"
            n = (4 if args.quick else 16) if fp32 else (2 if args.quick else 12)
            # bf16 on CPU, one path, and with --quick one family: CPUs without AVX512-BF16 or AMX run bf16
            # matmuls on a slow fallback.
            fams = families[:1] if cpu and args.quick and not fp32 else families
            record(check_greedy(args.device, Path(tmp), fams, dtype, n, paths if fp32 else paths[-1:]))
    failed = sum(not ok for _, ok, _ in results)
    print(f"parity: {len(results) - failed} passed, {failed} failed on {args.device} in "
          f"{time.perf_counter() - t0:.0f} s")
    return min(failed, 100)


if __name__ == "__main__":
    sys.exit(main())
