"""raygen's engine against transformers `generate` at one request, in paired alternating rounds.

    python benchmarks/single_stream.py                      # gpt2-bench, fp32, 3 rounds
    python benchmarks/single_stream.py --preset gpt2-small --rounds 5

Concurrency 1 is where per-step overhead shows: one sequence, one token a step, the weights read once per
token. Each round decodes the same prompt (128 tokens) for `--tokens` greedy tokens, first through
`LLMEngine.step()` (the median decode step), then through `generate` (TPOT: the time of N tokens less the
time of 1, over N - 1), in one process on the same threads, so both see the same machine state. Prints
each round and the median ratio; no serving, no HTTP (benchmarks/peer_bench.py and guidellm_bench.py
measure those).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import PRESETS, make_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="gpt2-bench", choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    from raygen.engine.engine import EngineConfig, LLMEngine
    from raygen.engine.request import SamplingParams

    torch.set_num_threads(args.threads)
    model = Path(tempfile.mkdtemp(prefix="raygen-c1-")) / args.preset
    make_model(model, PRESETS[args.preset])
    eng = LLMEngine(EngineConfig(str(model), dtype=args.dtype, device="cpu", kv_cache_mib=256, max_num_seqs=8,
                                 max_num_batched_tokens=1024, max_num_waiting=None, tokenizer=None))
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, args.dtype)).eval()
    prompt = list(range(2, 130))
    ids = torch.tensor([prompt])
    ratios = []
    for rnd in range(args.rounds):
        eng.add_request(f"r{rnd}", prompt, SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True))
        eng.step()  # the prefill
        steps = []
        while eng.has_unfinished():
            t = time.perf_counter()
            eng.step()
            steps.append(time.perf_counter() - t)
        ours = statistics.median(steps)
        with torch.inference_mode():
            timed = []
            for n in (1, args.tokens):
                t = time.perf_counter()
                hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
                timed.append(time.perf_counter() - t)
        theirs = (timed[1] - timed[0]) / (args.tokens - 1)
        ratios.append(ours / theirs)
        print(f"round {rnd}: raygen decode step {ours * 1e3:.2f} ms, transformers generate TPOT "
              f"{theirs * 1e3:.2f} ms: {ours / theirs:.2f}x the time", flush=True)
    print(f"{args.preset} {args.dtype}, {args.threads} threads: raygen / generate time per token, median of "
          f"{args.rounds} rounds: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
