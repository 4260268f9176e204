"""Soak: raygen's serving graph under mixed traffic and faults for N minutes; every request accounted for.

    python benchmarks/soak.py                  # 10 minutes (issue 15's run)
    python benchmarks/soak.py --minutes 2      # a short run

Traffic (asyncio clients in this process, one API key per client class so the rate limit bites only the
abuser): streaming chat; non-streamed completions of random token prompts; cached deterministic requests
(a small set, repeated); long prompts (600-900 tokens of a 1,024 context: chunked prefill); clients that
leave after their first event; one key sending far over its rate limit. Faults: one model-replica kill
every `--kill-every-s` (alternately `ray.kill` and SIGKILL of its process), one promotion to a new version
half way. At the end an overload burst (more clients at once than the replicas and queues hold) measures how
fast the refusals come.

Each request ends in one class: ok (a complete answer), clean_error (a 4xx/503 with OpenAI's body, and
Retry-After on 429/503; or a stream whose last event is an OpenAI error, then [DONE]), left (the client's
deliberate disconnect), lost (no answer, a timeout, a 5xx other than such a 503, or a stream cut without
[DONE]). Lost must be 0. Also: TTFT p50/p99 per minute (plot), RSS of every Serve process after warm-up
and at the end, KV blocks in use at the end (must be 0). Results: benchmarks/results/soak/ (JSON, Markdown,
PNG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_bench import free_port, pct  # noqa: E402  (the same percentile and port helpers)

OUT = HERE / "results" / "soak"
MODEL = dict(n_layer=4, n_embd=256, n_head=4, vocab_size=4096, n_positions=1024)
NAME, ALIAS = "soak", "production"
RPM = 300  # per key; the 4 abusers send ~8 times this; the other classes stay under it (cache hits skip it)
KEYS = {c: f"sk-soak-{c}" for c in ("chat", "whole", "cached", "long", "leaver", "abuser", "burst")}
REPLICA_CLASS = "ServeReplica:raygen:LLMServer"
SERVE_CLASSES = ("ServeController", "ProxyActor", "ServeReplica:raygen:Ingress", "ServeReplica:raygen:Gateway",
                 REPLICA_CLASS)


# -- set-up -------------------------------------------------------------------------------------------------
def make_model(work: Path) -> Path:
    import pydoc_data.topics

    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from raygen.data.features import train_tokenizer

    path = work / "model"
    train_tokenizer(pydoc_data.topics.topics.values(), MODEL["vocab_size"], str(path))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(**MODEL, bos_token_id=None, eos_token_id=None,
                                                pad_token_id=None)).save_pretrained(path)
    return path


def make_config(work: Path):
    from raygen.config import validate_config

    return validate_config({
        "registry": {"root": str(work / "models"), "name": NAME},
        "serve": {"version": ALIAS, "llm_replicas": 2, "llm_num_cpus": 0.5, "max_tokens_limit": 256,
                  "engine": {"dtype": "float32", "kv_cache_mib": 256, "max_num_seqs": 32, "max_num_waiting": 16},
                  "llm_max_ongoing_requests": 48, "llm_max_queued_requests": 16,
                  "rate_limit": {"requests_per_minute": RPM, "tokens_per_minute": 2_000_000},
                  "auth": {"keys": [{"name": c, "key": k} for c, k in KEYS.items()]}},
    }, "soak")


# -- one request, classified ----------------------------------------------------------------------------------
def _clean_error_body(status: int, headers, text: str) -> bool:
    try:
        err = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    if not err.get("message"):
        return False
    return status not in (429, 503) or "Retry-After" in headers


async def request(session, url: str, client: str, path: str, body: dict, leave_after: int | None = None) -> dict:
    """Send one request; returns {client, outcome, status, ttft, t (start, monotonic), latency}."""
    import aiohttp

    t0 = time.monotonic()
    rec = {"client": client, "t": t0, "status": None, "ttft": None, "outcome": "lost", "why": "",
           "retry_after": None}
    headers = {"Authorization": f"Bearer {KEYS[client]}"}
    try:
        async with session.post(url + path, json=body, headers=headers) as r:
            rec["status"], rec["retry_after"] = r.status, r.headers.get("Retry-After")
            if r.status != 200:
                text = await r.text()
                clean = r.status < 500 or r.status == 503
                rec["outcome"] = "clean_error" if clean and _clean_error_body(r.status, r.headers, text) else "lost"
                rec["why"] = text[:200]
            elif not body.get("stream"):
                data = await r.json()
                rec["outcome"] = "ok" if data.get("choices") and data.get("usage") else "lost"
            else:
                events, last_error = 0, None
                async for raw in r.content:
                    line = raw.decode().strip()
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        rec["outcome"] = "clean_error" if last_error else "ok"
                        break
                    msg = json.loads(line[6:])
                    if "error" in msg:
                        last_error = msg["error"]
                        rec["why"] = last_error.get("code") or last_error.get("message", "")[:100]
                    events += 1
                    if rec["ttft"] is None and any(c.get("text") or (c.get("delta") or {}).get("content")
                                                   for c in msg.get("choices", [])):
                        rec["ttft"] = time.monotonic() - t0
                    if leave_after is not None and events >= leave_after:
                        rec["outcome"] = "left"
                        break
                else:
                    rec["why"] = "stream ended without [DONE]"
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        rec["why"] = f"{exc.__class__.__name__}: {exc}"[:200]
    rec["latency"] = time.monotonic() - t0
    return rec


def _ids(rng: random.Random, lo: int, hi: int) -> list[int]:
    return [rng.randrange(2, MODEL["vocab_size"]) for _ in range(rng.randint(lo, hi))]


def client_loop(kind: str, seed: int):
    """A coroutine factory: the requests one client of `kind` sends, one after the other."""
    rng = random.Random(seed)
    cached = [[rng.randrange(2, MODEL["vocab_size"]) for _ in range(24)] for _ in range(5)]

    def next_request():
        if kind == "chat":
            words = " ".join(rng.choice(["loop", "class", "yield", "import", "scope", "list"]) for _ in range(8))
            return "/v1/chat/completions", {"messages": [{"role": "user", "content": words}],
                                            "max_tokens": rng.randint(8, 48), "stream": True,
                                            "temperature": 0.8}, None
        if kind == "whole":
            return "/v1/completions", {"prompt": _ids(rng, 32, 256), "max_tokens": rng.randint(8, 64),
                                       "ignore_eos": True, "temperature": 0.7}, None
        if kind == "cached":
            return "/v1/completions", {"prompt": rng.choice(cached), "max_tokens": 16, "temperature": 0,
                                       "stream": rng.random() < 0.5}, None
        if kind == "long":
            return "/v1/completions", {"prompt": _ids(rng, 600, 900), "max_tokens": rng.randint(16, 64),
                                       "ignore_eos": True, "stream": True}, None
        if kind == "leaver":
            return "/v1/completions", {"prompt": _ids(rng, 16, 64), "max_tokens": 200, "ignore_eos": True,
                                       "stream": True}, 2
        if kind == "abuser":
            return "/v1/completions", {"prompt": [5, 6, 7], "max_tokens": 1}, None
        raise ValueError(kind)

    async def run(session, url: str, until: float, records: list):
        while time.monotonic() < until:
            path, body, leave = next_request()
            records.append(await request(session, url, kind, path, body, leave))
            if kind == "abuser":
                await asyncio.sleep(0.02)  # ~50 requests/s: far over RPM
    return run


async def traffic(url: str, seconds: float, mix: dict[str, int], records: list) -> None:
    import aiohttp

    until = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client_loop(kind, 1000 * i + j)(session, url, until, records)
                               for i, (kind, n) in enumerate(mix.items()) for j in range(n)))


async def burst(url: str, n: int) -> list[dict]:
    """n clients at once, more than the replicas and queues hold: how fast do the refusals come?"""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        rng = random.Random(5)
        return await asyncio.gather(*(request(session, url, "burst", "/v1/completions",
                                              {"prompt": _ids(rng, 16, 32), "max_tokens": 64, "ignore_eos": True})
                                      for _ in range(n)))


# -- the cluster's side: processes, faults, rest state ------------------------------------------------------
def serve_processes() -> dict[int, str]:
    from ray.util.state import list_actors

    return {a.pid: a.class_name for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name in SERVE_CLASSES}


def rss_mib(pids: dict[int, str]) -> dict[str, dict]:
    import psutil

    out = {}
    for pid, cls in pids.items():
        try:
            out[str(pid)] = {"class": cls, "rss_mib": round(psutil.Process(pid).memory_info().rss / 2**20, 1)}
        except psutil.NoSuchProcess:
            pass
    return out


def kill_replica(how: str) -> str:
    import ray
    from ray.util.state import list_actors

    alive = list_actors(filters=[("class_name", "=", REPLICA_CLASS), ("state", "=", "ALIVE")])
    if not alive:
        return "no replica alive"
    victim = random.Random(len(alive)).choice(alive)
    if how == "ray.kill":
        ray.kill(ray.get_actor(victim.name, namespace="serve"), no_restart=True)
    else:
        os.kill(victim.pid, signal.SIGKILL)
    return f"{how} pid {victim.pid}"


def kv_at_rest(timeout: float = 120) -> list[dict]:
    from ray import serve

    from raygen.serve.app import APP_NAME

    handle, deadline = serve.get_deployment_handle("LLMServer", APP_NAME), time.time() + timeout
    while True:
        seen = {}
        for _ in range(12):
            st = handle.stats.remote().result(timeout_s=30)
            seen[st["replica"]] = {k: st[k] for k in ("version", "pid", "num_running", "num_waiting", "num_blocks",
                                                      "num_free_blocks")}
        if all(s["num_running"] == s["num_waiting"] == 0 and s["num_free_blocks"] == s["num_blocks"]
               for s in seen.values()) or time.time() > deadline:
            return list(seen.values())
        time.sleep(1)


# -- the run ---------------------------------------------------------------------------------------------------
def soak(args) -> dict:
    import ray
    from ray import serve

    from raygen.cluster import serve_env
    from raygen.registry import Registry
    from raygen.serve import app
    from raygen.workflow import wait_ready

    work = Path(tempfile.mkdtemp(prefix="raygen-soak-"))
    model_dir = make_model(work)
    reg = Registry(work / "models")
    v1 = reg.register(NAME, model_dir, model_dir, {"source": "soak random init"})
    reg.set_alias(NAME, ALIAS, v1)
    cfg = make_config(work)
    os.environ.update(serve_env())
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False)  # state API
    port = free_port()
    cfg.serve.port = port
    url = app.run(cfg)
    wait_ready(url)
    events: list[dict] = []
    records: list[dict] = []
    mix = {"chat": 3, "whole": 2, "cached": 2, "long": 1, "leaver": 1, "abuser": 4}  # 4 abusers: ~40 requests/s
    try:
        print(f"warm-up (20 s) at {url}", flush=True)
        asyncio.run(traffic(url, 20, mix, []))
        pids = serve_processes()
        rss_start = rss_mib(pids)
        t0 = time.monotonic()
        seconds = args.minutes * 60

        def faults():
            kills, promoted, k = 0, False, 0
            while time.monotonic() - t0 < seconds - 5:
                time.sleep(1)
                el = time.monotonic() - t0
                if el >= (kills + 1) * args.kill_every_s and el < seconds - 20:
                    how = ("ray.kill", "SIGKILL")[kills % 2]
                    events.append({"t": el, "event": "kill", "detail": kill_replica(how)})
                    kills += 1
                    print(f"[{el:6.0f} s] killed a model replica ({how})", flush=True)
                if not promoted and el >= seconds / 2 + args.kill_every_s / 4:
                    v2 = reg.register(NAME, model_dir, model_dir, {"source": "soak promotion"})
                    reg.set_alias(NAME, ALIAS, v2)
                    start = time.monotonic()
                    app.run(cfg)
                    events.append({"t": el, "event": "promote", "detail": f"{v1} -> {v2}",
                                   "seconds": round(time.monotonic() - start, 1)})
                    promoted = True
                    print(f"[{el:6.0f} s] promoted {v1} -> {v2} ({time.monotonic() - start:.0f} s)", flush=True)
                k += 1

        fault_thread = threading.Thread(target=faults, daemon=True)
        fault_thread.start()
        progress = threading.Thread(target=_progress, args=(records, t0, seconds), daemon=True)
        progress.start()
        asyncio.run(traffic(url, seconds, mix, records))
        fault_thread.join(timeout=300)
        kv = kv_at_rest()
        rss_end = rss_mib(serve_processes())
        print("overload burst: 300 clients at once", flush=True)
        burst_recs = asyncio.run(burst(url, 300))
        kv_after_burst = kv_at_rest()
    finally:
        serve.shutdown()
        ray.shutdown()
    return summarize(args, records, t0, events, rss_start, rss_end, kv, burst_recs, kv_after_burst)


def _progress(records: list, t0: float, seconds: float) -> None:
    while time.monotonic() - t0 < seconds:
        time.sleep(30)
        c = Counter(r["outcome"] for r in records)
        print(f"[{time.monotonic() - t0:6.0f} s / {seconds:.0f}] {len(records)} requests: {dict(c)}", flush=True)


def summarize(args, records, t0, events, rss_start, rss_end, kv, burst_recs, kv_after_burst) -> dict:
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    by_minute = []
    for m in range(int(args.minutes + 0.999)):
        ttft = [r["ttft"] for r in records if r["ttft"] is not None and r["outcome"] == "ok"
                and m * 60 <= r["t"] - t0 < (m + 1) * 60]
        by_minute.append({"minute": m + 1, "n": len(ttft), "ttft_p50_ms": ms(pct(ttft, 50)),
                          "ttft_p99_ms": ms(pct(ttft, 99))})
    outcomes = Counter(r["outcome"] for r in records)
    per_client = {k: dict(Counter(r["outcome"] for r in records if r["client"] == k))
                  for k in sorted({r["client"] for r in records})}
    statuses = dict(Counter(str(r["status"]) for r in records))
    growth = {}
    for pid, s in rss_start.items():
        if pid in rss_end:
            growth[pid] = {"class": s["class"], "start_mib": s["rss_mib"], "end_mib": rss_end[pid]["rss_mib"],
                           "growth_pct": round(100 * (rss_end[pid]["rss_mib"] / s["rss_mib"] - 1), 1)}
    refused = [r["latency"] for r in burst_recs if r["status"] == 503]
    limited = [r["latency"] for r in records if r["client"] == "abuser" and r["status"] == 429]
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{os.cpu_count()} CPUs", "minutes": args.minutes,
            "model": MODEL, "requests": len(records), "outcomes": dict(outcomes), "per_client": per_client,
            "statuses": statuses,
            "clean_error_reasons": dict(Counter(f"{r['status']} {r['why'][:80]}" for r in records
                                                if r["outcome"] == "clean_error" and r["client"] != "abuser")),
            "lost_examples": [r for r in records if r["outcome"] == "lost"][:10],
            "ttft_by_minute": by_minute, "events": events, "rss_start": rss_start, "rss_end": rss_end,
            "rss_same_process": growth, "kv_at_end": kv,
            "kv_blocks_in_use_at_end": sum(s["num_blocks"] - s["num_free_blocks"] for s in kv),
            "burst": {"clients": len(burst_recs), "statuses": dict(Counter(str(r["status"]) for r in burst_recs)),
                      "outcomes": dict(Counter(r["outcome"] for r in burst_recs)),
                      "refusal_p50_ms": ms(pct(refused, 50)), "refusal_p99_ms": ms(pct(refused, 99)),
                      "lost_examples": [r for r in burst_recs if r["outcome"] == "lost"][:5],
                      "kv_blocks_in_use_after": sum(s["num_blocks"] - s["num_free_blocks"] for s in kv_after_burst)},
            "rate_limited_429": {"n": len(limited), "p50_ms": ms(pct(limited, 50)), "p99_ms": ms(pct(limited, 99))}}


def report(res: dict) -> str:
    o = res["outcomes"]
    lines = [f"# Soak: {res['minutes']} min, {res['requests']} requests ({res['date']}, {res['machine']})", "",
             "| outcome | requests |", "|---|---|"]
    lines += [f"| {k} | {o.get(k, 0)} |" for k in ("ok", "clean_error", "left", "lost")]
    lines += ["", "Per client: " + "; ".join(f"{k} {v}" for k, v in res["per_client"].items()),
              "", f"HTTP statuses: {res['statuses']}", "", "| minute | streamed ok | TTFT p50 ms | TTFT p99 ms |",
              "|---|---|---|---|"]
    lines += [f"| {m['minute']} | {m['n']} | {m['ttft_p50_ms']} | {m['ttft_p99_ms']} |" for m in res["ttft_by_minute"]]
    lines += ["", "Events: " + "; ".join(f"{e['t']:.0f} s {e['event']} ({e['detail']})" for e in res["events"]), "",
              "| process (alive throughout) | RSS after warm-up MiB | at end MiB | growth |", "|---|---|---|---|"]
    lines += [f"| {g['class']} pid {pid} | {g['start_mib']} | {g['end_mib']} | {g['growth_pct']}% |"
              for pid, g in res["rss_same_process"].items()]
    b = res["burst"]
    lines += ["", f"KV blocks in use at the end: {res['kv_blocks_in_use_at_end']}",
              f"Overload burst ({b['clients']} clients at once): statuses {b['statuses']}, outcomes {b['outcomes']}; "
              f"503 latency p50 {b['refusal_p50_ms']} ms, p99 {b['refusal_p99_ms']} ms; KV blocks in use after: "
              f"{b['kv_blocks_in_use_after']}",
              f"429s to the abuser: {res['rate_limited_429']}"]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    m = [x["minute"] for x in res["ttft_by_minute"]]
    ax.plot(m, [x["ttft_p50_ms"] for x in res["ttft_by_minute"]], "o-", label="TTFT p50")
    ax.plot(m, [x["ttft_p99_ms"] for x in res["ttft_by_minute"]], "s-", label="TTFT p99")
    for e in res["events"]:
        ax.axvline(e["t"] / 60 + 0.5, color="red" if e["event"] == "kill" else "green", alpha=0.5, ls="--")
    ax.set_xlabel("minute (dashed: red = replica killed, green = promotion)")
    ax.set_ylabel("ms (streamed, ok requests)")
    ax.set_yscale("log")
    o = res["outcomes"]
    ax.set_title(f"soak: {res['requests']} requests; ok {o.get('ok', 0)}, clean errors {o.get('clean_error', 0)}, "
                 f"left {o.get('left', 0)}, lost {o.get('lost', 0)}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--kill-every-s", type=float, default=120)
    args = ap.parse_args()
    res = soak(args)
    OUT.mkdir(parents=True, exist_ok=True)
    stem = "soak" if args.minutes >= 10 else "soak_short"
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=1))
    text = report(res)
    (OUT / f"{stem}.md").write_text(text + "\n")
    plot(res, OUT / f"{stem}.png")
    print("\n" + text + f"\n\nwritten: {OUT}/{stem}.{{json,md,png}}")
    sys.exit(1 if res["outcomes"].get("lost") or res["kv_blocks_in_use_at_end"] else 0)


if __name__ == "__main__":
    main()
