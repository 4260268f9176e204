"""An OpenAI-streaming load generator that measures any server the way `vllm bench serve` and guidellm do.

    python benchmarks/loadgen.py --url http://127.0.0.1:8000 --vocab 8192 --concurrency 8 --requests 64
    python benchmarks/loadgen.py --url ... --rate 4 --requests 100 --input 1000:3000 --output 32:128

Requests: `POST /v1/completions`, `stream: true`, prompts as token-id lists (so tokenizers cannot change the
work), `ignore_eos`, greedy, `stream_options: {include_usage, continuous_usage_stats}` (vLLM's option:
every chunk carries the usage so far). Load: a closed loop of N concurrent clients, or Poisson arrivals at a
rate. Workloads (`workload()`): random token ids with seeded input/output lengths; a shared-prefix one
(one system prompt, short suffixes).

Metrics (vLLM's definitions): TTFT = first token - send; TPOT = (last - first token) / (tokens - 1);
**ITL per token**: a chunk that carries k tokens (raygen merges up to 8 engine steps into one chunk when
the client is behind) counts as k tokens that arrived evenly over the gap since the previous chunk, so
ITL is comparable between a server that sends one token per chunk and one that batches them; E2E. The
tokens of a chunk come from its running usage, or are 1 when a server sends no running usage (llama.cpp
sends one token per chunk); the final usage is checked against the sum. p50/p95/p99; output tokens/s and
requests/s over the run's wall time; goodput = requests/s that met the SLO (TTFT and TPOT bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time

SLO = {"ttft_s": 1.0, "tpot_s": 0.100}


def workload(n: int, vocab: int, seed: int, prompt=(32, 256), output=(64, 256), prefix: int = 0) -> list[dict]:
    """n requests of random token ids (from 2 up: 0 and 1 are often special); `prefix` shared leading tokens."""
    rng = random.Random(seed)
    shared = [rng.randrange(2, vocab) for _ in range(prefix)]
    return [{"prompt": shared + [rng.randrange(2, vocab) for _ in range(rng.randint(*prompt))],
             "max_tokens": rng.randint(*output)} for _ in range(n)]


async def _one(session, url: str, model: str, req: dict, headers: dict) -> dict:
    body = {"model": model, "prompt": req["prompt"], "max_tokens": req["max_tokens"], "temperature": 0,
            "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    t0 = time.perf_counter()
    times, counts, usage, error, seen = [], [], None, None, 0
    try:
        async with session.post(url + "/v1/completions", json=body, headers=headers) as r:
            if r.status != 200:
                error = f"HTTP {r.status}: {(await r.text())[:300]}"
            else:
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    msg = json.loads(line[6:])
                    if "error" in msg:
                        error = str(msg["error"])[:300]
                        break
                    u = msg.get("usage")
                    if u:
                        usage = u
                    if not msg.get("choices"):
                        continue
                    now = time.perf_counter() - t0
                    if u and u.get("completion_tokens") is not None:
                        k = u["completion_tokens"] - seen
                        seen = u["completion_tokens"]
                    else:
                        k = 1 if msg["choices"][0].get("text") or msg["choices"][0].get("finish_reason") is None else 0
                        seen += k
                    if k > 0:
                        times.append(now)
                        counts.append(k)
    except Exception as exc:  # noqa: BLE001 - a failed request is a result, counted, not a crash
        error = f"{exc.__class__.__name__}: {exc}"[:300]
    total = (usage or {}).get("completion_tokens")
    if total is not None and counts and total != sum(counts):  # a server's chunks held back bytes: trust usage
        counts[-1] += total - sum(counts)
    return {"times": times, "counts": counts, "tokens": total if total is not None else sum(counts),
            "error": error, "start": t0}


async def run(url: str, reqs: list[dict], concurrency: int | None = None, rate: float | None = None,
              seed: int = 0, model: str = "bench", headers: dict | None = None) -> dict:
    import aiohttp

    headers = {"Cache-Control": "no-cache", **(headers or {})}  # measure generation, not a response cache
    results: list[dict] = [{} for _ in reqs]
    # A new connection per request, for every server alike: llama.cpp's server closes idle keep-alive
    # connections, and a request written to one fails before the server sees it.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600),
                                     connector=aiohttp.TCPConnector(limit=0, force_close=True)) as session:
        t0 = time.perf_counter()
        if concurrency:
            todo = iter(range(len(reqs)))

            async def worker():
                for i in todo:
                    results[i] = await _one(session, url, model, reqs[i], headers)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            rng, tasks, t = random.Random(seed), [], 0.0
            for req in reqs:
                await asyncio.sleep(max(0.0, t0 + t - time.perf_counter()))
                tasks.append(asyncio.create_task(_one(session, url, model, req, headers)))
                t += rng.expovariate(rate)
            results = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - t0
    return {"wall": wall, "results": results}


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def per_token_itl(times: list[float], counts: list[int]) -> list[float]:
    """ITL per token: a chunk of k tokens arriving g after the previous chunk gives k gaps of g / k."""
    out = []
    for i in range(1, len(times)):
        gap, k = times[i] - times[i - 1], counts[i]
        out += [gap / k] * k
    return out


def summarize(run: dict, slo: dict = SLO) -> dict:
    res = run["results"]
    ok = [r for r in res if not r.get("error") and r.get("times")]
    errors = [r["error"] for r in res if r.get("error")]
    ttft = [r["times"][0] for r in ok]
    e2e = [r["times"][-1] for r in ok]
    tpot = [(r["times"][-1] - r["times"][0]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1]
    itl = [g for r in ok for g in per_token_itl(r["times"], r["counts"])]
    good = sum(1 for r in ok if r["times"][0] <= slo["ttft_s"]
               and (r["tokens"] < 2 or (r["times"][-1] - r["times"][0]) / (r["tokens"] - 1) <= slo["tpot_s"]))
    ntok = sum(r["tokens"] for r in ok)
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    out = {"requests": len(res), "errors": len(errors), "first_error": errors[0] if errors else None,
           "wall_s": round(run["wall"], 2), "output_tok_s": round(ntok / run["wall"], 1),
           "request_s": round(len(ok) / run["wall"], 3), "goodput_rps": round(good / run["wall"], 3),
           "good_fraction": round(good / max(1, len(res)), 3),
           "chunks_per_token": round(sum(len(r["times"]) for r in ok) / max(1, ntok), 3)}
    for name, xs in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
        for q in (50, 95, 99):
            out[f"{name}_p{q}_ms"] = ms(pct(xs, q))
    out["itl_max_ms"] = ms(max(itl)) if itl else None
    out["itl_over_100ms"] = sum(1 for g in itl if g > 0.1)
    return out


def measure(url: str, reqs: list[dict], concurrency: int | None = None, rate: float | None = None,
            seed: int = 0, model: str = "bench", slo: dict = SLO, raw: bool = False) -> dict:
    """Run the load in a separate process (no GIL or event loop shared with the server's driver); its
    summary, or with `raw` the run itself (wall time and each request's chunk times, counts and start)."""
    import subprocess

    spec = json.dumps({"url": url, "reqs": reqs, "concurrency": concurrency, "rate": rate, "seed": seed,
                       "model": model})
    p = subprocess.run([sys.executable, __file__, "--spec", "-"], input=spec, capture_output=True, text=True,
                       timeout=7200)
    if p.returncode:
        raise RuntimeError(f"load generator failed:\n{p.stderr[-3000:]}")
    run = json.loads(p.stdout)
    return run if raw else summarize(run, slo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--url")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--vocab", type=int, default=8192, help="prompt token ids are drawn from [2, vocab)")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int)
    ap.add_argument("--rate", type=float, help="Poisson arrivals per second (instead of --concurrency)")
    ap.add_argument("--input", default="32:256", help="prompt tokens, min:max")
    ap.add_argument("--output", default="64:256", help="output tokens, min:max")
    ap.add_argument("--prefix", type=int, default=0, help="shared leading prompt tokens")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.spec:
        s = json.loads(sys.stdin.read() if args.spec == "-" else args.spec)
        print(json.dumps(asyncio.run(run(s["url"], s["reqs"], s["concurrency"], s["rate"], s["seed"], s["model"]))))
        return
    if not args.url or not (args.concurrency or args.rate):
        ap.error("--url and one of --concurrency / --rate are required")
    span = lambda s: tuple(int(x) for x in s.split(":"))  # noqa: E731
    reqs = workload(args.requests, args.vocab, args.seed, span(args.input), span(args.output), args.prefix)
    out = summarize(asyncio.run(run(args.url, reqs, args.concurrency, args.rate, args.seed, args.model)))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
