"""raygen's engine against transformers on one model and one workload, side by side, in one run.

    python benchmarks/engine_bench.py                       # the full table (tens of minutes on 2 cores)
    python benchmarks/engine_bench.py --requests 32 --quick # a smoke run
    python benchmarks/engine_bench.py --device cuda --preset gpt2-small --dtypes bfloat16   # on a GPU
        (benchmarks/gpu_check.sh runs it so, with static batches of 16, 64 and 256 and no Poisson/prefix runs)

Model (`--preset`): by default GPT-2 architecture, 6 layers, hidden 512, 8 heads, vocab 8192; gpt2-small
(124M) and llama-160m are train/model.py's shapes of those names, large enough for a GPU; gpt2-tiny is for
smoke runs. Random init, saved once to a temp dir. `--device cuda` runs every system on the GPU.
Workload: N requests with random prompts (32-256 tokens) and output lengths (64-256 tokens, EOS off), all
at once; raygen also at a Poisson rate. Systems, each in its own subprocess (clean peak RSS, no
interference): raygen's engine; transformers `generate` one request at a time; `generate` on static
batches of 16 and 64 (hf_staticN: any N; the `@serve.batch` pattern: a batch runs to its longest member),
and with transformers' static KV cache (hf_scN: `cache_implementation="static"`); transformers' continuous
batching (`generate_batch`'s manager, per-request max_new_tokens); llama.cpp's server (`llamacpp`, CPU: the
same weights as GGUF, one slot per request, every request at once over HTTP through loadgen.py; build it
once with `python benchmarks/llamacpp.py build`). The best static batch of either kind is the baseline.
The issue-18 comparison on CPU: `--systems raygen,llamacpp,hf_sc16,hf_sc32,hf_sc64,hf_sc128,hf_static64`.

Metrics (vLLM's definitions): output tokens/s over the run; TTFT = first token - arrival; TPOT = (last -
first token) / (output tokens - 1) per request; ITL = gaps between a request's successive token
arrivals. Roofline: for every step raygen ran, max(FLOPs / matmul rate, bytes / copy bandwidth) with
bytes = weights + the K/V attention reads, summed; both rates measured here, in the same dtype. Copy
bandwidth counts read + write (STREAM convention), which makes the roofline stricter, not looser; on a GPU
it is a 1 GiB device-to-device copy (about the HBM peak). Decode bandwidth: over the steps that only
decoded, (weights + K/V read) bytes / step seconds, as a share of that copy bandwidth.
Shared prefix: one 512-token system prompt, short suffixes, Poisson arrivals; TTFT with and without
prefix caching. Results go to benchmarks/results/engine/ (`--out`; JSON, a Markdown table, a PNG).
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
HF_STATIC = ("hf_static", "hf_sc", "hf_compiled")  # transformers' static-batch systems: the best of them is the baseline
# Shapes by name. gpt2-small and llama-160m follow train/model.py's presets of those names (with GPT-2's
# vocabulary and a 32k one, as its parameter counts assume); copied here so the bench needs no raygen.train.
PRESETS = {
    "gpt2-bench": dict(family="gpt2", n_layer=6, n_embd=512, n_head=8, vocab_size=8192, n_positions=1024),
    "gpt2-tiny": dict(family="gpt2", n_layer=2, n_embd=128, n_head=2, vocab_size=8192, n_positions=1024),
    "gpt2-small": dict(family="gpt2", n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024),
    "llama-160m": dict(family="llama", n_layer=12, n_embd=768, n_head=12, n_kv_head=4, intermediate_size=2048,
                       vocab_size=32000, n_positions=2048),
}
# Engine settings per device: (KV pool MiB, max sequences, tokens per step).
SETTINGS = {"cpu": (768, 128, 1024), "cuda": (8192, 256, 2048)}


# -- workload and model -------------------------------------------------------------------------------
def make_model(path: Path, spec: dict) -> None:
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(0)
    none = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if spec["family"] == "gpt2":
        cfg = GPT2Config(n_layer=spec["n_layer"], n_embd=spec["n_embd"], n_head=spec["n_head"],
                         vocab_size=spec["vocab_size"], n_positions=spec["n_positions"], **none)
    else:
        cfg = LlamaConfig(num_hidden_layers=spec["n_layer"], hidden_size=spec["n_embd"],
                          num_attention_heads=spec["n_head"], num_key_value_heads=spec["n_kv_head"],
                          intermediate_size=spec["intermediate_size"], vocab_size=spec["vocab_size"],
                          max_position_embeddings=spec["n_positions"], tie_word_embeddings=False, **none)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)


def dims(spec: dict) -> dict:
    """What the roofline needs: layers, hidden, vocab, K/V width, matmul parameters per layer, all parameters."""
    L, d, h, V = spec["n_layer"], spec["n_embd"], spec["n_head"], spec["vocab_size"]
    hd, kv = d // h, spec.get("n_kv_head", h)
    if spec["family"] == "gpt2":
        layer = 12 * d * d  # qkv 3d², out d², mlp 8d² (biases and norms are noise)
        embed = (V + spec["n_positions"]) * d  # the LM head is tied to the token embedding
    else:
        layer = d * (h + 2 * kv) * hd + h * hd * d + 3 * d * spec["intermediate_size"]  # qkv, out, gate/up/down
        embed = 2 * V * d  # untied LM head
    return {"L": L, "d": d, "V": V, "kv_width": kv * hd, "layer_params": layer, "params": L * layer + embed}


def make_workload(n: int, rate: float | None, seed: int, vocab: int, prompt=(32, 256), output=(64, 256),
                  prefix=None) -> list[dict]:
    rng = random.Random(seed)
    t, reqs = 0.0, []
    for _ in range(n):
        p = (prefix or []) + [rng.randrange(vocab) for _ in range(rng.randint(*prompt))]
        reqs.append({"prompt": p, "max_tokens": rng.randint(*output), "arrival": t})
        if rate:
            t += rng.expovariate(rate)
    return reqs


# -- workers (one subprocess each) --------------------------------------------------------------------
def worker_raygen(model: str, dtype: str, reqs: list[dict], args, prefix_caching: bool = True) -> dict:
    from raygen.engine.engine import AsyncLLMEngine, EngineConfig, LLMEngine
    from raygen.engine.request import SamplingParams

    eng = LLMEngine(EngineConfig(model, dtype=dtype, device=args.device, kv_cache_mib=args.kv_mib,
                                 max_num_seqs=args.max_seqs, max_num_batched_tokens=args.max_batched_tokens,
                                 enable_prefix_caching=prefix_caching, max_num_waiting=None, tokenizer=None))
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


def _load_hf(model: str, dtype: str, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype]).to(device).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class _StepClock:
    """A logits processor that only records when each generation step produces its token."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def worker_hf_static(model: str, dtype: str, reqs: list[dict], batch: int, device: str,
                     static_cache: bool = False, compiled: bool = False) -> dict:
    """Static batches of `batch` through `generate`, with the default dynamic cache or, with `static_cache`,
    transformers' preallocated one (`cache_implementation="static"`, its fastest decode path); `compiled`
    adds transformers' own torch.compile of the decode forward, which it does on GPUs only unless told
    (CompileConfig._compile_all_devices), warmed up on every batch's shapes before the clock starts."""
    from transformers import CompileConfig, LogitsProcessorList

    extra = {"cache_implementation": "static"} if static_cache else {}
    if compiled:
        cc = CompileConfig(fullgraph=False, dynamic=False, mode="default")
        cc._compile_all_devices = True
        extra = {"cache_implementation": "static", "compile_config": cc}

    m = _load_hf(model, dtype, device)
    times: list[list[float]] = [[] for _ in reqs]
    with torch.inference_mode():
        m.generate(torch.ones(1, 8, dtype=torch.long, device=device), max_new_tokens=4, do_sample=False,
                   pad_token_id=0)
        if compiled:  # compile for each batch's shapes first: compile time is not serving time
            for start in range(0, len(reqs), batch):
                group = list(range(start, min(start + batch, len(reqs))))
                width = max(len(reqs[i]["prompt"]) for i in group)
                new = max(reqs[i]["max_tokens"] for i in group)
                m.generate(torch.ones(len(group), width, dtype=torch.long, device=device), max_new_tokens=new,
                           do_sample=False, pad_token_id=0, **extra)
        _sync(device)
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
            m.generate(ids.to(device), attention_mask=mask.to(device), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0, logits_processor=LogitsProcessorList([clock]), **extra)
            _sync(device)
            for i in group:
                times[i] = [t - t0 for t in clock.times[:reqs[i]["max_tokens"]]]
    return {"wall": time.perf_counter() - t0, "times": times}


def worker_hf_cb(model: str, dtype: str, reqs: list[dict], device: str) -> dict:
    from transformers import GenerationConfig

    m = _load_hf(model, dtype, device)
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
        res = worker_raygen(args.model, args.dtype, reqs, args)
    elif kind == "raygen_nocache":
        res = worker_raygen(args.model, args.dtype, reqs, args, prefix_caching=False)
    elif kind == "hf_single":
        res = worker_hf_static(args.model, args.dtype, reqs, 1, args.device)
    elif kind.startswith("hf_static"):
        res = worker_hf_static(args.model, args.dtype, reqs, int(kind.removeprefix("hf_static")), args.device)
    elif kind.startswith("hf_sc"):
        res = worker_hf_static(args.model, args.dtype, reqs, int(kind.removeprefix("hf_sc")), args.device,
                               static_cache=True)
    elif kind.startswith("hf_compiled"):
        res = worker_hf_static(args.model, args.dtype, reqs, int(kind.removeprefix("hf_compiled")), args.device,
                               compiled=True)
    elif kind == "hf_cb":
        res = worker_hf_cb(args.model, args.dtype, reqs, args.device)
    else:
        raise SystemExit(f"unknown worker {kind}")
    res["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print("RESULT " + json.dumps(res))


# -- driver -------------------------------------------------------------------------------------------
def spawn(kind: str, model: str, dtype: str, reqs: list[dict], args, tmp: Path) -> dict:
    wl = tmp / f"wl-{kind}-{dtype}-{len(reqs)}-{reqs[-1]['arrival']:.3f}.json"
    wl.write_text(json.dumps(reqs))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--model", model, "--dtype", dtype,
                           "--workload", str(wl), "--threads", str(args.threads), "--device", args.device,
                           "--kv-mib", str(args.kv_mib), "--max-seqs", str(args.max_seqs),
                           "--max-batched-tokens", str(args.max_batched_tokens)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        tail = proc.stderr.strip().splitlines()[-3:]
        print(f"  {kind} {dtype}: FAILED ({' | '.join(tail)})", flush=True)
        return {"error": "\n".join(tail)}
    print(f"  {kind:15s} {dtype:8s} done in {time.perf_counter() - t:6.1f} s", flush=True)
    return json.loads(line[len("RESULT "):])


def run_llamacpp(model: str, dtype: str, reqs: list[dict], args, tmp: Path) -> dict:
    """llama.cpp's server (benchmarks/llamacpp.py) on the same weights as GGUF, every request sent at once
    over HTTP (a slot each: `--parallel` = the request count, each slot the workload's longest sequence),
    token times as the raygen worker records them: each token of a chunk at the chunk's arrival."""
    import llamacpp
    import loadgen

    if not llamacpp.server_binary().exists():
        msg = "llama-server is not built: run `python benchmarks/llamacpp.py build` once (about 8 minutes)"
        print(f"  llamacpp        {dtype:8s} skipped: {msg}", flush=True)
        return {"error": msg}
    outtype = {"float32": "f32", "bfloat16": "bf16"}[dtype]
    gguf = llamacpp.convert(model, tmp / f"model-{outtype}.gguf", outtype)
    longest = max(len(r["prompt"]) + r["max_tokens"] for r in reqs)
    t = time.perf_counter()
    with llamacpp.Server(gguf, port=_free_port(), parallel=len(reqs), ctx_per_slot=-(-longest // 64) * 64,
                         threads=args.threads, log=tmp / "llama-server.log") as srv:
        warm = [{"prompt": [2] * 64, "max_tokens": 8} for _ in range(4)]
        loadgen.measure(srv.url, warm, concurrency=4)  # the same warm-up as raygen's
        run = loadgen.measure(srv.url, [{"prompt": r["prompt"], "max_tokens": r["max_tokens"]} for r in reqs],
                              concurrency=len(reqs), raw=True)
        peak = _peak_rss(srv.proc.pid)
    t0 = min(r["start"] for r in run["results"])
    times, errors = [], [r["error"] for r in run["results"] if r.get("error")]
    if errors:
        print(f"  llamacpp        {dtype:8s} FAILED ({len(errors)} requests: {errors[0]})", flush=True)
        return {"error": errors[0]}
    for r in run["results"]:
        times.append([r["start"] - t0 + at for at, k in zip(r["times"], r["counts"], strict=True) for _ in range(k)])
    print(f"  {'llamacpp':15s} {dtype:8s} done in {time.perf_counter() - t:6.1f} s", flush=True)
    return {"wall": run["wall"], "times": times, "peak_rss": peak}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss(pid: int) -> int:
    """A live process's peak resident set (VmHWM), bytes; 0 where /proc cannot say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


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


def measure_rates(dtype: torch.dtype, threads: int, device: str = "cpu") -> tuple[float, float]:
    """(matmul FLOP/s at a large square GEMM, copy bandwidth in bytes/s counting read + write). On a GPU:
    an 8192² GEMM and a 1 GiB device-to-device copy, timed between synchronizations."""
    torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    n, size, reps = (8192, 2**30, 20) if gpu else (2048, 256 * 2**20, 5)

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        return time.perf_counter() - t

    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    flops = 2 * n ** 3 * reps / timed(lambda: a @ b)
    x = torch.empty(size, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    bw = 2 * x.numel() * reps / timed(lambda: y.copy_(x))
    return flops, bw


def _step_cost(s: dict, m: dict, elem: int) -> tuple[float, float]:
    """(FLOPs, bytes: weights + K/V read) of one recorded step."""
    L, d, V = m["L"], m["d"], m["V"]
    toks = sum(n for n, _ in s["tokens"])
    attn_pairs = sum(n * (ctx - n) + n * (n + 1) // 2 for n, ctx in s["tokens"])  # causal (query, key) pairs
    flops = 2 * L * m["layer_params"] * toks + 2 * d * V * s["sampled"] + 4 * L * d * attn_pairs
    kv_read = sum(ctx for _, ctx in s["tokens"]) * L * 2 * m["kv_width"] * elem
    return flops, (L * m["layer_params"] + V * d) * elem + kv_read


def roofline(steps: list[dict], spec: dict, dtype: torch.dtype, flops_rate: float, bw: float) -> float:
    """Ideal seconds for the steps raygen ran: per step max(compute, memory), summed."""
    m, elem = dims(spec), torch.empty(0, dtype=dtype).element_size()
    total = 0.0
    for s in steps:
        flops, nbytes = _step_cost(s, m, elem)
        total += max(flops / flops_rate, nbytes / bw)
    return total


def decode_bandwidth(steps: list[dict], spec: dict, dtype: torch.dtype) -> tuple[float, int]:
    """(bytes/s over the steps that only decoded: weights + K/V read per step / step seconds, steps counted)."""
    m, elem = dims(spec), torch.empty(0, dtype=dtype).element_size()
    dec = [s for s in steps if s["tokens"] and all(n == 1 for n, _ in s["tokens"])]
    seconds = sum(s["s"] for s in dec)
    return (sum(_step_cost(s, m, elem)[1] for s in dec) / seconds if seconds else float("nan")), len(dec)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


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
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (every system runs there)")
    ap.add_argument("--preset", default="gpt2-bench", choices=sorted(PRESETS), help="the model's shape")
    ap.add_argument("--kv-mib", type=float, help="raygen's KV pool; default 768 on CPU, 8192 on a GPU")
    ap.add_argument("--max-seqs", type=int, help="raygen's max_num_seqs; default 128 on CPU, 256 on a GPU")
    ap.add_argument("--max-batched-tokens", type=int, help="raygen's tokens per step; default 1024 CPU, 2048 GPU")
    ap.add_argument("--no-poisson", action="store_true", help="skip raygen's run at a Poisson rate")
    ap.add_argument("--out", type=Path, default=OUT, help="where the JSON, Markdown and PNG go")
    ap.add_argument("--worker"), ap.add_argument("--model"), ap.add_argument("--dtype"), ap.add_argument("--workload")
    args = ap.parse_args()
    kv, seqs, batched = SETTINGS["cuda" if args.device.startswith("cuda") else "cpu"]
    args.kv_mib = args.kv_mib or kv
    args.max_seqs = args.max_seqs or seqs
    args.max_batched_tokens = args.max_batched_tokens or batched
    if args.worker:
        return run_worker(args)

    args.out.mkdir(parents=True, exist_ok=True)
    spec = PRESETS[args.preset]
    vocab = spec["vocab_size"]
    output = (16, 32) if args.quick else (64, 256)
    reqs = make_workload(args.requests, None, seed=0, vocab=vocab, output=output)
    systems = args.systems.split(",")
    results: dict = {"requests": args.requests, "date": time.strftime("%Y-%m-%d"), "all_at_once": {}, "poisson": {},
                     "prefix": {}, "roofline": {}, "roofline_tok_s": {}, "rates": {}, "threads": args.threads,
                     "device": args.device, "device_name": device_name(args.device), "output": list(output),
                     "model": {"preset": args.preset, **spec, "params": dims(spec)["params"]},
                     "engine": {"kv_mib": args.kv_mib, "max_num_seqs": args.max_seqs,
                                "max_num_batched_tokens": args.max_batched_tokens},
                     "decode_bw": {}, "vs_best_static": {}}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        model = tmp / args.preset
        make_model(model, spec)
        if "llamacpp" in systems:  # llama.cpp's converter writes the vocabulary into the GGUF: it needs one
            import pydoc_data.topics

            from raygen.data.features import train_tokenizer

            train_tokenizer(pydoc_data.topics.topics.values(), vocab, str(model))
        print(f"model {args.preset} {spec} ({dims(spec)['params'] / 1e6:.1f}M parameters); {args.requests} "
              f"requests, outputs {output}; {results['device_name']}; threads {args.threads}", flush=True)
        for dtype in args.dtypes.split(","):
            flops, bw = measure_rates(DTYPES[dtype], args.threads, args.device)
            results["rates"][dtype] = {"matmul_gflops": flops / 1e9, "copy_gbps": bw / 1e9}
            print(f"[{dtype}] matmul {flops / 1e9:.0f} GFLOP/s, copy {bw / 1e9:.1f} GB/s (peak, read + write)",
                  flush=True)
            res = results["all_at_once"][dtype] = {}
            for kind in systems:
                sub = reqs[:args.single_requests] if kind == "hf_single" else reqs
                if kind == "llamacpp":
                    raw = run_llamacpp(str(model), dtype, sub, args, tmp)
                else:
                    raw = spawn(kind, str(model), dtype, sub, args, tmp)
                res[kind] = raw if "error" in raw else metrics(raw, sub)
                if kind == "raygen" and "error" not in raw:
                    ideal = roofline(raw["steps"], spec, DTYPES[dtype], flops, bw)
                    res[kind].update(max_running=raw["max_running"], preemptions=raw["preemptions"],
                                     kv_mib=raw["kv_bytes"] / 2**20)
                    results["roofline"][dtype] = ideal / raw["wall"]
                    results["roofline_tok_s"][dtype] = res[kind]["out_tokens"] / ideal
                    dbw, n_dec = decode_bandwidth(raw["steps"], spec, DTYPES[dtype])
                    results["decode_bw"][dtype] = {"gbps": dbw / 1e9, "of_peak": dbw / bw, "steps": n_dec}
                    if args.no_poisson:
                        continue
                    rate = args.rate or 0.5 * len(reqs) / raw["wall"]
                    preqs = make_workload(args.requests, rate, seed=0, vocab=vocab, output=output)
                    praw = spawn("raygen", str(model), dtype, preqs, args, tmp)
                    results["poisson"][dtype] = {"rate": rate, **(praw if "error" in praw else metrics(praw, preqs))}
            statics = {k: m["tok_s"] for k, m in res.items() if k.startswith(HF_STATIC) and "tok_s" in m}
            if statics and "tok_s" in res.get("raygen", {}):
                best = max(statics, key=statics.get)
                results["vs_best_static"][dtype] = {"system": best, "tok_s": statics[best],
                                                    "ratio": res["raygen"]["tok_s"] / statics[best]}
            if args.prefix_requests <= 0:
                continue
            rng = random.Random(1)
            system = [rng.randrange(vocab) for _ in range(512)]
            pre = make_workload(args.prefix_requests, 2.0, seed=2, vocab=vocab, prompt=(8, 32), output=(16, 32),
                                prefix=system)
            results["prefix"][dtype] = {
                "cached": metrics(spawn("raygen", str(model), dtype, pre, args, tmp), pre),
                "uncached": metrics(spawn("raygen_nocache", str(model), dtype, pre, args, tmp), pre)}
    report(results, args.out)


def system_name(kind: str) -> str:
    fixed = {"hf_single": "transformers generate, one at a time (first requests only)",
             "hf_cb": "transformers continuous batching", "raygen": "raygen engine",
             "llamacpp": "llama.cpp's server, all at once over HTTP"}
    if kind.startswith("hf_static"):
        return f"transformers generate, static batch {kind.removeprefix('hf_static')}"
    if kind.startswith("hf_sc"):
        return f"transformers generate, static batch {kind.removeprefix('hf_sc')}, static cache"
    if kind.startswith("hf_compiled"):
        return f"transformers generate, static batch {kind.removeprefix('hf_compiled')}, static cache, torch.compile"
    return fixed.get(kind, kind)


def report(results: dict, out: Path = OUT) -> None:
    spec = results["model"]
    lines = [f"### Engine benchmark ({results['date']}, {results['requests']} requests, {results['threads']} threads; "
             f"{spec['preset']} on {results['device_name']})", ""]
    for dtype, res in results["all_at_once"].items():
        statics = [m["tok_s"] for k, m in res.items() if k.startswith(HF_STATIC) and "tok_s" in m]
        best = max(statics) if statics else None
        r = results["rates"][dtype]
        lines += [f"**{dtype}**: matmul {r['matmul_gflops']:.0f} GFLOP/s, copy {r['copy_gbps']:.1f} GB/s (measured "
                  "in this run)", ""]
        lines += fmt_table([(system_name(k), m) for k, m in res.items()], best)
        if dtype in results["poisson"]:
            p = results["poisson"][dtype]
            lines += fmt_table([(f"raygen, Poisson {p['rate']:.2f} req/s", p)], None)[2:]
        if "raygen" in res and "tok_s" in res["raygen"]:
            g = res["raygen"]
            model_mib = spec["params"] * torch.empty(0, dtype=DTYPES[dtype]).element_size() / 2**20
            over = g["peak_rss_mib"] - g["kv_mib"] - model_mib
            lines += ["", f"raygen: {results['roofline'][dtype]:.0%} of roofline (ideal {results['roofline_tok_s'][dtype]:.0f} "
                      f"tok/s); up to {g['max_running']} sequences running; {g['preemptions']} preemptions; peak RSS "
                      f"{g['peak_rss_mib']:.0f} MiB = KV pool {g['kv_mib']:.0f} + model {model_mib:.0f} + overhead "
                      f"{over:.0f} MiB (interpreter, torch, transformers, activations)"]
            if results["device"].startswith("cuda"):
                lines[-1] = lines[-1].split("; peak RSS")[0] + f"; KV pool {g['kv_mib']:.0f} MiB, model {model_mib:.0f} MiB"
            if dtype in results["decode_bw"]:
                b = results["decode_bw"][dtype]
                lines.append(f"decode steps ({b['steps']}): {b['gbps']:.1f} GB/s of weights + K/V read = "
                             f"{b['of_peak']:.1%} of the measured copy bandwidth")
            if best:
                lines.append(f"raygen / best static batch: **{g['tok_s'] / best:.2f}×**")
            if "tok_s" in res.get("llamacpp", {}):
                lines.append(f"raygen / llama.cpp's server: **{g['tok_s'] / res['llamacpp']['tok_s']:.2f}×**")
        if dtype in results["prefix"]:
            c, u = results["prefix"][dtype]["cached"], results["prefix"][dtype]["uncached"]
            lines.append(f"shared 512-token prefix: TTFT p50 {c['ttft_p50'] * 1e3:.0f} ms cached vs "
                         f"{u['ttft_p50'] * 1e3:.0f} ms uncached: **{c['ttft_p50'] / u['ttft_p50']:.2f}×**")
        lines.append("")
    text = "\n".join(lines)
    print("\n" + text)
    (out / "engine_bench.md").write_text(text + "\n")
    (out / "engine_bench.json").write_text(json.dumps(results, indent=1))
    try:
        plot(results, out / "engine_bench.png")
        print(f"plot: {out / 'engine_bench.png'}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


if __name__ == "__main__":
    main()
