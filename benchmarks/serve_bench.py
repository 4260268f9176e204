"""raygen's serving graph against the usual Ray Serve + transformers patterns, over HTTP, in one run.

    python benchmarks/serve_bench.py            # the full table (about 20 minutes on 2 cores)
    python benchmarks/serve_bench.py --quick    # a smoke run
    python benchmarks/serve_bench.py --observability   # raygen with tracing/metrics/access logs on vs off

Model: GPT-2 architecture, 6 layers, hidden 512, 8 heads, vocab 8192, random init, with a BPE tokenizer
trained on the demo corpus; registered in a temporary registry. Systems, each deployed alone on one local
Ray cluster, one model replica each, all cores for torch:
  raygen      the full graph (ingress, gateway, pre/post-processing, LLMServer on raygen's engine)
  generate    Ray Serve + transformers `generate` per request (one at a time: concurrent generates on
              two cores only thrash), tokens streamed as they come
  batch       Ray Serve + `@serve.batch` (max 16, 50 ms wait) + `generate` on the left-padded batch, the
              pattern in Ray's docs; each request's tokens streamed as its batch produces them
All three speak the OpenAI completions SSE format; prompts are token-id lists, EOS off, so every system
does exactly the same work.

Load comes from a separate process (aiohttp): closed loop at concurrency 1, 8, 32, 64, then a Poisson
rate sweep. Metrics (vLLM's definitions): TTFT, TPOT = (last - first token) / (tokens - 1), ITL = gaps
between streamed chunks, E2E; p50/p99; output tokens/s; goodput = requests/s meeting the SLO
(TTFT <= 2 s and TPOT <= 100 ms, a CPU-sized SLO). Also: the engine alone (no Ray, same process as its
client) at concurrency 1, to isolate the graph's TTFT overhead; and response-cache hits (the same
deterministic request again). No `from __future__ import annotations` here: FastAPI must see the peers'
real `Request` annotations. Results go to benchmarks/results/serve/ (JSON, Markdown, PNG).
"""

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "serve"
MODEL = dict(n_layer=6, n_embd=512, n_head=8, vocab_size=8192, n_positions=1024)
SLO_TTFT_S, SLO_TPOT_S = 2.0, 0.100
ENGINE = dict(dtype="float32", kv_cache_mib=768, max_num_seqs=128, max_num_batched_tokens=1024)


# -- model, workload ----------------------------------------------------------------------------------
def make_model(path: Path) -> None:
    import pydoc_data.topics

    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from raygen.data.features import train_tokenizer

    train_tokenizer(pydoc_data.topics.topics.values(), MODEL["vocab_size"], str(path))
    torch.manual_seed(0)
    cfg = GPT2Config(**MODEL, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)


def make_requests(n: int, seed: int, prompt=(32, 128), output=(32, 128)) -> list[dict]:
    rng = random.Random(seed)  # token ids from 2 up: 0 and 1 are the tokenizer's special tokens
    return [{"prompt": [rng.randrange(2, MODEL["vocab_size"]) for _ in range(rng.randint(*prompt))],
             "max_tokens": rng.randint(*output)} for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the load generator (its own process) --------------------------------------------------------------
async def _one(session, url: str, req: dict, headers: dict) -> dict:
    body = {"model": "bench", "prompt": req["prompt"], "max_tokens": req["max_tokens"], "temperature": 0,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    chunks, tokens, error = [], None, None
    async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
        if r.status != 200:
            error = f"HTTP {r.status}: {(await r.text())[:200]}"
        else:
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                msg = json.loads(line[6:])
                if msg.get("usage"):
                    tokens = msg["usage"]["completion_tokens"]
                if any(c.get("text") for c in msg.get("choices", [])):
                    chunks.append(time.perf_counter() - t0)
    return {"chunks": chunks, "tokens": tokens, "error": error, "start": t0}


async def _load(url: str, reqs: list[dict], concurrency: int | None, rate: float | None, seed: int) -> dict:
    import aiohttp

    headers = {"Cache-Control": "no-cache"}  # measure generation, not the response cache
    results: list[dict] = [{} for _ in reqs]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()
        if concurrency:
            todo = iter(range(len(reqs)))

            async def worker():
                for i in todo:
                    results[i] = await _one(session, url, reqs[i], headers)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng, tasks, t = random.Random(seed), [], 0.0
            for req in reqs:
                await asyncio.sleep(max(0.0, t0 + t - time.perf_counter()))
                tasks.append(asyncio.create_task(_one(session, url, req, headers)))
                t += rng.expovariate(rate)

            for i, res in enumerate(await asyncio.gather(*tasks)):
                results[i] = res
        wall = time.perf_counter() - t0
    return {"wall": wall, "results": results}


async def _cache_hits(url: str, req: dict, n: int) -> dict:
    """The same deterministic request n+1 times (the first fills the cache); latency of the hits."""
    import aiohttp

    body = {"model": "bench", "prompt": req["prompt"], "max_tokens": req["max_tokens"], "temperature": 0,
            "ignore_eos": True}
    lat, bodies = [], set()
    async with aiohttp.ClientSession() as session:
        for i in range(n + 1):
            t0 = time.perf_counter()
            async with session.post(url + "/v1/completions", json=body) as r:
                got = await r.json()
                bodies.add(json.dumps({**got, "id": "", "created": 0}, sort_keys=True))
                if i:
                    lat.append(time.perf_counter() - t0)
                    assert r.headers.get("x-raygen-cache") == "hit", dict(r.headers)
        floor = []  # the same round trip to a route that does nothing: Serve's proxy + ingress, here
        for _ in range(n):
            t0 = time.perf_counter()
            async with session.get(url + "/health") as r:
                await r.read()
            floor.append(time.perf_counter() - t0)
    return {"latency": lat, "identical": len(bodies) == 1, "floor": floor}


def client_main(spec: str) -> None:
    s = json.loads(spec)
    if s["kind"] == "cache":
        out = asyncio.run(_cache_hits(s["url"], s["reqs"][0], s["n"]))
    else:
        out = asyncio.run(_load(s["url"], s["reqs"], s.get("concurrency"), s.get("rate"), s.get("seed", 0)))
    print(json.dumps(out))


def run_client(spec: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, "--client", json.dumps(spec)], capture_output=True, text=True,
                       timeout=7200)
    if p.returncode:
        raise RuntimeError(f"load client failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


# -- metrics ---------------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def summarize(run: dict, reqs: list[dict]) -> dict:
    ok = [(r, q) for r, q in zip(run["results"], reqs, strict=True) if not r.get("error") and r.get("chunks")]
    errors = [r["error"] for r in run["results"] if r.get("error")]
    ttft = [r["chunks"][0] for r, _ in ok]
    e2e = [r["chunks"][-1] for r, _ in ok]
    ntok = [r["tokens"] or q["max_tokens"] for r, q in ok]
    tpot = [(r["chunks"][-1] - r["chunks"][0]) / (n - 1) for (r, _), n in zip(ok, ntok, strict=True) if n > 1]
    itl = [b - a for r, _ in ok for a, b in zip(r["chunks"], r["chunks"][1:], strict=False)]
    good = sum(1 for (r, _), n in zip(ok, ntok, strict=True)
               if r["chunks"][0] <= SLO_TTFT_S and (n < 2 or (r["chunks"][-1] - r["chunks"][0]) / (n - 1) <= SLO_TPOT_S))
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {"requests": len(reqs), "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": round(run["wall"], 2), "output_tok_s": round(sum(ntok) / run["wall"], 1),
            "goodput_rps": round(good / run["wall"], 3),
            **{f"{name}_p{q}_ms": ms(pct(xs, q)) for name, xs in
               (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)) for q in (50, 99)}}


# -- the systems under test ------------------------------------------------------------------------------
def peer_apps(model_dir: str, max_batch_size: int = 16, batch_wait_timeout_s: float = 0.05, static: bool = False):
    """The two peers as Serve applications (defined here: they are the baseline, not raygen code).
    `max_batch_size`/`batch_wait_timeout_s`: the `@serve.batch` peer's settings; `static`: generate with
    transformers' static KV cache (`cache_implementation="static"`), as a tuned deployment would."""
    from fastapi import FastAPI, Request
    from fastapi.responses import StreamingResponse
    from ray import serve

    api = FastAPI()

    def load(threads: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)

    def sse(rows, text_of, n_prompt_of):
        async def gen():
            n = 0
            async for token in rows:
                n += 1
                yield "data: " + json.dumps({"choices": [{"index": 0, "text": text_of(token)}]}) + "\n\n"
            usage = {"prompt_tokens": n_prompt_of, "completion_tokens": n, "total_tokens": n_prompt_of + n}
            yield "data: " + json.dumps({"choices": [], "usage": usage}) + "\n\n" + "data: [DONE]\n\n"
        return StreamingResponse(gen(), media_type="text/event-stream")

    class Streamer:
        """transformers streamer that hands each step's token ids (one per row) to the event loop."""

        def __init__(self, loop, queue):
            self.loop, self.queue, self.first = loop, queue, True

        def put(self, value):
            if self.first:  # generate() first passes the prompt
                self.first = False
                return
            self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())

        def end(self):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    def run_generate(model, rows: list[list[int]], new: int, streamer) -> None:
        import torch

        width = max(map(len, rows))
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, p in enumerate(rows):  # left padding
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        extra = {"cache_implementation": "static"} if static else {}
        with torch.inference_mode():
            model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                           pad_token_id=0, streamer=streamer, **extra)

    @serve.deployment(max_ongoing_requests=1024)
    @serve.ingress(api)
    class GeneratePerRequest:
        def __init__(self):
            self.model, self.tok = load(os.cpu_count() or 1)
            self.lock = asyncio.Lock()

        @api.post("/v1/completions")
        async def completions(self, request: Request):
            body = await request.json()
            prompt, new = body["prompt"], body["max_tokens"]

            async def tokens():
                async with self.lock:
                    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
                    job = loop.run_in_executor(None, run_generate, self.model, [prompt], new, Streamer(loop, queue))
                    while (step := await queue.get()) is not None:
                        yield step[0]
                    await job

            return sse(tokens(), lambda t: self.tok.decode([t]), len(prompt))

    @serve.deployment(max_ongoing_requests=1024)
    @serve.ingress(api)
    class ServeBatch:
        def __init__(self):
            self.model, self.tok = load(os.cpu_count() or 1)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def generate(self, reqs: list[tuple[list[int], int]]):
            loop, queue = asyncio.get_running_loop(), asyncio.Queue()
            new = max(n for _, n in reqs)
            job = loop.run_in_executor(None, run_generate, self.model, [p for p, _ in reqs], new,
                                       Streamer(loop, queue))
            step = 0
            while (row := await queue.get()) is not None:
                step += 1  # a request whose max_tokens is reached stops streaming; its row still runs
                yield [t if step <= n else StopIteration for t, (_, n) in zip(row, reqs, strict=True)]
            await job

        @api.post("/v1/completions")
        async def completions(self, request: Request):
            body = await request.json()
            return sse(self.generate((body["prompt"], body["max_tokens"])),
                       lambda t: self.tok.decode([t]), len(body["prompt"]))

    return {"generate": GeneratePerRequest.bind(), "batch": ServeBatch.bind()}


def engine_alone(model_dir: str, reqs: list[dict]) -> dict:
    """TTFT of raygen's engine with its client in the same process, one request at a time (a subprocess)."""
    code = f"""
import asyncio, json, time
from raygen.engine.engine import AsyncLLMEngine, EngineConfig
from raygen.engine.request import SamplingParams
e = {ENGINE!r}
eng = AsyncLLMEngine.from_config(EngineConfig({model_dir!r}, dtype=e["dtype"], device="cpu",
    kv_cache_mib=e["kv_cache_mib"], max_num_seqs=e["max_num_seqs"],
    max_num_batched_tokens=e["max_num_batched_tokens"]))
reqs = json.loads({json.dumps(reqs)!r})
async def main():
    out = []
    for r in [reqs[0]] + reqs:  # the first is a warm-up
        t0 = time.perf_counter(); first = None
        async for o in eng.add_request(r["prompt"], SamplingParams(max_tokens=r["max_tokens"], temperature=0,
                                                                  ignore_eos=True)):
            first = first or time.perf_counter() - t0
        out.append(first)
    return out[1:]
print(json.dumps(asyncio.run(main()))); eng.shutdown()
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    ttft = json.loads(p.stdout.strip().splitlines()[-1])
    return {"requests": len(ttft), "ttft_p50_ms": round(pct(ttft, 50) * 1000, 1)}


# -- main --------------------------------------------------------------------------------------------------
def scenarios(quick: bool) -> list[dict]:
    levels = [1, 8] if quick else [1, 8, 32, 64]
    rates = [2.0] if quick else [1.0, 2.0, 4.0, 8.0]
    out = [{"name": f"c{c}", "concurrency": c, "n": 4 if quick else max(16, 2 * c)} for c in levels]
    return out + [{"name": f"poisson{r:g}", "rate": r, "n": 8 if quick else 48} for r in rates]


def _model_and_config(work: Path):
    """The benchmark model registered in a temporary registry, and raygen's config for it."""
    from raygen.config import load_config
    from raygen.registry import Registry

    model_dir = work / "model"
    make_model(model_dir)
    Registry(work / "models").register("bench", model_dir, None, {"source": "serve_bench random init"})
    cfg = load_config(None, [f"registry.root={work / 'models'}", "registry.name=bench", "serve.max_tokens_limit=512",
                             "serve.rate_limit.enabled=false", f"serve.engine.dtype={ENGINE['dtype']}",
                             f"serve.engine.kv_cache_mib={ENGINE['kv_cache_mib']}",
                             f"serve.engine.max_num_seqs={ENGINE['max_num_seqs']}",
                             f"serve.engine.max_num_batched_tokens={ENGINE['max_num_batched_tokens']}"])
    return model_dir, cfg


def _start_serve() -> str:
    import ray
    from ray import serve

    from raygen.cluster import serve_env

    os.environ.update(serve_env())  # what raygen's own CLI starts a local Ray with
    port = free_port()
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def _scenario(name: str, url: str, sc: dict, k: int) -> dict:
    reqs = make_requests(sc["n"], seed=100 + k)  # the same requests for every system
    t = time.perf_counter()
    run = run_client({"kind": "load", "url": url, "reqs": reqs, "concurrency": sc.get("concurrency"),
                      "rate": sc.get("rate"), "seed": 7})
    s = summarize(run, reqs)
    print(f"{name:10s} {sc['name']:10s} {s['output_tok_s']:8.1f} tok/s  TTFT p50 {s['ttft_p50_ms']} ms  "
          f"TPOT p50 {s['tpot_p50_ms']} ms  errors {s['errors']}  ({time.perf_counter() - t:.0f} s)", flush=True)
    return s


def _warm(url: str) -> None:
    run_client({"kind": "load", "url": url, "reqs": make_requests(2, seed=99, output=(4, 4)), "concurrency": 1})


def bench(args) -> dict:
    import ray
    from ray import serve

    from raygen.serve.app import build_graph

    work = Path(tempfile.mkdtemp(prefix="raygen-serve-bench-"))
    model_dir, cfg = _model_and_config(work)
    results: dict = {"machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"), "model": MODEL,
                     "engine": ENGINE, "slo": {"ttft_s": SLO_TTFT_S, "tpot_s": SLO_TPOT_S}, "systems": {}}
    plan = scenarios(args.quick)
    print(f"engine alone, concurrency 1 ({plan[0]['n']} requests)", flush=True)
    results["engine_alone_c1"] = engine_alone(str(model_dir), make_requests(plan[0]["n"], seed=1))
    url = _start_serve()
    systems = {"raygen": lambda: build_graph(cfg)}
    peers = peer_apps(str(model_dir))
    systems.update({name: (lambda a=a: a) for name, a in peers.items()})
    try:
        for name in args.systems:
            serve.run(systems[name](), name="bench", route_prefix="/")
            _warm(url)
            results["systems"][name] = {sc["name"]: _scenario(name, url, sc, k) for k, sc in enumerate(plan)}
            if name == "raygen":
                hits = run_client({"kind": "cache", "url": url, "reqs": make_requests(1, seed=5), "n": 50})
                results["cache_hit"] = {"n": len(hits["latency"]), "identical_bodies": hits["identical"],
                                        "p50_ms": round(pct(hits["latency"], 50) * 1000, 2),
                                        "p99_ms": round(pct(hits["latency"], 99) * 1000, 2),
                                        "health_p50_ms": round(pct(hits["floor"], 50) * 1000, 2)}
                print(f"cache hits: {results['cache_hit']}", flush=True)
            serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


# -- observability overhead (issue 7) -------------------------------------------------------------------
class _OtlpSink:
    """An OTLP/HTTP traces endpoint in this process (aiohttp, a thread) that accepts and counts exports, so
    "on" pays for real span export over HTTP."""

    def __init__(self):
        import threading

        from aiohttp import web

        self.port, self.posts, self.bytes = free_port(), 0, 0
        self._loop = asyncio.new_event_loop()

        async def traces(request):
            self.bytes += len(await request.read())
            self.posts += 1
            return web.Response(status=200, content_type="application/x-protobuf", body=b"")

        def run():
            asyncio.set_event_loop(self._loop)
            app = web.Application(client_max_size=64 * 2**20)
            app.router.add_post("/v1/traces", traces)
            self._runner = web.AppRunner(app)
            self._loop.run_until_complete(self._runner.setup())
            self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)


def bench_observability(args) -> dict:
    """raygen with tracing (exported), metrics and access logs on vs all off: same requests, alternating
    order over --rounds rounds; medians compared."""
    import statistics

    import ray
    from ray import serve

    from raygen.serve.app import build_graph

    try:
        import opentelemetry.exporter.otlp.proto.http  # noqa: F401

        exporter = "otlp"
    except ImportError:
        exporter = "console"
    sink = _OtlpSink() if exporter == "otlp" else None
    work = Path(tempfile.mkdtemp(prefix="raygen-serve-obs-"))
    _, cfg = _model_and_config(work)
    on = cfg.model_copy(deep=True)
    on.observability.tracing, on.observability.otlp_endpoint = exporter, sink.url if sink else None
    off = cfg.model_copy(deep=True)
    o = off.observability
    o.tracing, o.metrics, o.access_log, o.json_logs = "off", False, False, False
    plan = [sc for sc in scenarios(args.quick) if sc["name"] in ("c1", "c8" if args.quick else "c32")]
    runs: dict = {"on": {sc["name"]: [] for sc in plan}, "off": {sc["name"]: [] for sc in plan}}
    url = _start_serve()
    try:
        for rnd in range(args.rounds):
            for name in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
                serve.run(build_graph(on if name == "on" else off), name="bench", route_prefix="/")
                _warm(url)
                for k, sc in enumerate(plan):
                    runs[name][sc["name"]].append(_scenario(f"obs-{name}", url, sc, k))
                serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
        if sink:
            sink.close()
    med = {name: {sc: {m: statistics.median(r[m] for r in rs) for m in ("output_tok_s", "ttft_p50_ms")}
                  for sc, rs in scs.items()} for name, scs in runs.items()}
    return {"machine": f"{os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"), "model": MODEL, "engine": ENGINE,
            "exporter": exporter, "rounds": args.rounds, "runs": runs, "median": med,
            "spans_exported": {"posts": sink.posts, "bytes": sink.bytes} if sink else None}


def report_observability(res: dict) -> str:
    lines = [f"Observability overhead — {res['date']}, {res['machine']}; on = tracing exported ({res['exporter']}"
             f"{', to a local OTLP/HTTP sink' if res['exporter'] == 'otlp' else ''}) + metrics + JSON access logs, "
             f"off = none of them; median of {res['rounds']} rounds (alternating order)", "",
             "| scenario | out tok/s on | out tok/s off | on / off | TTFT p50 ms on | TTFT p50 ms off |",
             "|---|---|---|---|---|---|"]
    for sc, on in res["median"]["on"].items():
        off = res["median"]["off"][sc]
        lines.append(f"| {sc} | {on['output_tok_s']:.1f} | {off['output_tok_s']:.1f} | "
                     f"**{on['output_tok_s'] / off['output_tok_s']:.3f}×** | {on['ttft_p50_ms']:.1f} | "
                     f"{off['ttft_p50_ms']:.1f} |")
    if res.get("spans_exported"):
        e = res["spans_exported"]
        lines.append(f"\nOTLP exports received by the sink: {e['posts']} POSTs, {e['bytes'] / 1e6:.2f} MB")
    lines.append("Target: throughput cost <= 5% (on / off >= 0.95x).")
    return "\n".join(lines)


def report(res: dict) -> str:
    sysnames = list(res["systems"])
    scen = list(next(iter(res["systems"].values())))
    lines = [f"Serving benchmark — {res['date']}, {res['machine']}, model {res['model']}, engine {res['engine']}",
             "", "| scenario | system | out tok/s | TTFT p50/p99 ms | TPOT p50/p99 ms | ITL p50/p99 ms | "
                 "E2E p50/p99 ms | goodput req/s | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for sc in scen:
        for name in sysnames:
            s = res["systems"][name][sc]
            lines.append(f"| {sc} | {name} | {s['output_tok_s']} | {s['ttft_p50_ms']} / {s['ttft_p99_ms']} | "
                         f"{s['tpot_p50_ms']} / {s['tpot_p99_ms']} | {s['itl_p50_ms']} / {s['itl_p99_ms']} | "
                         f"{s['e2e_p50_ms']} / {s['e2e_p99_ms']} | {s['goodput_rps']} | {s['errors']} |")
    lines += ["", "Ratios (raygen / peer, output tokens/s):", ""]
    for sc in scen:
        r = res["systems"].get("raygen", {}).get(sc)
        parts = [f"{p}: {r['output_tok_s'] / res['systems'][p][sc]['output_tok_s']:.2f}x"
                 for p in sysnames if p != "raygen" and r and res["systems"][p][sc]["output_tok_s"]]
        if parts:
            lines.append(f"- {sc}: " + ", ".join(parts))
    if "raygen" in res["systems"]:
        c1 = res["systems"]["raygen"][scen[0]]["ttft_p50_ms"]
        eng = res["engine_alone_c1"]["ttft_p50_ms"]
        lines += ["", f"TTFT p50 at concurrency 1: raygen over HTTP {c1} ms, engine alone {eng} ms "
                      f"(overhead {c1 - eng:+.1f} ms)"]
    if "cache_hit" in res:
        ch = res["cache_hit"]
        lines.append(f"Response-cache hits: p50 {ch['p50_ms']} ms, p99 {ch['p99_ms']} ms over {ch['n']} "
                     f"(bodies identical: {ch['identical_bodies']}); GET /health (Serve's proxy + ingress, no "
                     f"work) p50 {ch.get('health_p50_ms')} ms")
    lines.append(f"SLO for goodput: TTFT <= {SLO_TTFT_S} s and TPOT <= {SLO_TPOT_S * 1000:.0f} ms")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, scs in res["systems"].items():
        closed = [(int(k[1:]), v) for k, v in scs.items() if k.startswith("c")]
        poisson = [(float(k[7:]), v) for k, v in scs.items() if k.startswith("poisson")]
        axes[0].plot([c for c, _ in closed], [v["output_tok_s"] for _, v in closed], "o-", label=name)
        axes[1].plot([c for c, _ in closed], [v["ttft_p50_ms"] for _, v in closed], "o-", label=name)
        axes[2].plot([r for r, _ in poisson], [v["ttft_p50_ms"] for _, v in poisson], "o-", label=name)
    for ax, title, xl in ((axes[0], "output tokens/s (closed loop)", "concurrency"),
                          (axes[1], "TTFT p50, ms (closed loop)", "concurrency"),
                          (axes[2], "TTFT p50, ms (Poisson arrivals)", "requests/s")):
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes[1:]:
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two concurrency levels, one rate, few requests")
    ap.add_argument("--systems", nargs="+", default=["raygen", "batch", "generate"])
    ap.add_argument("--observability", action="store_true",
                    help="only raygen, with tracing, metrics and access logs on vs off (issue 7's overhead check)")
    ap.add_argument("--rounds", type=int, default=2, help="--observability: rounds, alternating which goes first")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args.client)
    if args.observability:
        res = bench_observability(args)
        _write("serve_obs_quick" if args.quick else "serve_obs", res, report_observability(res))
        return
    res = bench(args)
    _write("serve_bench_quick" if args.quick else "serve_bench", res, report(res), plot)


def _write(stem: str, res: dict, text: str, plot_fn=None) -> None:
    """Results as JSON, the report as Markdown (and a PNG when there is a plot), under benchmarks/results/serve/."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (OUT / f"{stem}.md").write_text(text + "\n")
    if plot_fn:
        plot_fn(res, OUT / f"{stem}.png")
    print("\n" + text + f"\n\nwritten: {OUT}/{stem}.{{json,md{',png' if plot_fn else ''}}}")


if __name__ == "__main__":
    main()
