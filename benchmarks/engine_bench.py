"""raygen's engine against transformers on one model and one workload, side by side, in one run.

    python benchmarks/engine_bench.py                       # the full table (tens of minutes on 2 cores)
    python benchmarks/engine_bench.py --requests 32 --quick # a smoke run

Model: GPT-2 architecture, 6 layers, hidden 512, 8 heads, vocab 8192, random init (saved once to a temp
dir). Workload: N requests with random prompts (32-256 tokens) and output lengths (64-256 tokens, EOS
off), all at once; raygen also at a Poisson rate. Systems, each in its own subprocess (clean peak RSS,
no interference): raygen's engine; transformers `generate` one request at a time; `generate` on static
batches of 16 and 64 (the `@serve.batch` pattern: a batch runs to its longest member); transformers'
continuous batching (`generate_batch`'s manager, per-request max_new_tokens).

Metrics (vLLM's definitions): output tokens/s over the run; TTFT = first token - arrival; TPOT = (last -
first token) / (output tokens - 1) per request; ITL = gaps between a request's successive token
arrivals. Roofline: for every step raygen ran, max(FLOPs / matmul rate, bytes / copy bandwidth) with
bytes = weights + the K/V attention reads, summed; both rates measured here, in the same dtype. Copy
bandwidth counts read + write (STREAM convention), which makes the roofline stricter, not looser.
Shared prefix: one 512-token system prompt, short suffixes, Poisson arrivals; TTFT with and without
prefix caching. Results go to benchmarks/results/engine/ (JSON, a Markdown table, a PNG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "engine"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MODEL = dict(n_layer=6, n_embd=512, n_head=8, vocab_size=8192, n_positions=1024)
KV_MIB = 768
MAX_SEQS, MAX_BATCHED = 128, 1024


# -- workload and model -------------------------------------------------------------------------------
def make_model(path: Path) -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    cfg = GPT2Config(**MODEL, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)


def make_workload(n: int, rate: float | None, seed: int, prompt=(32, 256), output=(64, 256), prefix=None) -> list[dict]:
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for _ in range(n):
        p = (prefix or []) + [rng.randrange(MODEL["vocab_size"]) for _ in range(rng.randint(*prompt))]
        reqs.append({"prompt": p, "max_tokens": rng.randint(*output), "arrival": t})
        if rate:
            t += rng.expovariate(rate)
    return reqs


# -- workers (one subprocess each) --------------------------------------------------------------------
def worker_raygen(model: str, dtype: str, reqs: list[dict], prefix_caching: bool = True) -> dict:
    from raygen.engine.engine import AsyncLLMEngine, EngineConfig, LLMEngine
    from raygen.engine.request import SamplingParams

    eng = LLMEngine(EngineConfig(model, dtype=dtype, device="cpu", kv_cache_mib=KV_MIB, max_num_seqs=MAX_SEQS,
                                 max_num_batched_tokens=MAX_BATCHED, enable_prefix_caching=prefix_caching,
                                 max_num_waiting=None, tokenizer=None))
    eng.generate([[1] * 64] * 4, SamplingParams(max_tokens=8, temperature=0))  # warm-up, not timed
    eng.step_log = []
    times: list[list[float]] = [[] for _ in reqs]

    async def one(i, r, t0, aeng):
        await asyncio.sleep(max(0.0, t0 + r["arrival"] - time.perf_counter()))
        stream = aeng.add_request(r["prompt"], SamplingParams(max_tokens=r["max_tokens"], temperature=0,
                                                              ignore_eos=True))
        async for o in stream:
            now = time.perf_counter()
            times[i].extend([now - t0] * len(o.token_ids))

    async def main():
        aeng = AsyncLLMEngine(eng)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, r, t0, aeng) for i, r in enumerate(reqs)))
        wall = time.perf_counter() - t0
        aeng.shutdown()
        return wall

    wall = asyncio.run(main())
    steps = [{"s": s.seconds, "tokens": s.tokens, "sampled": s.num_sampled} for s in eng.step_log]
    return {"wall": wall, "times": times, "steps": steps, "max_running": max(len(s["tokens"]) for s in steps),
            "kv_bytes": eng.runner.pool.nbytes, "preemptions": eng.stats().num_preemptions}


def _load_hf(model: str, dtype: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype]).eval()


class _StepClock:
    """A logits processor that only records when each generation step produces its token."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def worker_hf_static(model: str, dtype: str, reqs: list[dict], batch: int) -> dict:
    from transformers import LogitsProcessorList

    m = _load_hf(model, dtype)
    times: list[list[float]] = [[] for _ in reqs]
    with torch.inference_mode():
        m.generate(torch.ones(1, 8, dtype=torch.long), max_new_tokens=4, do_sample=False, pad_token_id=0)
        t0 = time.perf_counter()
        for start in range(0, len(reqs), batch):
            group = list(range(start, min(start + batch, len(reqs))))
            while time.perf_counter() - t0 < max(reqs[i]["arrival"] for i in group):
                time.sleep(0.001)  # a static batch starts when its last member has arrived
            width = max(len(reqs[i]["prompt"]) for i in group)
            ids = torch.zeros(len(group), width, dtype=torch.long)
            mask = torch.zeros(len(group), width, dtype=torch.long)
            for row, i in enumerate(group):  # left padding, as decoder-only batching needs
                p = reqs[i]["prompt"]
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            clock = _StepClock()
            new = max(reqs[i]["max_tokens"] for i in group)
            m.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                       pad_token_id=0, logits_processor=LogitsProcessorList([clock]))
            for i in group:
                times[i] = [t - t0 for t in clock.times[:reqs[i]["max_tokens"]]]
    return {"wall": time.perf_counter() - t0, "times": times}


def worker_hf_cb(model: str, dtype: str, reqs: list[dict]) -> dict:
    from transformers import GenerationConfig

    m = _load_hf(model, dtype)
    gc = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, max_new_tokens=256)
    with m.continuous_batching_context_manager(generation_config=gc, block=True, timeout=30) as man:
        t0 = time.perf_counter()
        ids = {}
        for i, r in enumerate(reqs):
            while time.perf_counter() - t0 < r["arrival"]:
                time.sleep(0.001)
            ids[man.add_request(r["prompt"], max_new_tokens=r["max_tokens"], record_timestamps=True)] = i
        got = {}
        while len(got) < len(reqs):
            res = man.get_result(timeout=1)
            if res is not None and res.is_finished():
                if res.error:
                    raise RuntimeError(f"generate_batch request failed: {res.error}")
                got[ids[res.request_id]] = res
        wall = time.perf_counter() - t0
    # Timestamps are perf_counter values in this process.
    times = [[t - t0 for t in (got[i].timestamps or [])] for i in range(len(reqs))]
    return {"wall": wall, "times": times}


def run_worker(args) -> None:
    torch.set_num_threads(args.threads)
    reqs = json.loads(Path(args.workload).read_text())
    kind = args.worker
    if kind == "raygen":
        res = worker_raygen(args.model, args.dtype, reqs)
    elif kind == "raygen_nocache":
        res = worker_raygen(args.model, args.dtype, reqs, prefix_caching=False)
    elif kind == "hf_single":
        res = worker_hf_static(args.model, args.dtype, reqs, 1)
    elif kind.startswith("hf_static"):
        res = worker_hf_static(args.model, args.dtype, reqs, int(kind.removeprefix("hf_static")))
    elif kind == "hf_cb":
        res = worker_hf_cb(args.model, args.dtype, reqs)
    else:
        raise SystemExit(f"unknown worker {kind}")
    res["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(res))


# -- driver -------------------------------------------------------------------------------------------
def spawn(kind: str, model: str, dtype: str, reqs: list[dict], threads: int, tmp: Path) -> dict:
    wl = tmp / f"wl-{kind}-{dtype}-{len(reqs)}-{reqs[-1]['arrival']:.3f}.json"
    wl.write_text(json.dumps(reqs))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--model", model, "--dtype", dtype,
                           "--workload", str(wl), "--threads", str(threads)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        tail = proc.stderr.strip().splitlines()[-3:]
        print(f"  {kind} {dtype}: FAILED ({' | '.join(tail)})", flush=True)
        return {"error": "\n".join(tail)}
    print(f"  {kind:15s} {dtype:8s} done in {time.perf_counter() - t:6.1f} s", flush=True)
    return json.loads(line[len("RESULT "):])


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q / 100 * len(xs)))]


def metrics(res: dict, reqs: list[dict]) -> dict:
    ttft, tpot, itl, n_out = [], [], [], 0
    for r, ts in zip(reqs, res["times"], strict=True):
        if not ts:
            continue
        n_out += len(ts)
        ttft.append(ts[0] - r["arrival"])
        if len(ts) > 1:
            tpot.append((ts[-1] - ts[0]) / (len(ts) - 1))
        itl.extend(b - a for a, b in zip(ts, ts[1:], strict=False) if b > a)  # one gap per chunk that arrived
    return {"tok_s": n_out / res["wall"], "out_tokens": n_out, "wall": res["wall"],
            "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99), "tpot_p50": pct(tpot, 50), "tpot_p99": pct(tpot, 99),
            "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99), "peak_rss_mib": res["peak_rss"] / 2**20}


def measure_rates(dtype: torch.dtype, threads: int) -> tuple[float, float]:
    """(matmul FLOP/s at a large square GEMM, copy bandwidth in bytes/s counting read + write)."""
    torch.set_num_threads(threads)
    n = 2048
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    reps, t = 5, time.perf_counter()
    for _ in range(reps):
        a @ b
    flops = 2 * n ** 3 * reps / (time.perf_counter() - t)
    x = torch.empty(256 * 2**20, dtype=torch.uint8)
    y = torch.empty_like(x)
    y.copy_(x)
    reps, t = 5, time.perf_counter()
    for _ in range(reps):
        y.copy_(x)
    bw = 2 * x.numel() * reps / (time.perf_counter() - t)
    return flops, bw


def roofline(steps: list[dict], dtype: torch.dtype, flops_rate: float, bw: float) -> float:
    """Ideal seconds for the steps raygen ran: per step max(compute, memory), summed."""
    L, d, V = MODEL["n_layer"], MODEL["n_embd"], MODEL["vocab_size"]
    elem = torch.empty(0, dtype=dtype).element_size()
    layer_params = 12 * d * d  # qkv 3d², out d², mlp 8d² (biases and norms are noise)
    weight_bytes = (L * layer_params + V * d) * elem
    kv_per_token = L * 2 * d * elem
    total = 0.0
    for s in steps:
        toks = sum(n for n, _ in s["tokens"])
        attn_pairs = sum(n * (ctx - n) + n * (n + 1) // 2 for n, ctx in s["tokens"])  # causal (query, key) pairs
        flops = 2 * L * layer_params * toks + 2 * d * V * s["sampled"] + 4 * L * d * attn_pairs
        kv_read = sum(ctx for _, ctx in s["tokens"]) * kv_per_token
        total += max(flops / flops_rate, (weight_bytes + kv_read) / bw)
    return total


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for dtype, ax in zip(DTYPES, axes, strict=True):
        rows = [(k, v) for k, v in results["all_at_once"].get(dtype, {}).items() if "tok_s" in v]
        ax.barh([k for k, _ in rows], [v["tok_s"] for _, v in rows], color="tab:blue")
        ax.set_title(f"output tokens/s, {dtype}, {results['requests']} requests at once")
        ax.set_xlabel("tokens/s (higher is better)")
        if dtype in results.get("roofline_tok_s", {}):
            ax.axvline(results["roofline_tok_s"][dtype], color="tab:red", ls="--", label="roofline")
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def fmt_table(rows: list[tuple[str, dict]], base: float | None) -> list[str]:
    out = ["| system | tok/s | × best static | TTFT p50 / p99 (s) | TPOT p50 / p99 (ms) | ITL p50 / p99 (ms) | peak RSS (MiB) |",
           "|---|---|---|---|---|---|---|"]
    for name, m in rows:
        if "error" in m:
            out.append(f"| {name} | failed: {m['error'][:80]} | | | | | |")
            continue
        ratio = f"{m['tok_s'] / base:.2f}×" if base else ""
        out.append(f"| {name} | {m['tok_s']:.0f} | {ratio} | {m['ttft_p50']:.2f} / {m['ttft_p99']:.2f} | "
                   f"{m['tpot_p50'] * 1e3:.1f} / {m['tpot_p99'] * 1e3:.1f} | {m['itl_p50'] * 1e3:.1f} / "
                   f"{m['itl_p99'] * 1e3:.1f} | {m['peak_rss_mib']:.0f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--single-requests", type=int, default=16,
                    help="generate() one at a time runs on the first K requests only (it is that slow)")
    ap.add_argument("--rate", type=float, default=0.0, help="Poisson rate (req/s) for raygen; 0: pick half of "
                                                              "raygen's all-at-once request rate")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--systems", default="raygen,hf_single,hf_static16,hf_static64,hf_cb")
    ap.add_argument("--prefix-requests", type=int, default=48)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="short outputs (16-32 tokens) for a smoke run")
    ap.add_argument("--worker"), ap.add_argument("--model"), ap.add_argument("--dtype"), ap.add_argument("--workload")
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)

    OUT.mkdir(parents=True, exist_ok=True)
    output = (16, 32) if args.quick else (64, 256)
    reqs = make_workload(args.requests, None, seed=0, output=output)
    systems = args.systems.split(",")
    results: dict = {"requests": args.requests, "date": time.strftime("%Y-%m-%d"), "all_at_once": {}, "poisson": {},
                     "prefix": {}, "roofline": {}, "roofline_tok_s": {}, "rates": {}, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model = tmp / "gpt2-6l-512"
        make_model(model)
        print(f"model {MODEL}; {args.requests} requests, outputs {output}; threads {args.threads}", flush=True)
        for dtype in args.dtypes.split(","):
            flops, bw = measure_rates(DTYPES[dtype], args.threads)
            results["rates"][dtype] = {"matmul_gflops": flops / 1e9, "copy_gbps": bw / 1e9}
            print(f"[{dtype}] matmul {flops / 1e9:.0f} GFLOP/s, copy {bw / 1e9:.1f} GB/s", flush=True)
            res = results["all_at_once"][dtype] = {}
            for kind in systems:
                sub = reqs[:args.single_requests] if kind == "hf_single" else reqs
                raw = spawn(kind, str(model), dtype, sub, args.threads, tmp)
                res[kind] = raw if "error" in raw else metrics(raw, sub)
                if kind == "raygen" and "error" not in raw:
                    ideal = roofline(raw["steps"], DTYPES[dtype], flops, bw)
                    res[kind].update(max_running=raw["max_running"], preemptions=raw["preemptions"],
                                     kv_mib=raw["kv_bytes"] / 2**20)
                    results["roofline"][dtype] = ideal / raw["wall"]
                    results["roofline_tok_s"][dtype] = res[kind]["out_tokens"] / ideal
                    rate = args.rate or 0.5 * len(reqs) / raw["wall"]
                    preqs = make_workload(args.requests, rate, seed=0, output=output)
                    praw = spawn("raygen", str(model), dtype, preqs, args.threads, tmp)
                    results["poisson"][dtype] = {"rate": rate, **(praw if "error" in praw else metrics(praw, preqs))}
            rng = random.Random(1)
            system = [rng.randrange(MODEL["vocab_size"]) for _ in range(512)]
            pre = make_workload(args.prefix_requests, 2.0, seed=2, prompt=(8, 32), output=(16, 32), prefix=system)
            results["prefix"][dtype] = {
                "cached": metrics(spawn("raygen", str(model), dtype, pre, args.threads, tmp), pre),
                "uncached": metrics(spawn("raygen_nocache", str(model), dtype, pre, args.threads, tmp), pre)}
    report(results)


def report(results: dict) -> None:
    lines = [f"### Engine benchmark ({results['date']}, {results['requests']} requests, {results['threads']} threads)", ""]
    for dtype, res in results["all_at_once"].items():
        statics = [m["tok_s"] for k, m in res.items() if k.startswith("hf_static") and "tok_s" in m]
        best = max(statics) if statics else None
        r = results["rates"][dtype]
        lines += [f"**{dtype}**: matmul {r['matmul_gflops']:.0f} GFLOP/s, copy {r['copy_gbps']:.1f} GB/s (measured "
                  "in this run)", ""]
        names = {"hf_single": "transformers generate, one at a time (first requests only)",
                 "hf_static16": "transformers generate, static batch 16", "hf_static64": "transformers generate, "
                 "static batch 64", "hf_cb": "transformers continuous batching", "raygen": "raygen engine"}
        lines += fmt_table([(names.get(k, k), m) for k, m in res.items()], best)
        if dtype in results["poisson"]:
            p = results["poisson"][dtype]
            lines += fmt_table([(f"raygen, Poisson {p['rate']:.2f} req/s", p)], None)[2:]
        if "raygen" in res and "tok_s" in res["raygen"]:
            g = res["raygen"]
            d, L, V, P = MODEL["n_embd"], MODEL["n_layer"], MODEL["vocab_size"], MODEL["n_positions"]
            model_mib = (L * 12 * d * d + (V + P) * d) * torch.empty(0, dtype=DTYPES[dtype]).element_size() / 2**20
            over = g["peak_rss_mib"] - g["kv_mib"] - model_mib
            lines += ["", f"raygen: {results['roofline'][dtype]:.0%} of roofline (ideal {results['roofline_tok_s'][dtype]:.0f} "
                      f"tok/s); up to {g['max_running']} sequences running; {g['preemptions']} preemptions; peak RSS "
                      f"{g['peak_rss_mib']:.0f} MiB = KV pool {g['kv_mib']:.0f} + model {model_mib:.0f} + overhead "
                      f"{over:.0f} MiB (interpreter, torch, transformers, activations)"]
            if best:
                lines.append(f"raygen / best static batch: **{g['tok_s'] / best:.2f}×**")
        if dtype in results["prefix"]:
            c, u = results["prefix"][dtype]["cached"], results["prefix"][dtype]["uncached"]
            lines.append(f"shared 512-token prefix: TTFT p50 {c['ttft_p50'] * 1e3:.0f} ms cached vs "
                         f"{u['ttft_p50'] * 1e3:.0f} ms uncached: **{c['ttft_p50'] / u['ttft_p50']:.2f}×**")
        lines.append("")
    text = "\n".join(lines)
    print("\n" + text)
    (OUT / "engine_bench.md").write_text(text + "\n")
    (OUT / "engine_bench.json").write_text(json.dumps(results, indent=1))
    try:
        plot(results, OUT / "engine_bench.png")
        print(f"plot: {OUT / 'engine_bench.png'}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


if __name__ == "__main__":
    main()
