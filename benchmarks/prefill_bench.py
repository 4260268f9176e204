"""One long prompt's prefill: raygen's engine at several chunk sizes against one transformers forward.

    python benchmarks/prefill_bench.py                    # 2000 tokens on peer_bench's 4k-context Llama shape
    python benchmarks/prefill_bench.py --tokens 3000 --rounds 5

Time to first token for a long prompt alone is prefill: compute-bound GEMMs and causal attention over the
prompt. raygen prefills in chunks of `max_num_batched_tokens` (each chunk attends to the cached blocks of
the ones before it); transformers runs the prompt in one forward. The same prompt, prefix caching off, the
best of `--rounds` for each, in one process on the same threads.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_bench import LLAMA4K  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--chunks", default="512,1024,2048,4096", help="max_num_batched_tokens values")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, LlamaConfig

    from raygen.engine.engine import EngineConfig, LLMEngine
    from raygen.engine.request import SamplingParams

    torch.manual_seed(0)
    model = Path(tempfile.mkdtemp(prefix="raygen-prefill-")) / "llama4k"
    AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA4K, tie_word_embeddings=False, bos_token_id=None,
                                                 eos_token_id=None, pad_token_id=None)).save_pretrained(model)
    prompt = [2 + i % (LLAMA4K["vocab_size"] - 2) for i in range(args.tokens)]

    def best(fn) -> float:
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    for chunk in (int(c) for c in args.chunks.split(",")):
        eng = LLMEngine(EngineConfig(str(model), dtype="float32", device="cpu", kv_cache_mib=512, max_num_seqs=8,
                                     max_num_batched_tokens=chunk, max_num_waiting=None, tokenizer=None,
                                     enable_prefix_caching=False))
        eng.generate([[5] * 64], SamplingParams(max_tokens=2, temperature=0))  # warm-up
        t = best(lambda eng=eng: eng.generate([prompt], SamplingParams(max_tokens=1, temperature=0)))
        print(f"raygen, {chunk}-token chunks: {args.tokens}-token prefill {t * 1e3:.0f} ms", flush=True)
    hf = AutoModelForCausalLM.from_pretrained(model).eval()
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        hf(ids)  # warm-up
        t = best(lambda: hf(ids))
    print(f"transformers, one forward over {args.tokens} tokens: {t * 1e3:.0f} ms (best of {args.rounds})")


if __name__ == "__main__":
    main()
