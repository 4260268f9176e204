"""raygen and llama.cpp's server measured by a standard tool, unchanged: guidellm (vLLM's project, PyPI).

    python benchmarks/llamacpp.py build          # once
    python benchmarks/guidellm_bench.py          # concurrency 1, 8 and 64; about 8 minutes on 2 cores

guidellm lives in its own virtual environment ($RAYGEN_CACHE/bench/guidellm-venv, made on first use with
`pip install guidellm==VERSION`): its pins are not raygen's. Each server gets the same command line:
`guidellm run --backend kind=openai_http,target=URL,model=NAME,request_format=/v1/completions
--profile kind=concurrent,streams=C --data kind=synthetic_text,prompt_tokens=128,output_tokens=128
--tokenizer kind=huggingface_auto,model=MODEL_DIR --constraint kind=max_requests,count=N --output
kind=json,path=...`. guidellm sends text prompts (made with the model's own tokenizer), `ignore_eos`,
`stop: null` and vLLM's `stream_options.continuous_usage_stats`, so this also checks that raygen takes a
standard client's requests as they come. Model: peer_bench's GPT-2 6x512 (random init, the demo corpus's
BPE tokenizer), fp32; raygen is the whole serving graph over HTTP, llama.cpp has a slot per stream.
Results: benchmarks/results/peers/guidellm.{json,md,png} (the PNG: output tok/s against p99 TTFT); guidellm's own reports (every request, ~1 MB each) stay in
the run's temp directory, printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import llamacpp  # noqa: E402
import peer_bench  # noqa: E402

VERSION = "0.8.1"
VENV = llamacpp.CACHE / "guidellm-venv"
OUT = HERE / "results" / "peers"
LEVELS = {1: 8, 8: 32, 64: 128}  # concurrency: requests


def guidellm() -> Path:
    exe = VENV / "bin" / "guidellm"
    if not exe.exists():
        print(f"installing guidellm {VERSION} into {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", f"guidellm=={VERSION}"], check=True)
    return exe


def run_guidellm(url: str, model: str, tokenizer: Path, streams: int, n: int, out: Path) -> dict:
    cmd = [str(guidellm()), "run",
           "--backend", f"kind=openai_http,target={url},model={model},request_format=/v1/completions",
           "--profile", f"kind=concurrent,streams={streams}",
           "--data", "kind=synthetic_text,prompt_tokens=128,output_tokens=128",
           "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
           "--constraint", f"kind=max_requests,count={n}",
           "--output", f"kind=json,path={out}", "--disable-console-interactive"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if p.returncode or not out.exists():
        raise RuntimeError(f"guidellm failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    b = json.loads(out.read_text())["benchmarks"][0]
    m = b["metrics"]

    def stat(name: str, q: str) -> float:
        s = m[name]["successful"]
        return round(s["median"] if q == "p50" else s["percentiles"][q], 1)

    totals = m["request_totals"]
    return {"requests": totals["total"], "errored": totals["errored"], "incomplete": totals["incomplete"],
            "output_tok_s": round(m["output_token_count"]["successful"]["total_sum"] / b["duration"], 1),
            "ttft_p50_ms": stat("time_to_first_token_ms", "p50"), "ttft_p99_ms": stat("time_to_first_token_ms", "p99"),
            "tpot_p50_ms": stat("time_per_output_token_ms", "p50"), "itl_p50_ms": stat("inter_token_latency_ms", "p50"),
            "itl_p99_ms": stat("inter_token_latency_ms", "p99")}


def bench(systems: list[str]) -> dict:
    import ray
    from ray import serve

    from raygen.registry import Registry
    from raygen.serve.app import build_graph
    from serve_bench import _start_serve, free_port

    work = Path(tempfile.mkdtemp(prefix="raygen-guidellm-"))
    model_dir = peer_bench.make_models(work)["gpt2"]
    res = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} CPUs", "guidellm": VERSION,
           "llamacpp": llamacpp.VERSION, "model": peer_bench.GPT2, "work": str(work), "runs": {}}
    for system in systems:
        runs = res["runs"][system] = {}
        if system == "llamacpp":
            gguf = llamacpp.convert(model_dir, work / "gpt2-f32.gguf", "f32")
            for c, n in LEVELS.items():
                with llamacpp.Server(gguf, free_port(), c, 512, log=work / "llama-server.log") as srv:
                    runs[f"c{c}"] = run_guidellm(srv.url, "gpt2", model_dir, c, n, work / f"guidellm_{system}_c{c}.json")
                print(f"  {system} c{c}: {runs[f'c{c}']}", flush=True)
        else:
            Registry(work / "models").register("gpt2", model_dir, None, {"source": "guidellm_bench random init"})
            url = _start_serve()
            try:
                serve.run(build_graph(peer_bench.raygen_config(work, "gpt2", "float32", [])), name="bench",
                          route_prefix="/")
                for c, n in LEVELS.items():
                    runs[f"c{c}"] = run_guidellm(url, "gpt2", model_dir, c, n, work / f"guidellm_{system}_c{c}.json")
                    print(f"  {system} c{c}: {runs[f'c{c}']}", flush=True)
            finally:
                serve.shutdown()
                ray.shutdown()
    return res


def report(res: dict) -> str:
    lines = [f"guidellm {res['guidellm']} against each server, unchanged — {res['date']}, {res['machine']}; "
             "prompts 128 tokens, outputs 128, text completions, streaming", "",
             "| load | system | out tok/s | TTFT p50/p99 ms | TPOT p50 ms | ITL p50/p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    levels = sorted({k for runs in res["runs"].values() for k in runs}, key=lambda k: int(k[1:]))
    for level in levels:
        for system, runs in res["runs"].items():
            r = runs.get(level)
            if r:
                lines.append(f"| {level} | {system} | {r['output_tok_s']} | {r['ttft_p50_ms']} / {r['ttft_p99_ms']} | "
                             f"{r['tpot_p50_ms']} | {r['itl_p50_ms']} / {r['itl_p99_ms']} | {r['errored'] + r['incomplete']} |")
    if {"raygen", "llamacpp"} <= set(res["runs"]):
        lines += ["", "raygen / llama.cpp, output tok/s as guidellm counts it: " + ", ".join(
            f"{lv} **{res['runs']['raygen'][lv]['output_tok_s'] / res['runs']['llamacpp'][lv]['output_tok_s']:.2f}x**"
            for lv in levels if lv in res["runs"]["raygen"] and lv in res["runs"]["llamacpp"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--systems", nargs="+", default=["llamacpp", "raygen"], choices=["llamacpp", "raygen"])
    ap.add_argument("--replot", action="store_true", help="only redraw the PNG and table from guidellm.json")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.replot:
        res = json.loads((OUT / "guidellm.json").read_text())
    else:
        if "llamacpp" in args.systems:
            llamacpp.build()
        res = bench(args.systems)
        (OUT / "guidellm.json").write_text(json.dumps(res, indent=1))
        print(f"guidellm's reports: {res['work']}")
    text = report(res)
    (OUT / "guidellm.md").write_text(text)
    # peer_bench's plot: output tok/s against p99 TTFT, a line per system through its concurrency levels.
    peer_bench.plot({"runs": {"float32": {"guidellm": res["runs"]}}}, OUT / "guidellm.png")
    print("\n" + text + f"\nplot: {OUT / 'guidellm.png'}")


if __name__ == "__main__":
    main()
