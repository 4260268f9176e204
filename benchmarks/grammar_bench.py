"""Which grammar engine raygen's structured outputs stand on: xgrammar against llguidance, side by side, on
the same tokenizer and the same JSON schemas, one run (issue 19: "pick by measurement and say why"); and
what constraining costs raygen's engine (--engine).

    python benchmarks/grammar_bench.py [--steps 64] [--batch 64]
    python benchmarks/grammar_bench.py --engine [--rounds 3] [--concurrency 64]

For each engine and each schema of the structured-output tests:
  compile     a schema's first compile (cold), then again (what a cache hit costs)
  mask/token  filling one sequence's token bitmask and accepting a token, along a seeded random walk
              through the grammar (a random allowed token each step, as a random-init model samples)
  batch step  filling the bitmasks of `--batch` sequences at once (each engine's batched call)
  valid       of `--walks` random walks that the grammar let finish, how many are JSON that validates
              against the schema (jsonschema): a constraint that lets an invalid output through is wrong,
              however fast
The tokenizer is raygen's byte-level BPE trained on the demo corpus (8192 tokens, GPT-2 style).

--engine: raygen's engine (GPT-2 6x512, the engine bench's preset, random init, fp32) keeps `--concurrency`
sequences running (a finished one is replaced at once) for a fixed number of steps, every sequence sampled
(temperature 1) under one of the JSON schemas, against the same with no constraint (EOS off, each running
out the length of a constrained output from a calibration run, so contexts and prefills match); paired
alternating rounds, medians; prints output tok/s of each and the overhead.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from jsonschema import Draft202012Validator  # noqa: E402
from structured_schemas import SCHEMAS  # noqa: E402  (the schemas the tests validate against)


def tokenizer(vocab: int):
    import pydoc_data.topics
    from transformers import AutoTokenizer

    from raygen.data.features import train_tokenizer

    d = Path(tempfile.mkdtemp(prefix="grammar-bench-"))
    train_tokenizer(pydoc_data.topics.topics.values(), vocab, str(d))
    return AutoTokenizer.from_pretrained(d)


class XGrammar:
    name = "xgrammar"

    def __init__(self, tok, vocab: int):
        import torch
        import xgrammar as xgr

        self.xgr, self.torch = xgr, torch
        t = time.perf_counter()
        self.info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=vocab, stop_token_ids=[tok.eos_token_id])
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self.setup_s = time.perf_counter() - t
        self.vocab = vocab

    def compile(self, schema: dict):
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)

    def matcher(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def bitmask(self, n: int):
        return self.xgr.allocate_token_bitmask(n, self.vocab)

    def fill(self, m, mask, i: int) -> None:
        m.fill_next_token_bitmask(mask, i)

    def fill_batch(self, ms, mask) -> None:
        self.xgr.BatchGrammarMatcher(max_threads=2).batch_fill_next_token_bitmask(ms, mask)

    def accept(self, m, tok: int) -> None:
        assert m.accept_token(tok)

    def done(self, m) -> bool:
        return m.is_terminated()


class LLGuidance:
    name = "llguidance"

    def __init__(self, tok, vocab: int):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.ll = llguidance
        t = time.perf_counter()
        self.tok = llguidance.hf.from_tokenizer(tok, n_vocab=vocab)
        self.executor = llguidance.LLExecutor(2)
        self.setup_s = time.perf_counter() - t
        self.vocab = vocab

    def compile(self, schema: dict):
        grammar = self.ll.LLMatcher.grammar_from_json_schema(json.dumps(schema),
                                                             defaults={"whitespace_flexible": False})
        m = self.ll.LLMatcher(self.tok, grammar)  # llguidance compiles lazily, per matcher
        assert not m.is_error(), m.get_error()
        return grammar

    def matcher(self, compiled):
        return self.ll.LLMatcher(self.tok, compiled)

    def bitmask(self, n: int):
        return self.ll.torch.allocate_token_bitmask(n, self.vocab)

    def fill(self, m, mask, i: int) -> None:
        self.ll.torch.fill_next_token_bitmask(m, mask, i)

    def fill_batch(self, ms, mask) -> None:
        self.ll.torch.fill_next_token_bitmask_par(self.executor, [(m, i) for i, m in enumerate(ms)], mask)

    def accept(self, m, tok: int) -> None:
        assert m.consume_token(tok), m.get_error()

    def done(self, m) -> bool:
        return m.is_stopped()


def allowed(mask_row, vocab: int) -> list[int]:
    import torch

    bits = mask_row.view(torch.int32).tolist()
    return [t for t in range(vocab) if (bits[t >> 5] >> (t & 31)) & 1]


def walk(engine, compiled, rng: random.Random, steps: int, tokens: list | None = None) -> list[float]:
    """Seconds per token (fill + accept) along one random walk of at most `steps` tokens; the tokens chosen
    are appended to `tokens`, and None at the end when the grammar finished."""
    m, mask, out = engine.matcher(compiled), engine.bitmask(1), []
    tokens = [] if tokens is None else tokens
    for _ in range(steps):
        if engine.done(m):
            tokens.append(None)
            break
        t = time.perf_counter()
        engine.fill(m, mask, 0)
        fill_s = time.perf_counter() - t
        ok = allowed(mask[0], engine.vocab)
        if not ok:
            break
        tok = rng.choice(ok)
        tokens.append(tok)
        t = time.perf_counter()
        engine.accept(m, tok)
        out.append(fill_s + time.perf_counter() - t)
    return out


def engine_round(engine, constrained: bool, concurrency: int, steps: int, seed: int,
                 lengths: list[int] | None = None) -> tuple[float, list[int]]:
    """(output tokens/s with `concurrency` sequences kept running for `steps` steps after 10 warm-up steps,
    the lengths of the outputs that finished). Free sequences run out max_tokens taken in turn from `lengths`
    (the constrained outputs' own lengths), so both runs carry the same contexts and the same prefills."""
    from raygen.engine.request import GrammarSpec, SamplingParams

    specs = [GrammarSpec("json_schema", json.dumps(SCHEMAS[k])) for k in sorted(SCHEMAS)]
    rng = random.Random(seed)
    prompt = engine.tokenizer("Answer as JSON: ", add_special_tokens=False)["input_ids"]
    live, n = set(), 0

    def add():
        nonlocal n
        n += 1
        rid = f"r{seed}-{n}"
        max_tokens = 256 if constrained else lengths[n % len(lengths)]
        engine.add_request(rid, prompt + [rng.randrange(5, 8000) for _ in range(rng.randint(8, 64))],
                           SamplingParams(max_tokens=max_tokens, temperature=1.0, seed=n, ignore_eos=not constrained,
                                          structured=specs[n % len(specs)] if constrained else None))
        live.add(rid)

    for _ in range(concurrency):
        add()
    tokens, t0, done = 0, None, []
    for step in range(steps + 10):
        if step == 10:
            tokens, t0 = 0, time.perf_counter()
            engine.step_log = []
        for o in engine.step():
            tokens += len(o.token_ids)
            if o.finished:
                done.append(o.num_output_tokens)
                live.discard(o.req_id)
                add()
    rate = tokens / (time.perf_counter() - t0)
    # Decode steps of the full batch alone (no prompt chunk in them): what a constraint adds to a step.
    decode = [r.seconds for r in engine.step_log if r.num_sampled == concurrency and all(n == 1 for n, _ in r.tokens)]
    engine.step_log = None
    for rid in list(live):
        engine.abort(rid)
    return (concurrency / statistics.median(decode) if decode else float("nan")), rate, done


def engine_overhead(args) -> None:
    import torch

    from raygen.engine.engine import EngineConfig, LLMEngine

    sys.path.insert(0, str(HERE))
    from engine_bench import PRESETS, make_model

    d = Path(tempfile.mkdtemp(prefix="grammar-engine-"))
    make_model(d, PRESETS["gpt2-bench"])
    tokenizer(8192).save_pretrained(d)
    engine = LLMEngine(EngineConfig(model=str(d), max_num_seqs=args.concurrency, kv_cache_mib=768,
                                    max_num_batched_tokens=1024, dtype="float32"))
    for spec_schema in SCHEMAS.values():  # compiled before timing, as the server does off the step loop
        from raygen.engine.request import GrammarSpec

        engine.compile_grammar(GrammarSpec("json_schema", json.dumps(spec_schema)))
    # The grammar's own time in the step (mask fill + apply, token accept), timed around its two calls.
    from raygen.engine import Grammars

    spent = {"s": 0.0}

    def timed(fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent["s"] += time.perf_counter() - t
        return wrapper

    Grammars.apply = timed(Grammars.apply)
    Grammars.accept = staticmethod(timed(Grammars.accept))
    *_, lengths = engine_round(engine, True, args.concurrency, args.engine_steps, seed=99)  # calibration
    print(f"  constrained outputs: {len(lengths)} finished, median {statistics.median(lengths)} tokens", flush=True)
    runs: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    share: list[float] = []
    for r in range(args.rounds):
        for constrained in ((False, True) if r % 2 == 0 else (True, False)):
            spent["s"], t0 = 0.0, time.perf_counter()
            dec, rate, _ = engine_round(engine, constrained, args.concurrency, args.engine_steps, seed=r,
                                        lengths=lengths)
            runs[constrained].append((dec, rate))
            if constrained:
                share.append(spent["s"] / (time.perf_counter() - t0))
            print(f"  round {r + 1} {'constrained' if constrained else 'free':11s} decode steps of "
                  f"{args.concurrency}: {dec:7.1f} tok/s; whole run {rate:7.1f} tok/s", flush=True)
    med = {k: (statistics.median(d for d, _ in v), statistics.median(t for _, t in v)) for k, v in runs.items()}
    print(f"\nengine, {args.concurrency} sequences running, {args.engine_steps} steps a round, {args.rounds} paired "
          f"rounds, {torch.get_num_threads()} threads (medians): decode steps of {args.concurrency} sequences "
          f"free {med[False][0]:.1f} tok/s, all constrained {med[True][0]:.1f} tok/s: overhead "
          f"{100 * (1 - med[True][0] / med[False][0]):.1f}%; whole runs {med[False][1]:.1f} vs {med[True][1]:.1f} "
          "tok/s (these differ in prefills: constrained outputs end on their own); the grammar's own calls took "
          f"{100 * statistics.median(share):.1f}% of the constrained runs' time")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--walks", type=int, default=100, help="random walks per schema checked for valid JSON")
    ap.add_argument("--engine", action="store_true", help="the engine's constrained-decoding overhead instead")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--engine-steps", type=int, default=150)
    args = ap.parse_args()
    if args.engine:
        engine_overhead(args)
        return
    tok = tokenizer(args.vocab)
    vocab = len(tok)
    print(f"tokenizer: byte-level BPE, {vocab} tokens; {len(SCHEMAS)} schemas; walks of up to {args.steps} tokens; "
          f"batch {args.batch}")
    rows = []
    for cls in (XGrammar, LLGuidance):
        engine = cls(tok, vocab)
        for name, schema in SCHEMAS.items():
            t = time.perf_counter()
            compiled = engine.compile(schema)
            cold = time.perf_counter() - t
            t = time.perf_counter()
            engine.compile(schema)
            warm = time.perf_counter() - t
            per_tok = [s for seed in range(4) for s in walk(engine, compiled, random.Random(seed), args.steps)]
            ms = [engine.matcher(compiled) for _ in range(args.batch)]
            mask = engine.bitmask(args.batch)
            batch = []
            for _ in range(5):
                t = time.perf_counter()
                engine.fill_batch(ms, mask)
                batch.append(time.perf_counter() - t)
            finished = valid = 0
            validator = Draft202012Validator(schema)
            for seed in range(args.walks):
                toks: list = []
                walk(engine, compiled, random.Random(1000 + seed), 512, toks)
                if toks and toks[-1] is None:
                    finished += 1
                    text = tok.decode([t for t in toks[:-1] if t != tok.eos_token_id])
                    try:
                        valid += validator.is_valid(json.loads(text))
                    except ValueError:
                        pass
            rows.append((engine.name, name, engine.setup_s, cold, warm, statistics.median(per_tok),
                         sorted(per_tok)[int(0.99 * (len(per_tok) - 1))], statistics.median(batch), valid, finished))
            print(f"  {engine.name:10s} {name:14s} compile {cold * 1e3:8.1f} ms (again {warm * 1e3:6.2f} ms)  "
                  f"mask+accept p50 {rows[-1][5] * 1e6:7.0f} us p99 {rows[-1][6] * 1e6:7.0f} us  "
                  f"batch of {args.batch} {rows[-1][7] * 1e3:6.2f} ms  valid {valid}/{finished}", flush=True)
    print("\n| engine | tokenizer setup (ms) | schema | compile cold / again (ms) | mask+accept p50 / p99 (us) | "
          f"{args.batch} masks at once (ms) | valid JSON of finished walks |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[2] * 1e3:.0f} | {r[1]} | {r[3] * 1e3:.1f} / {r[4] * 1e3:.2f} | {r[5] * 1e6:.0f} / "
              f"{r[6] * 1e6:.0f} | {r[7] * 1e3:.2f} | {r[8]} / {r[9]} |")


if __name__ == "__main__":
    main()
