"""Monitoring of the serving graph for real, on the shared local Ray: one request is one connected trace across
the ingress, preprocessor, postprocessor and model replica processes (memory exporter, spans fetched through
each deployment's handle); Ray's Prometheus endpoint shows raygen's metrics with bounded labels after
traffic; the logs carry a JSON access line per request and no API key or prompt text."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

KEY, BURST = "sk-obs-main-8c1f0e", "sk-obs-burst-51aa9d"
SECRET = "purple-walrus-gazette"  # in prompts: must never reach a log
RPM = 6


@pytest.fixture(scope="module")
def server(trained, tiny_config, tmp_path_factory):
    from ray import serve

    from raygen.registry import Registry
    from raygen.serve import app
    from raygen.workflow import wait_ready

    # A model name of its own: the shared cluster's metrics also hold earlier modules' traffic.
    outcome = trained[1]
    version = Registry(tiny_config.registry.root).register("obsdemo", outcome.hf_dir, outcome.tokenizer_dir,
                                                           {"source": "test_observability"})
    keys = tmp_path_factory.mktemp("obs_keys") / "keys.txt"
    keys.write_text(f"main:{KEY}\nburst:{BURST}\n")
    cfg = tiny_config.model_copy(deep=True)
    cfg.serve.auth.keys_file = str(keys)
    cfg.serve.rate_limit.requests_per_minute = RPM
    cfg.serve.safety.blocklist = ["zebra unicorn"]
    cfg.serve.split_processing = True  # pre/postprocessor in their own processes: the trace must cross them
    cfg.registry.name, cfg.serve.version = "obsdemo", version
    cfg.observability.tracing = "memory"
    url = app.run(cfg)
    wait_ready(url)
    yield url, cfg
    serve.shutdown()


def post(url: str, body: dict, key: str = KEY, path: str = "/v1/completions"):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def spans_of(deployment: str) -> list[dict]:
    from ray import serve

    from raygen.serve.app import APP_NAME

    return serve.get_deployment_handle(deployment, APP_NAME).finished_spans.remote().result(timeout_s=60)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_is_one_connected_trace_across_the_processes(server, stream):
    url, _ = server
    status, headers, body = post(url, {"prompt": f"Ray Serve {SECRET}", "max_tokens": 6, "temperature": 0.7,
                                       "stream": stream})
    assert status == 200, body
    tid = headers.get("x-trace-id") or headers.get("X-Trace-Id")
    assert tid and re.fullmatch(r"[0-9a-f]{32}", tid)
    got: dict[str, list[dict]] = {}
    deadline = time.time() + 30  # the ingress ends its span as the last byte goes out
    while time.time() < deadline:
        got = {d: [s for s in spans_of(d) if s["trace_id"] == tid]
               for d in ("Ingress", "Preprocessor", "Postprocessor", "LLMServer")}
        if any(s["parent_id"] is None for s in got["Ingress"]) and got["LLMServer"]:
            break
        time.sleep(0.5)
    names = {d: {s["name"] for s in ss} for d, ss in got.items()}
    assert {"POST /v1/completions", "rate_limit.acquire"} <= names["Ingress"]
    assert names["Preprocessor"] == {"preprocess"}
    assert names["Postprocessor"] == {"postprocess"}
    assert names["LLMServer"] == {"llm.generate", "queue_wait", "prefill", "decode"}
    spans = [s for ss in got.values() for s in ss]
    by_id = {s["span_id"]: s for s in spans}
    roots = [s for s in spans if s["parent_id"] is None]
    assert [r["name"] for r in roots] == ["POST /v1/completions"]  # exactly one root, everything hangs off it
    assert all(s["parent_id"] in by_id for s in spans if s is not roots[0])
    parent = {s["name"]: by_id[s["parent_id"]]["name"] for s in spans if s["parent_id"]}
    assert parent["preprocess"] == parent["postprocess"] == "POST /v1/completions"
    assert parent["llm.generate"] == "postprocess"
    assert parent["queue_wait"] == parent["prefill"] == parent["decode"] == "llm.generate"
    q, p, d = (next(s for s in got["LLMServer"] if s["name"] == n) for n in ("queue_wait", "prefill", "decode"))
    assert q["end_ns"] <= p["end_ns"] <= d["end_ns"] and roots[0]["attributes"]["http.status_code"] == 200


def scrape() -> str:
    from raygen.observability.alert_actor import metrics_urls

    return "\n".join(urllib.request.urlopen(u, timeout=10).read().decode() for u in metrics_urls())


def series(text: str, name: str) -> list[dict[str, str]]:
    """Label sets of every sample of `name` in a Prometheus text page."""
    out = []
    for line in text.splitlines():
        m = re.match(rf"{name}(?:\{{(.*)\}})? ", line)
        if m:
            out.append(dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
    return out


def test_metrics_endpoint_shows_request_engine_cache_rate_limit_and_safety_metrics(server):
    from raygen.observability.metrics import METRICS

    url, cfg = server
    model = cfg.registry.name
    same = {"prompt": "The replicas", "max_tokens": 4, "temperature": 0}
    assert post(url, same)[0] == 200
    assert post(url, same)[1].get("x-raygen-cache") == "hit"
    assert post(url, {"prompt": "a zebra unicorn here", "max_tokens": 4})[0] == 400  # input safety
    # 40 tokens stream in several chunks (the engine merges at most 8 steps into one): inter-token latency.
    assert post(url, {"prompt": "Long", "max_tokens": 40, "ignore_eos": True, "temperature": 0.8, "stream": True})[0] == 200
    codes = [post(url, {"prompt": f"burst {i}", "max_tokens": 2, "temperature": 1.0}, key=BURST)[0]
             for i in range(RPM + 2)]
    assert 429 in codes
    want = {"ray_raygen_requests_total": {"model", "route", "status"},
            "ray_raygen_ttft_seconds_bucket": {"model", "le"},
            "ray_raygen_itl_seconds_bucket": {"model", "le"}, "ray_raygen_tpot_seconds_bucket": {"model", "le"},
            "ray_raygen_llm_replica_up": {"model", "replica"},
            "ray_raygen_request_latency_seconds_bucket": {"model", "route", "le"},
            "ray_raygen_queue_time_seconds_bucket": {"model", "le"},
            "ray_raygen_batch_size_bucket": {"model", "le"},
            "ray_raygen_prompt_tokens_total": {"model"}, "ray_raygen_generation_tokens_total": {"model"},
            "ray_raygen_response_cache_total": {"model", "result"}, "ray_raygen_rate_limited_total": {"model"},
            "ray_raygen_safety_blocks_total": {"model", "rule", "side"},
            "ray_raygen_running_sequences": {"model", "replica"}, "ray_raygen_kv_cache_usage_ratio": {"model", "replica"},
            "ray_raygen_prefix_cache_hit_ratio": {"model", "replica"},
            "ray_raygen_llm_replica_starts_total": {"model"}}

    def mine(text: str, name: str) -> list[dict[str, str]]:
        return [s for s in series(text, name) if s.get("model") == model]

    def exported(text: str) -> bool:
        """Everything asserted below is in the page. Each process (ingress, gateway, preprocessor, replica)
        exports on its own clock, and other tests' models may already have these series, so wait for this
        model's own samples of each, not for the names alone."""
        return all(mine(text, n) for n in want) and \
            {"hit", "miss"} <= {s["result"] for s in mine(text, "ray_raygen_response_cache_total")} and \
            {"200", "400", "429"} <= {s["status"] for s in mine(text, "ray_raygen_requests_total")} and \
            bool(mine(text, "ray_raygen_safety_blocks_total"))

    deadline, text = time.time() + 90, ""
    while time.time() < deadline:  # Ray's metrics agent exports every few seconds
        text = scrape()
        if exported(text):
            break
        time.sleep(2)
    raygen_labels = {label for d in METRICS.values() for label in d.labels} | {"le"}
    for name, labels in want.items():
        got = series(text, name)
        assert got, f"{name} missing from Ray's metrics endpoint"
        # Ours exactly as defined; the rest are what Ray adds to every series (node, session, worker...).
        assert all(set(s) & raygen_labels == labels for s in got), (name, got[:2])
        assert not any({"key", "api_key", "prompt", "user", "request_id"} & set(s) for s in got)
    reqs = [s for s in series(text, "ray_raygen_requests_total") if s["model"] == model]
    assert {("completions", "200"), ("completions", "400"), ("completions", "429")} <= \
        {(s["route"], s["status"]) for s in reqs}
    blocks = [s for s in series(text, "ray_raygen_safety_blocks_total") if s["model"] == model]
    assert {(s["rule"], s["side"]) for s in blocks} == {("blocklist:zebra unicorn", "input")}
    assert KEY not in text and BURST not in text and "burst 0" not in text and "The replicas" not in text


def _logs_dir() -> Path:
    import ray

    try:
        return Path(ray._private.worker._global_node.get_logs_dir_path())
    except AttributeError:  # not a node-holding driver: the session's default place
        return Path("/tmp/ray/session_latest/logs")


def test_logs_carry_one_json_access_line_per_request_and_no_key_or_prompt(server):
    url, _ = server
    status, headers, _ = post(url, {"prompt": f"Tell me about {SECRET}", "max_tokens": 4, "temperature": 0.9})
    assert status == 200
    rid, tid = headers["x-request-id"], headers["x-trace-id"]
    lines: list[dict] = []
    deadline = time.time() + 30
    while time.time() < deadline and not lines:
        for f in _logs_dir().rglob("*"):
            if f.is_file() and f.suffix in (".log", ".err", ".out"):
                for line in f.read_text(errors="replace").splitlines():
                    if rid in line and line.lstrip().startswith("{"):
                        try:
                            rec = json.loads(line[line.index("{"):])
                        except json.JSONDecodeError:
                            continue
                        if rec.get("logger") == "raygen.access":
                            lines.append(rec)
        time.sleep(1)
    assert len(lines) == 1, lines
    rec = lines[0]
    assert (rec["request_id"], rec["trace_id"], rec["status"], rec["key"]) == (rid, tid, 200, "main")
    assert rec["completion_tokens"] == 4 and rec["prompt_tokens"] > 0 and rec["ttft_ms"] > 0
    assert rec["model_version"] and rec["cache"] == "skip" and "prompt" not in rec
    leaked = [str(f) for f in _logs_dir().rglob("*") if f.is_file() and
              (SECRET in (t := f.read_text(errors="replace")) or KEY in t or BURST in t)]
    assert not leaked, f"the API key or prompt text reached these logs: {leaked}"
