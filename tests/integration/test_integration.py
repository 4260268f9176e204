"""End to end on one local Ray: data → train (2 workers, ZeRO-2) → registry → Serve → HTTP; and a Ray job."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest


pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(trained, tiny_config):
    from ray import serve

    from raygen.serve import app
    from raygen.workflow import wait_ready

    url = app.run(tiny_config)
    wait_ready(url)
    yield url
    serve.shutdown()


def _post(url: str, body, raw: bytes | None = None) -> tuple[int, dict, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def test_data_accounting_adds_up(trained, tiny_config):
    import json
    from pathlib import Path

    stats, _, _ = trained
    out = Path(tiny_config.data.output_dir)
    # Every planted bad record is booked under its reason (quality drops of builtin topics come on top).
    planted = {"bad_json": 1, "no_text_field": 2, "too_short": 1, "duplicate": 1, "near_duplicate": 1,
               "undecodable": 1, "empty_file": 1}
    for reason, n in planted.items():
        assert stats.dropped.get(reason, 0) >= n, (reason, stats.dropped)
    assert stats.num_documents + sum(stats.dropped.values()) == stats.num_collected
    assert stats.num_train_blocks * stats.block_size + stats.num_val_blocks * stats.block_size \
        + stats.tail_tokens == stats.doc_tokens
    rows = stats.stage_counts
    assert rows[0]["in"] == stats.num_collected and rows[-1]["out"] == stats.num_documents
    assert all(a["out"] == b["in"] for a, b in zip(rows, rows[1:], strict=False))
    # Unreadable records went to quarantine with their source; the card and its plots exist.
    quarantined = [json.loads(line) for f in (out / "quarantine").rglob("*.json") for line in f.read_text().splitlines()]
    assert {q["drop_reason"] for q in quarantined} >= {"bad_json", "no_text_field", "undecodable", "empty_file"}
    assert all(q["source"] for q in quarantined)
    card = json.loads((out / "card.json").read_text())
    assert card["dataset_version"] == stats.dataset_version and (out / "card_lengths.png").is_file()
    assert {"lang", "domain", "quality"} <= set(card["labels"])
    import pyarrow.parquet as pq

    docs = pq.read_table(out / "docs").to_pylist()
    page = [d for d in docs if d["source"].endswith("page.html")]
    assert len(page) == 1 and "tracking" not in page[0]["text"] and "traced back" in page[0]["text"]
    assert all(d["collected_at"] and d["doc_id"] for d in docs)


def test_label_studio_export_then_import_makes_a_label_column(trained, tiny_config, tmp_path):
    """Before the module's server starts: Ray Data tasks need the CPUs the model replica would hold."""
    import pyarrow.parquet as pq

    from raygen.data.pipeline import export_for_labeling, import_labels

    tasks_file = tmp_path / "tasks.json"
    n = export_for_labeling(tiny_config, str(tasks_file), 12, stratify_by="domain", seed=3)
    tasks = json.loads(tasks_file.read_text())
    assert n == len(tasks) == 12 and {t["data"]["domain"] for t in tasks} >= {"code"}
    # What Label Studio's JSON export looks like once someone has annotated the tasks.
    annotated = [{**t, "annotations": [{"result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                                    "value": {"choices": ["keep" if i % 2 else "drop"]}}],
                                        "was_cancelled": False, "created_at": "2026-11-28T10:00:00Z"}]}
                 for i, t in enumerate(tasks)]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(annotated))
    assert import_labels(tiny_config, str(export), name="review") == 12
    docs = pq.read_table(f"{tiny_config.data.output_dir}/docs").to_pylist()
    by_id = {d["doc_id"]: d["review"] for d in docs}
    assert all(by_id[t["data"]["doc_id"]] == ("keep" if i % 2 else "drop") for i, t in enumerate(tasks))
    assert sum(1 for v in by_id.values() if v == "") == len(docs) - 12


def test_training_loss_fell_and_export_loads_with_plain_transformers(trained, tiny_config):
    _, outcome, version = trained
    m = outcome.metrics
    assert m["step"] == tiny_config.train.max_steps
    assert m["loss"] < m["first_loss"] - 0.5, m
    assert m["val_loss"] == m["val_loss"]  # not NaN
    path = f"{tiny_config.registry.root}/{tiny_config.registry.name}/latest"
    code = ("import sys, torch, transformers as t; d = sys.argv[1]; "
            "m = t.AutoModelForCausalLM.from_pretrained(d); k = t.AutoTokenizer.from_pretrained(d); "
            "ids = k('def f', return_tensors='pt').input_ids; print(m(ids).logits.shape[-1], len(k)); "
            "assert 'raygen' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True)
    vocab_logits, vocab_tok = out.stdout.split()
    assert vocab_logits == vocab_tok
    assert version == "v1"


def test_completion_returns_text_and_exact_usage(server, trained):
    from transformers import AutoTokenizer

    _, outcome, version = trained
    tok = AutoTokenizer.from_pretrained(outcome.tokenizer_dir)
    prompt = "The for statement is"
    status, headers, body = _post(server, {"prompt": prompt, "max_tokens": 12, "temperature": 0})
    assert status == 200, body
    assert headers["x-raygen-model-version"] == version
    choice = body["choices"][0]
    assert isinstance(choice["text"], str) and choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(tok(prompt)["input_ids"])
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # Greedy is deterministic: the same request gives the same text.
    assert _post(server, {"prompt": prompt, "max_tokens": 12, "temperature": 0})[2]["choices"][0]["text"] \
        == choice["text"]
    models = json.loads(urllib.request.urlopen(f"{server}/v1/models", timeout=30).read())
    assert models["data"][0]["id"] == "demo"
    from raygen.serve import schema  # what was sent is what /openapi.json documents

    schema.CompletionResponse.model_validate(body)
    schema.ModelList.model_validate(models)
    doc = json.loads(urllib.request.urlopen(f"{server}/openapi.json", timeout=30).read())
    ref = doc["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert "logit_bias" in doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert b"swagger-ui" in urllib.request.urlopen(f"{server}/docs", timeout=30).read()


def test_streaming_sse_ends_with_done(server):
    body = json.dumps({"prompt": "A class", "max_tokens": 24, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(f"{server}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.read().decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    from raygen.serve.schema import CompletionChunk

    for c in chunks:
        CompletionChunk.model_validate(c)
    assert chunks[-1]["usage"]["completion_tokens"] >= 1 and chunks[-1]["choices"] == []
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert len(chunks) >= 3  # text arrived in more than one piece


def test_continuous_usage_stats_count_the_tokens_of_every_chunk(server):
    """vLLM's stream option: each chunk carries the usage so far, so a client can tell how many tokens a
    chunk that merged several engine steps holds (what a load generator's per-token latency needs)."""
    n = 20
    body = json.dumps({"prompt": "A class", "max_tokens": n, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": True, "continuous_usage_stats": True}}).encode()
    req = urllib.request.Request(f"{server}/v1/completions", data=body, headers={"Content-Type": "application/json",
                                                                                 "Cache-Control": "no-cache"})
    with urllib.request.urlopen(req, timeout=120) as r:
        events = [line[len("data: "):] for line in r.read().decode().splitlines() if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    counts = [c["usage"]["completion_tokens"] for c in chunks if c["choices"]]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] == n, counts
    assert all(c["usage"]["total_tokens"] == c["usage"]["prompt_tokens"] + c["usage"]["completion_tokens"]
               for c in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == n


def test_served_greedy_matches_transformers_and_n_logprobs_stop_work(server, tiny_config):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = f"{tiny_config.registry.root}/{tiny_config.registry.name}/latest"
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
    prompt = "The try statement"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
    body = _post(server, {"prompt": prompt, "max_tokens": 16, "temperature": 0})[2]
    text = tok.decode(ref, skip_special_tokens=True)
    assert body["choices"][0]["text"] == text and body["usage"]["completion_tokens"] == len(ref)
    # A stop string cuts the text exactly before it (16 tokens with EOS ignored: always text to cut).
    seq = ids
    with torch.inference_mode():
        for _ in range(16):  # plain greedy steps, EOS or not
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    long_text = tok.decode(seq[0, ids.shape[1]:], skip_special_tokens=True)
    assert len(long_text.strip()) > 4, long_text
    stop = long_text.strip()[2:4]
    cut = _post(server, {"prompt": prompt, "max_tokens": 16, "temperature": 0, "stop": [stop],
                         "ignore_eos": True})[2]["choices"][0]
    assert cut["text"] == long_text[:long_text.find(stop)] and cut["finish_reason"] == "stop"
    status, _, body = _post(server, {"prompt": prompt, "max_tokens": 6, "n": 3, "temperature": 1.0, "seed": 7,
                                     "logprobs": 2, "ignore_eos": True})
    assert status == 200, body
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    for c in body["choices"]:
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
        assert all(v <= 0 for v in lp["token_logprobs"]) and all(1 <= len(t) <= 2 for t in lp["top_logprobs"])
    assert body["usage"]["completion_tokens"] == 18
    assert body["usage"]["prompt_tokens"] == ids.shape[1]


@pytest.mark.parametrize("body,raw,status,param", [
    (None, b"{not json", 400, None),
    ({"prompt": "x", "max_tokens": -1}, None, 400, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1000}, None, 400, "max_tokens"),
    ({"prompt": "word " * 200, "max_tokens": 8}, None, 400, "prompt"),
    ({"prompt": "x", "model": "gpt-9"}, None, 404, "model"),
    ({"prompt": [10 ** 9]}, None, 400, "prompt"),
    ({"prompt": "x" * 1_100_000}, None, 413, None),
    # Hostile bodies: a lone surrogate escape (valid JSON, not valid Unicode) and deep nesting were 500s.
    (None, b'{"prompt": "\\ud800 hi"}', 400, None),
    (None, b'{"prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400, None),
    # Fields of OpenAI's schema raygen does not implement are refused by name, never dropped.
    ({"prompt": "x", "suffix": "y"}, None, 400, "suffix"),
    ({"prompt": "x", "best_of": 4}, None, 400, "best_of"),
    ({"prompt": "x", "response_format": {"type": "json_object"}}, None, 400, "response_format"),
    ({"prompt": "x", "seed": 2**64}, None, 400, "seed"),
    ({"prompt": "x", "max_tokens": 4, "logit_bias": {"100000": 5}}, None, 400, "logit_bias"),
])
def test_bad_requests_get_openai_errors(server, body, raw, status, param):
    code, _, err = _post(server, body, raw)
    assert code == status, err
    assert err["error"]["message"] and err["error"]["param"] == param


def test_unknown_routes_and_wrong_methods_answer_openai_error_bodies(server):
    for method, path, status in (("GET", "/v1/nothing", 404), ("POST", "/v2/completions", 404),
                                 ("GET", "/v1/completions", 405), ("DELETE", "/v1/chat/completions", 405)):
        req = urllib.request.Request(server + path, method=method, data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == status
        err = json.loads(e.value.read())["error"]
        assert path in err["message"] and err["type"] == "invalid_request_error", err


def test_chat_refuses_tools_and_json_mode_by_name_and_honours_logit_bias(server, tiny_config):
    from transformers import AutoTokenizer

    from raygen.registry import Registry

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for extra, param in (({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
                         ({"tool_choice": "required"}, "tool_choice"),
                         ({"response_format": {"type": "json_object"}}, "response_format")):
        req = urllib.request.Request(f"{server}/v1/chat/completions", data=json.dumps({**chat, **extra}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == 400 and json.loads(e.value.read())["error"]["param"] == param
    model_dir = Registry(tiny_config.registry.root).local_dir(tiny_config.registry.name, "latest")
    forced = AutoTokenizer.from_pretrained(model_dir).decode([300])
    status, _, body = _post(server, {"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0.9, "seed": 3,
                                     "logit_bias": {"300": 100}})
    assert status == 200 and body["choices"][0]["text"] == forced * 3, body
