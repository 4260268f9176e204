"""raygen against the servers a user would pick instead, on the same model and the same requests, in one run.

    python benchmarks/llamacpp.py build               # once, about 8 minutes on 2 cores
    python benchmarks/peer_bench.py --quick           # mixed workload, concurrency 1/8/64, fp32 (~15 min)
    python benchmarks/peer_bench.py                   # every workload, concurrency 1/8/32/64/128, Poisson rates
    python benchmarks/peer_bench.py --dtypes float32 bfloat16 --systems raygen llamacpp

Systems, each alone on the machine while it is measured, each warmed up with the same 4 requests:
  raygen     the whole serving graph over HTTP (Ray Serve: ingress, gateway, pre/post-processing, LLMServer
             on raygen's engine), one model replica, all cores for torch
  llamacpp   llama.cpp's OpenAI-compatible server (benchmarks/llamacpp.py), the same weights converted to
             GGUF (f32 for float32, bf16 for bfloat16), continuous batching with --parallel = the
             concurrency (the Poisson runs: the largest concurrency), threads = cores, a KV stream per slot
  batch      Ray Serve + `@serve.batch` tuned: max_batch_size 64, transformers `generate` with the static
             KV cache, batch_wait_timeout_s picked by a short sweep at concurrency 64 (the full run)
Models (random init, a BPE tokenizer trained on the demo corpus): GPT-2 6 layers x 512 (1k context) for the
mixed and shared-prefix workloads; a Llama shape with a 4k context (GQA) for the long-prompt workload.
Workloads (benchmarks/loadgen.py, seeded, token-id prompts, EOS ignored): mixed (32-256 in, 64-256 out),
long (1000-3000 in, 32-128 out), shared prefix (512 shared + 16-64 in, 32-96 out, Poisson).
Metrics: loadgen's (vLLM's definitions, ITL per token); goodput at TTFT <= 1 s and TPOT <= 100 ms.
Results: benchmarks/results/peers/ (JSON, Markdown with ratios raygen / peer, PNG of output tok/s against
p99 TTFT per system).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llamacpp  # noqa: E402
import loadgen  # noqa: E402

OUT = HERE / "results" / "peers"
GPT2 = dict(n_layer=6, n_embd=512, n_head=8, vocab_size=8192, n_positions=1024)
LLAMA4K = dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, num_key_value_heads=4,
               intermediate_size=1408, vocab_size=8192, max_position_embeddings=4096)
ENGINE = dict(kv_cache_mib=1536, max_num_seqs=128, max_num_batched_tokens=1024)
# name: model, prompt span, output span, shared prefix, closed-loop levels, Poisson rates (full run)
WORKLOADS = {
    "mixed": ("gpt2", (32, 256), (64, 256), 0, [1, 8, 32, 64, 128], [2.0, 4.0, 8.0]),
    "long": ("llama4k", (1000, 3000), (32, 128), 0, [1, 8], [0.25, 0.5]),
    "prefix": ("gpt2", (16, 64), (32, 96), 512, [8, 32], [2.0, 4.0, 8.0]),
}
QUICK = {"mixed": [1, 8, 64]}


def make_models(work: Path) -> dict[str, Path]:
    import pydoc_data.topics
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    from raygen.data.features import train_tokenizer

    none = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)
    out = {}
    for name, cfg in (("gpt2", GPT2Config(**GPT2, **none)),
                      ("llama4k", LlamaConfig(**LLAMA4K, tie_word_embeddings=False, **none))):
        path = work / name
        train_tokenizer(pydoc_data.topics.topics.values(), GPT2["vocab_size"], str(path))
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
        out[name] = path
    return out


def raygen_config(work: Path, name: str, dtype: str, overrides: list[str]):
    from raygen.config import load_config

    return load_config(None, [f"registry.root={work / 'models'}", f"registry.name={name}",
                              "serve.max_tokens_limit=4096", "serve.rate_limit.enabled=false",
                              f"serve.engine.dtype={dtype}", *[f"serve.engine.{k}={v}" for k, v in ENGINE.items()],
                              *overrides])


def _levels(wl: str, quick: bool, poisson: bool = True) -> tuple[list[int], list[float]]:
    spec = WORKLOADS[wl]
    return (QUICK.get(wl, spec[4][:1]), []) if quick else (spec[4], spec[5] if poisson else [])


def _requests(wl: str, n: int, seed: int) -> list[dict]:
    _, prompt, output, prefix, _, _ = WORKLOADS[wl]
    return loadgen.workload(n, GPT2["vocab_size"], seed, prompt, output, prefix)


def _n(level: int, quick: bool) -> int:
    return max(8 if quick else 16, 2 * level)


def sweep(system: str, url_for, wl: str, quick: bool, model: str, poisson: bool = True) -> dict:
    """One system through one workload's levels: url_for(parallel) is a context that yields a ready server
    (with .url), started for that many parallel requests where the server needs to know."""
    levels, rates = _levels(wl, quick, poisson)
    out = {}
    plan = [(f"c{c}", c, None) for c in levels] + [(f"poisson{r:g}", None, r) for r in rates]
    for k, (label, conc, rate) in enumerate(plan):
        with url_for(conc or max(levels)) as server:
            url = server.url
            loadgen.measure(url, _requests(wl, 4, seed=99)[:4], concurrency=4, model=model)  # warm-up
            t = time.perf_counter()
            s = loadgen.measure(url, _requests(wl, _n(conc or 16, quick) if conc else (24 if quick else 64),
                                               seed=100 + k), concurrency=conc, rate=rate, seed=7, model=model)
        out[label] = s
        print(f"  {system:18s} {wl:7s} {label:11s} {s['output_tok_s']:8.1f} tok/s  TTFT p50/p99 {s['ttft_p50_ms']}/"
              f"{s['ttft_p99_ms']} ms  TPOT p50 {s['tpot_p50_ms']} ms  ITL p99 {s['itl_p99_ms']} ms  "
              f"goodput {s['goodput_rps']}/s  errors {s['errors']}  ({time.perf_counter() - t:.0f} s)", flush=True)
    return out


def tune_batch_wait(model_dir: Path, url: str, wl: str, model: str, waits=(0.01, 0.05, 0.2)) -> float:
    """The @serve.batch peer's batch_wait_timeout_s with the best output tok/s at concurrency 64."""
    from ray import serve
    from serve_bench import peer_apps

    best = (0.0, waits[0])
    for w in waits:
        serve.run(peer_apps(str(model_dir), 64, w, static=True)["batch"], name="bench", route_prefix="/")
        loadgen.measure(url, _requests(wl, 4, seed=99), concurrency=4, model=model)
        s = loadgen.measure(url, _requests(wl, 64, seed=98), concurrency=64, model=model)
        print(f"  batch wait {w:g} s: {s['output_tok_s']} tok/s at concurrency 64", flush=True)
        best = max(best, (s["output_tok_s"], w))
        serve.delete("bench")
    return best[1]


class _Fixed:
    """A context yielding an already running server's URL (Serve apps serve every level)."""

    def __init__(self, url: str):
        self.url = url

    def __call__(self, _parallel: int):
        return self

    def __enter__(self) -> _Fixed:
        return self

    def __exit__(self, *exc) -> None:
        pass


def bench(args) -> dict:
    import ray
    from ray import serve

    from raygen.registry import Registry
    from raygen.serve.app import build_graph
    from serve_bench import _start_serve, free_port, peer_apps

    work = Path(tempfile.mkdtemp(prefix="raygen-peer-bench-"))
    models = make_models(work)
    for name, path in models.items():
        Registry(work / "models").register(name, path, None, {"source": "peer_bench random init"})
    workloads = list(QUICK) if args.quick else args.workloads
    res: dict = {"machine": f"{os.cpu_count()} CPUs ({_cpu()})", "date": time.strftime("%Y-%m-%d"),
                 "models": {"gpt2": GPT2, "llama4k": LLAMA4K}, "engine": ENGINE, "slo": loadgen.SLO,
                 "llamacpp": llamacpp.VERSION, "runs": {}}
    if "llamacpp" in args.systems:
        llamacpp.build()
    for dtype in args.dtypes:
        gguf_type = "f32" if dtype == "float32" else "bf16"
        for wl in workloads:
            model = WORKLOADS[wl][0]
            ctx = WORKLOADS[wl][1][1] + WORKLOADS[wl][2][1] + WORKLOADS[wl][3] + 16
            print(f"{dtype} {wl} on {model}", flush=True)
            runs = res["runs"].setdefault(dtype, {}).setdefault(wl, {})
            if "llamacpp" in args.systems:
                gguf = llamacpp.convert(models[model], work / f"{model}-{gguf_type}.gguf", gguf_type)

                def server(parallel, gguf=gguf, ctx=ctx):
                    return llamacpp.Server(gguf, free_port(), parallel, ctx, log=work / "llama-server.log")

                runs["llamacpp"] = sweep("llamacpp", server, wl, args.quick, model, not args.no_poisson)
            serve_systems = [s for s in args.systems if s in ("raygen", "batch")]
            if not serve_systems:
                continue
            url = _start_serve()
            try:
                for system in serve_systems:
                    if system == "raygen":
                        app = build_graph(raygen_config(work, model, dtype, args.set))
                    else:
                        if args.batch_wait is None:
                            args.batch_wait = tune_batch_wait(models[model], url, wl, model)
                            res["batch_wait_timeout_s"] = args.batch_wait
                        app = peer_apps(str(models[model]), 64, args.batch_wait, static=True)["batch"]
                    serve.run(app, name="bench", route_prefix="/")
                    runs[system] = sweep(system, _Fixed(url), wl, args.quick, model, not args.no_poisson)
                    serve.delete("bench")
            finally:
                serve.shutdown()
                ray.shutdown()
    return res


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def report(res: dict) -> str:
    lines = [f"Peers — {res['date']}, {res['machine']}; llama.cpp from llama-cpp-python {res['llamacpp']}; SLO "
             f"TTFT <= {res['slo']['ttft_s']} s, TPOT <= {res['slo']['tpot_s'] * 1000:.0f} ms", "",
             "| dtype | workload | load | system | out tok/s | req/s | goodput/s | TTFT p50/p95/p99 ms | "
             "TPOT p50/p95/p99 ms | ITL p50/p95/p99 ms (per token) | ITL > 100 ms | errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for dtype, wls in res["runs"].items():
        for wl, systems in wls.items():
            loads = list(next(iter(systems.values())))
            for load in loads:
                for name, scs in systems.items():
                    s = scs.get(load)
                    if not s:
                        continue
                    lines.append(
                        f"| {dtype} | {wl} | {load} | {name} | {s['output_tok_s']} | {s['request_s']} | "
                        f"{s['goodput_rps']} | {s['ttft_p50_ms']} / {s['ttft_p95_ms']} / {s['ttft_p99_ms']} | "
                        f"{s['tpot_p50_ms']} / {s['tpot_p95_ms']} / {s['tpot_p99_ms']} | {s['itl_p50_ms']} / "
                        f"{s['itl_p95_ms']} / {s['itl_p99_ms']} | {s['itl_over_100ms']} | {s['errors']} |")
                r = systems.get("raygen", {}).get(load)
                for peer, scs in systems.items():
                    p = scs.get(load)
                    if peer != "raygen" and r and p and p["output_tok_s"]:
                        g = (f"{r['goodput_rps'] / p['goodput_rps']:.2f}x" if p["goodput_rps"]
                             else ("n/a" if not r["goodput_rps"] else "inf"))
                        ratios.append(f"- {dtype} {wl} {load}: raygen / {peer}: output tok/s "
                                      f"**{r['output_tok_s'] / p['output_tok_s']:.2f}x**, goodput {g}")
    return "\n".join(lines + ["", "Ratios:", "", *ratios])


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, wl) for d, wls in res["runs"].items() for wl in wls]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (dtype, wl) in zip(axes[0], panels, strict=True):
        for name, scs in res["runs"][dtype][wl].items():
            pts = sorted((s["output_tok_s"], s["ttft_p99_ms"]) for s in scs.values() if s["ttft_p99_ms"])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=name)
        ax.set_title(f"{wl}, {dtype}: throughput vs p99 TTFT")
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel("p99 TTFT, ms")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the mixed workload at concurrency 1, 8 and 64 only")
    ap.add_argument("--systems", nargs="+", default=["raygen", "llamacpp", "batch"])
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="raygen config overrides, e.g. serve.torch_threads=1 serve.engine.stream_interval_ms=0")
    ap.add_argument("--batch-wait", type=float, help="the @serve.batch peer's batch_wait_timeout_s (default: "
                    "the best of 0.01/0.05/0.2 s at concurrency 64; --quick: 0.05)")
    ap.add_argument("--no-poisson", action="store_true", help="closed-loop concurrency levels only")
    ap.add_argument("--stem", help="the results' file name (default peers, or peers_quick with --quick)")
    args = ap.parse_args()
    if args.quick and args.batch_wait is None:
        args.batch_wait = 0.05
    res = bench(args)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("peers_quick" if args.quick else "peers")
    text = report(res)
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (OUT / f"{stem}.md").write_text(text + "\n")
    plot(res, OUT / f"{stem}.png")
    print("\n" + text + f"\n\nwritten: {OUT}/{stem}.{{json,md,png}}")


if __name__ == "__main__":
    main()
