"""Serving the way users run it: a 4k-context Llama-shaped checkpoint with prompts of thousands of tokens,
overload, a per-key concurrency cap, killed model replicas (ray.kill and SIGKILL), a killed Gateway,
clients that leave mid-stream, and a promotion under continuous streaming load.

One app for the module on the session's cluster: 2 model replicas, small queues so overload is reachable.
Fault tests kill replicas, never the cluster, and wait for Serve to bring them back before the next test.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import threading
import time
import urllib.error
import uuid
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.integration

NAME, ALIAS = "longctx", "stable"
CONTEXT = 4096
CAPPED_KEY, CAP = "sk-capped", 2
LLM_CLASS, GATEWAY_CLASS = "ServeReplica:raygen:LLMServer", "ServeReplica:raygen:Gateway"
STATE: dict = {}


@pytest.fixture(scope="module")
def long_server(trained, tiny_config, tmp_path_factory, s3):
    """A random-init Llama with a 4,096-token context and raygen's trained tokenizer, served by 2 replicas
    from a registry in object storage (S3 on 127.0.0.1): each replica loads a version it has never seen on
    local disk, and the promotion test registers and promotes there under load."""
    import torch
    from ray import serve
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from raygen.registry import Registry
    from raygen.serve import app
    from raygen.storage import cached_path
    from raygen.workflow import wait_ready

    _, outcome, _ = trained
    vocab = len(AutoTokenizer.from_pretrained(outcome.tokenizer_dir))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=CONTEXT, initializer_range=0.3, bos_token_id=None,
        eos_token_id=None, pad_token_id=None)).eval()
    model_dir = tmp_path_factory.mktemp("llama4k")
    model.save_pretrained(model_dir)
    root = f"{s3}/resilience-{uuid.uuid4().hex[:8]}/models"
    reg = Registry(root)
    v1 = reg.register(NAME, model_dir, outcome.tokenizer_dir, {"note": "resilience tests: 4k-context Llama"})
    reg.set_alias(NAME, ALIAS, v1)
    cached = cached_path(f"{root}/{NAME}/{v1}")
    assert not cached.exists()  # no process has a copy yet: the replicas download it

    cfg = tiny_config.model_copy(deep=True)
    cfg.registry.name, cfg.registry.root = NAME, root
    s = cfg.serve
    s.version = ALIAS
    s.llm_replicas, s.llm_num_cpus = 2, 0.25
    s.max_tokens_limit = 256
    s.engine.kv_cache_mib = 96  # ~96k tokens of this model: 16 prompts of 3,500 tokens fit with room
    # Per replica 40 in the engine (16 running, 24 waiting), 48 from Serve: overload is reachable with 120
    # clients, while 32 (the fault and promotion tests) fit on one replica during a rolling update.
    s.engine.max_num_seqs, s.engine.max_num_waiting = 16, 24
    # 32 queued per caller: a new ingress replica (a promotion redeploys it) queues its first requests until
    # it learns the model replicas; fewer than the clients would be spurious 503s then.
    s.llm_max_ongoing_requests, s.llm_max_queued_requests = 48, 32
    s.rate_limit.requests_per_minute, s.rate_limit.tokens_per_minute = 100_000, 10_000_000
    s.auth.keys = [{"name": "main", "key": "sk-main"}, {"name": "capped", "key": CAPPED_KEY, "max_concurrent": CAP}]
    cfg = type(cfg).model_validate(cfg.model_dump())
    url = app.run(cfg)
    wait_ready(url)
    _wait_replicas(LLM_CLASS, 2)
    assert (cached / "model.safetensors").is_file()  # what the replicas serve came from S3
    STATE.update(cfg=cfg, v1=v1, model=model, model_dir=model_dir, outcome=outcome, root=root)
    yield url
    serve.shutdown()


# -- helpers --------------------------------------------------------------------------------------------
def post(url: str, body: dict, key: str = "sk-main", timeout: float = 120, path: str = "/v1/completions"):
    """(status, headers, parsed body or list of SSE events, seconds)."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status, headers = r.read(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    data = ([ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")] if body.get("stream")
            and status == 200 else json.loads(raw))
    return status, {k.lower(): v for k, v in headers.items()}, data, time.perf_counter() - t0


def sse_outcome(events: list[str]) -> tuple[str, dict | None]:
    """('done' | 'error' | 'cut', the error body if any) of a stream's events."""
    parsed = [json.loads(e) for e in events if e != "[DONE]"]
    errors = [p for p in parsed if "error" in p]
    if events and events[-1] == "[DONE]":
        return ("error", errors[0]) if errors else ("done", None)
    return "cut", None


def _actors(class_name: str) -> list:
    from ray.util.state import list_actors

    return list_actors(filters=[("class_name", "=", class_name), ("state", "=", "ALIVE")])


def _wait_replicas(class_name: str, n: int, timeout: float = 120) -> list:
    deadline = time.time() + timeout
    while time.time() < deadline:
        alive = _actors(class_name)
        if len(alive) == n:
            return alive
        time.sleep(0.5)
    raise AssertionError(f"{class_name}: {len(_actors(class_name))} alive after {timeout} s, want {n}")


def _wait_running(n: int, timeout: float = 120) -> None:
    """Until Serve reports n LLMServer replicas RUNNING (an actor is alive before its model has loaded and
    before the routers send it anything)."""
    from ray import serve

    from raygen.serve.app import APP_NAME

    deadline = time.time() + timeout
    while True:
        dep = serve.status().applications[APP_NAME].deployments["LLMServer"]
        running = dep.replica_states.get("RUNNING", 0)
        if running == n and sum(dep.replica_states.values()) == n:
            return
        assert time.time() < deadline, f"LLMServer replicas: {dep.replica_states}, want {n} RUNNING"
        time.sleep(0.5)


def _busy_replica(timeout: float = 10) -> dict:
    """Stats of a model replica that has sequences running now (the one to kill)."""
    handle, deadline = _llm_handle(), time.time() + timeout
    while time.time() < deadline:
        for _ in range(8):
            st = handle.stats.remote().result(timeout_s=30)
            if st["num_running"]:
                return st
    raise AssertionError("no model replica is running anything")


def _llm_handle():
    from ray import serve

    from raygen.serve.app import APP_NAME

    return serve.get_deployment_handle("LLMServer", APP_NAME)


def _wait_at_rest(timeout: float = 60) -> list[dict]:
    """Stats of every live model replica once none holds a sequence or a KV block. The router picks a replica
    per call, so it asks until each live LLMServer actor has answered."""
    handle, deadline = _llm_handle(), time.time() + timeout
    while True:
        alive, seen = {a.name for a in _actors(LLM_CLASS)}, {}
        for _ in range(64):
            st = handle.stats.remote().result(timeout_s=30)
            seen[st["actor_name"]] = st
            if alive <= seen.keys():
                break
        busy = [s for s in seen.values() if s["num_running"] or s["num_waiting"] or s["num_free_blocks"] != s["num_blocks"]]
        if not busy and alive <= seen.keys():
            return list(seen.values())
        if time.time() > deadline:
            raise AssertionError(f"replicas not at rest after {timeout} s: busy {busy}, unheard {alive - seen.keys()}")
        time.sleep(0.5)


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 500) for _ in range(n)]


# -- long prompts ---------------------------------------------------------------------------------------
def test_a_lone_3500_token_prompt_over_http_finishes_and_matches_transformers(long_server):
    """The step budget is 1,024 tokens: this prompt is prefilled in 4 chunks with nothing else running."""
    import torch

    prompt = ids(3500, seed=1)
    status, _, body, _ = post(long_server, {"prompt": prompt, "max_tokens": 8, "temperature": 0}, timeout=120)
    assert status == 200, body
    assert body["usage"] == {"prompt_tokens": 3500, "completion_tokens": 8, "total_tokens": 3508,
                             **({"prompt_tokens_details": body["usage"]["prompt_tokens_details"]}
                                if "prompt_tokens_details" in body["usage"] else {})}
    with torch.inference_mode():
        ref = STATE["model"].generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=0)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(STATE["outcome"].tokenizer_dir)
    assert body["choices"][0]["text"] == tok.decode(ref[0, 3500:].tolist())


def test_long_prompts_in_company_streaming_and_not_all_finish(long_server):
    lengths = [1500, 2200, 2900, 3500, 1800, 3100, 12, 40]
    jobs = [({"prompt": ids(n, seed=n), "max_tokens": 24, "ignore_eos": True, "temperature": 0.8, "seed": i,
              "stream": i % 2 == 0, **({"stream_options": {"include_usage": True}} if i % 2 == 0 else {})}, n)
            for i, n in enumerate(lengths)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: post(long_server, j[0], timeout=180), jobs))
    for (body, n), (status, _, data, _) in zip(jobs, results, strict=True):
        assert status == 200, (n, data)
        if body["stream"]:
            assert sse_outcome(data)[0] == "done"
            usage = json.loads(data[-2])["usage"]
        else:
            usage = data["usage"]
        assert usage["prompt_tokens"] == n and usage["completion_tokens"] == 24
    _wait_at_rest()


def test_a_prompt_longer_than_the_context_is_a_400_not_a_hang(long_server):
    status, _, body, _ = post(long_server, {"prompt": ids(CONTEXT, seed=2), "max_tokens": 4})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"


# -- limits and overload --------------------------------------------------------------------------------
def test_per_key_concurrency_cap_answers_429_with_retry_after(long_server):
    body = {"prompt": ids(64, seed=3), "max_tokens": 256, "ignore_eos": True, "stream": True}
    host, port = long_server.removeprefix("http://").split(":")
    held = []
    for _ in range(CAP):  # CAP streams of the capped key, held open
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json", "Authorization": f"Bearer {CAPPED_KEY}"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        held.append(conn)
    try:
        status, headers, err, _ = post(long_server, {**body, "stream": False, "max_tokens": 4}, key=CAPPED_KEY)
        assert status == 429 and int(headers["retry-after"]) >= 1, err
        assert err["error"]["code"] == "concurrency_limit_exceeded" and headers["x-raygen-limit-concurrent"] == str(CAP)
        assert post(long_server, {**body, "stream": False, "max_tokens": 4})[0] == 200  # other keys are not capped
    finally:
        for conn in held:
            conn.close()
    deadline = time.time() + 30  # the leases come back when the streams end
    while post(long_server, {"prompt": "x", "max_tokens": 1}, key=CAPPED_KEY)[0] != 200:
        assert time.time() < deadline, "the capped key's leases were not released"
        time.sleep(0.3)
    _wait_at_rest()


def test_overload_is_refused_fast_with_503_retry_after_and_openai_bodies(long_server):
    """150 clients at once against room for 80 in the engines (2 x 48 from Serve, +32 queued in the router),
    each holding its place for seconds: the rest get 503 with Retry-After at once, from the engine's waiting
    bound or Serve's queue bound; nothing else fails; the KV blocks come back."""
    _wait_running(2)
    body = {"max_tokens": 128, "ignore_eos": True, "temperature": 0.9}
    with ThreadPoolExecutor(150) as pool:
        results = list(pool.map(lambda i: post(long_server, {**body, "prompt": ids(32, seed=i),
                                                             "stream": i % 3 == 0}, timeout=180), range(150)))
    statuses = [r[0] for r in results]
    assert statuses.count(503) >= 10 and set(statuses) == {200, 503}, statuses
    for status, headers, data, _ in results:
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and data["error"]["type"] == "server_error"
            assert data["error"]["code"] == "overloaded" and "overloaded" in data["error"]["message"]
        else:
            assert sse_outcome(data)[0] == "done" if isinstance(data, list) else data["usage"]["completion_tokens"] == 128
    _wait_at_rest()


# -- faults -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_killing_a_model_replica_mid_flight_ends_every_request_cleanly(long_server, how):
    import ray

    _wait_running(2)
    _wait_at_rest()
    body = {"max_tokens": 256, "ignore_eos": True, "temperature": 0.7}  # distinct prompts: both replicas get some
    results: list = [None] * 32
    started = threading.Barrier(17)  # the 16 streams have their first event, and the main thread
    host, port = long_server.removeprefix("http://").split(":")

    def stream(i):
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        conn.request("POST", "/v1/completions", json.dumps({**body, "prompt": ids(200, seed=i), "stream": True}),
                     {"Content-Type": "application/json", "Authorization": "Bearer sk-main"})
        resp = conn.getresponse()
        events = [resp.readline().decode()[6:].strip()]
        started.wait(timeout=60)
        events += [ln[6:].strip() for ln in resp.read().decode().splitlines() if ln.startswith("data: ")]
        results[i] = ("stream", resp.status, sse_outcome(events), time.time())

    def whole(i):
        status, headers, data, _ = post(long_server, {**body, "prompt": ids(200, seed=i)}, timeout=120)
        results[i] = ("whole", status, (headers.get("retry-after"), data.get("error")), time.time())

    threads = [threading.Thread(target=stream if i < 16 else whole, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    started.wait(timeout=60)  # every stream is generating; the non-streams were sent with them
    victim = _busy_replica()
    killed_at = time.time()
    if how == "ray.kill":
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=True)
    else:
        os.kill(victim["pid"], signal.SIGKILL)
    for t in threads:
        t.join(timeout=60)
    assert all(not t.is_alive() for t in threads), "a request hung after the kill"
    assert max(r[3] for r in results) - killed_at < 30, results  # promptly: none waits on the dead replica

    failed = 0
    for kind, status, outcome, _ in results:
        assert status in (200, 503), results
        if kind == "stream":
            state, err = outcome
            assert state in ("done", "error"), outcome  # never cut off without a final event
            if state == "error":
                failed += 1
                assert err["error"]["code"] == "replica_unavailable" and err["error"]["type"] == "server_error"
        elif status == 503:
            failed += 1
            retry_after, err = outcome
            assert int(retry_after) >= 1 and err["code"] == "replica_unavailable", outcome
    assert failed >= 1, "the kill reached no request in flight"

    # The survivor takes new requests at once (nothing routed to the dead replica reaches a client).
    with ThreadPoolExecutor(8) as pool:
        after = list(pool.map(lambda i: post(long_server, {"prompt": ids(20, seed=i), "max_tokens": 8}), range(8)))
    assert [a[0] for a in after] == [200] * 8, after
    rest = _wait_at_rest()
    assert all(s["pid"] != victim["pid"] for s in rest)
    _wait_running(2)  # Serve replaced the replica
    assert victim["actor_name"] not in {a.name for a in _wait_replicas(LLM_CLASS, 2)}
    _wait_at_rest()


def test_killing_the_gateway_fails_open_then_it_comes_back(long_server):
    """rate_limit.on_gateway_failure is 'open' (the default): while the Gateway is replaced requests are
    admitted without limits and the cache misses; never a 500."""
    import ray

    (gw,) = _wait_replicas(GATEWAY_CLASS, 1)
    cached = {"prompt": "The gateway", "max_tokens": 4, "temperature": 0}
    assert post(long_server, cached)[0] == 200 and post(long_server, cached)[1].get("x-raygen-cache") == "hit"
    ray.kill(ray.get_actor(gw.name, namespace="serve"), no_restart=True)
    time.sleep(1.5)  # the near cache (1 s) forgets, so lookups go to the dead Gateway
    during = [post(long_server, {"prompt": f"call {i}", "max_tokens": 4, "seed": i}) for i in range(6)]
    during.append(post(long_server, cached))
    assert [d[0] for d in during] == [200] * 7, during
    assert all("x-raygen-cache" not in d[1] for d in during)
    deadline = time.time() + 90  # Serve recreates it: limits (their headers) and the cache are back
    while True:
        status, headers, _, _ = post(long_server, {"prompt": "x", "max_tokens": 1})
        if status == 200 and "x-ratelimit-limit-requests" in headers:
            break
        assert status == 200 and time.time() < deadline, (status, headers)
        time.sleep(0.5)
    assert _wait_replicas(GATEWAY_CLASS, 1)[0].actor_id != gw.actor_id


def test_a_client_leaving_mid_stream_100_times_leaves_nothing_behind(long_server):
    _wait_running(2)
    before = {a.name: a.pid for a in _actors(LLM_CLASS)}
    host, port = long_server.removeprefix("http://").split(":")
    for i in range(100):
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": ids(30 + i, seed=i), "max_tokens": 200,
                                                            "ignore_eos": True, "stream": True}),
                     {"Content-Type": "application/json", "Authorization": "Bearer sk-main"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        conn.close()
    rest = _wait_at_rest()
    assert {s["actor_name"]: s["pid"] for s in rest} == before  # both replicas answered; neither was replaced


def test_promoting_a_version_under_32_streaming_clients_fails_nothing(long_server, tiny_config):
    """Runs last: it moves the module's app to v2 (registered and promoted in S3). Every response names the
    version that produced it."""
    from raygen.registry import Registry
    from raygen.serve import app

    reg = Registry(STATE["root"])
    v1 = STATE["v1"]
    v2 = reg.register(NAME, STATE["model_dir"], STATE["outcome"].tokenizer_dir, {"note": "promotion test"})
    stop, results = threading.Event(), []

    def client(i):
        while not stop.is_set():
            status, headers, events, _ = post(long_server, {"prompt": ids(16, seed=i), "max_tokens": 16, "seed": i,
                                                            "temperature": 0.8, "stream": True}, timeout=120)
            state = sse_outcome(events)[0] if status == 200 else f"http: {events}"
            chunk_versions = {json.loads(e).get("system_fingerprint") for e in events if e != "[DONE]"} \
                if status == 200 else set()
            results.append((status, state, headers.get("x-raygen-model-version"), chunk_versions))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    time.sleep(2)
    reg.set_alias(NAME, ALIAS, v2)  # `raygen promote`, then redeploy
    app.run(STATE["cfg"])
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    failed = [r for r in results if r[0] != 200 or r[1] != "done"]
    assert not failed and len(results) > 64, failed[:5]
    assert all(r[3] == {r[2]} for r in results), [r for r in results if r[3] != {r[2]}][:5]
    assert {r[2] for r in results} == {v1, v2}
    assert post(long_server, {"prompt": "x", "max_tokens": 2})[1]["x-raygen-model-version"] == v2
