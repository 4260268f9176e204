"""End to end on one local Ray: data → train (2 workers, ZeRO-2) → registry → Serve → HTTP; and a Ray job."""

from __future__ import annotations

import json
import re
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
    ({"prompt": "x", "max_tokens": 4, "response_format": {"type": "json_schema", "json_schema": {"name": "bad", "schema": {
        "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}}, None, 400,
     "response_format.json_schema.schema"),  # refused by the replica's compiler, named
    ({"prompt": "x", "max_tokens": 4, "guided_regex": "([a-z"}, None, 400, "guided_regex"),
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


def test_chat_refuses_bad_tool_choices_by_name_and_honours_logit_bias(server, tiny_config):
    from transformers import AutoTokenizer

    from raygen.registry import Registry

    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for extra, param in (({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                           "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
                         ({"tool_choice": "required"}, "tool_choice")):
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


SMALL_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                                 "n": {"type": "integer", "minimum": 0, "maximum": 99}},
                "required": ["ok", "n"], "additionalProperties": False}


def test_structured_outputs_through_the_openai_client(server, tiny_config):
    """response_format json_schema / json_object, and vLLM's structured_outputs and guided_* fields (sent as
    extra_body, as vLLM's own docs show): chat and completions, streamed and not, n > 1. The tiny model's
    context is short, so an output cut by max_tokens (finish_reason "length") is allowed; every output that
    stopped parses and validates."""
    import openai
    from jsonschema import Draft202012Validator

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0)
    model = tiny_config.registry.name
    validator = Draft202012Validator(SMALL_SCHEMA)
    response_format = {"type": "json_schema", "json_schema": {"name": "flag", "schema": SMALL_SCHEMA, "strict": True}}
    finished = []
    for stream in (False, True):
        kw = dict(model=model, max_tokens=40, temperature=1.0, seed=11, n=3, response_format=response_format)
        if stream:
            texts, reasons = ["", "", ""], [None] * 3
            for chunk in client.chat.completions.create(messages=[{"role": "user", "content": "flag?"}], stream=True,
                                                        **kw):
                for c in chunk.choices:
                    texts[c.index] += c.delta.content or ""
                    reasons[c.index] = c.finish_reason or reasons[c.index]
        else:
            r = client.chat.completions.create(messages=[{"role": "user", "content": "flag?"}], **kw)
            texts, reasons = [c.message.content for c in r.choices], [c.finish_reason for c in r.choices]
        finished += list(zip(texts, reasons, strict=True))
    r = client.completions.create(model=model, prompt="The flag:", max_tokens=40, temperature=1.0, seed=5, n=4,
                                  extra_body={"structured_outputs": {"json": SMALL_SCHEMA}})
    finished += [(c.text, c.finish_reason) for c in r.choices]
    assert all(reason in ("stop", "length") for _, reason in finished), finished
    stopped = [t for t, reason in finished if reason == "stop"]
    assert len(stopped) >= len(finished) // 2, finished
    for text in stopped:
        validator.validate(json.loads(text))
    r = client.completions.create(model=model, prompt="Pick:", max_tokens=10, temperature=1.0, seed=1, n=6,
                                  extra_body={"guided_choice": ["red", "green", "blue"]})
    assert {c.text for c in r.choices} <= {"red", "green", "blue"} and all(c.finish_reason == "stop" for c in r.choices)
    r = client.completions.create(model=model, prompt="Code:", max_tokens=12, temperature=0.0,
                                  extra_body={"structured_outputs": {"regex": "[A-Z]{2}[0-9]{2}"}})
    assert re.fullmatch("[A-Z]{2}[0-9]{2}", r.choices[0].text), r.choices[0].text
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "any JSON"}], max_tokens=40,
                                       temperature=0.0, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def _hf_prompt_logprobs(model_dir, ids: list[int]) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1).tolist()


def test_echo_with_logprobs_scores_the_prompt_and_tokenize_round_trips(server, tiny_config):
    """What evaluation harnesses send: echo, logprobs, max_tokens 0 or 1, the prompt as text or ids. The
    prompt's logprobs match transformers' forward; /tokenize and /detokenize agree with the tokenizer."""
    from transformers import AutoTokenizer

    from raygen.registry import Registry

    model_dir = Registry(tiny_config.registry.root).local_dir(tiny_config.registry.name, "latest")
    tok = AutoTokenizer.from_pretrained(model_dir)
    text = "The with statement is used to wrap"

    def post(path, body):
        req = urllib.request.Request(f"{server}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    status, t = post("/tokenize", {"prompt": text, "return_token_strs": True})
    ids = tok(text)["input_ids"]
    assert status == 200 and t["tokens"] == ids and t["count"] == len(ids) and t["max_model_len"] >= 64
    assert t["token_strs"] == tok.convert_ids_to_tokens(ids)
    assert post("/detokenize", {"tokens": ids}) == (200, {"prompt": tok.decode(ids)})
    status, chat = post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and chat["count"] > 1
    for bad, param in (({"tokens": [10**7]}, "tokens"), ({"tokens": [1], "extra": 1}, "extra")):
        status, err = post("/detokenize", bad)
        assert status == 400 and err["error"]["param"] == param, err
    assert post("/tokenize", {"prompt": "x", "messages": []})[0] == 400

    ref = _hf_prompt_logprobs(model_dir, ids)
    for prompt, max_tokens in ((text, 0), (ids, 1)):
        status, body = post("/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, "echo": True,
                                                "logprobs": 2, "temperature": 0})
        assert status == 200, body
        c = body["choices"][0]
        lp = c["logprobs"]
        n = len(ids)
        assert c["text"].startswith(tok.decode(ids)) and lp["tokens"][:n] == [tok.decode([i]) for i in ids]
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert max(abs(a - b) for a, b in zip(lp["token_logprobs"][1:n], ref, strict=True)) < 1e-3
        assert all(len(top) <= 2 for top in lp["top_logprobs"][1:])
        if max_tokens == 0:
            assert len(lp["tokens"]) == n and c["text"] == tok.decode(ids) and c["finish_reason"] == "length"
            assert body["usage"]["completion_tokens"] == 0
        else:
            assert len(lp["tokens"]) == n + 1 and body["usage"]["completion_tokens"] == 1
    status, body = post("/v1/completions", {"prompt": ids, "max_tokens": 1, "prompt_logprobs": 1,
                                            "temperature": 0})
    plp = body["choices"][0]["prompt_logprobs"]
    assert status == 200 and plp[0] is None and len(plp) == len(ids)
    assert abs(plp[1][str(ids[1])]["logprob"] - ref[0]) < 1e-3 and "decoded_token" in plp[1][str(ids[1])]
    # Streamed: the prompt comes first, in the first chunk of the choice.
    req = urllib.request.Request(f"{server}/v1/completions", data=json.dumps(
        {"prompt": text, "max_tokens": 3, "echo": True, "stream": True, "temperature": 0}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.read().decode().splitlines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    assert events[0]["choices"][0]["text"].startswith(tok.decode(ids))
    assert post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "echo": True})[0] == 400


LM_EVAL_TASKS = """\
task: raygen_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {mc}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
---
task: raygen_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {gen}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_lm_evaluation_harness_scores_the_served_model(server, tiny_config, tmp_path, monkeypatch):
    """lm-eval's local-completions model, unchanged, on two tasks defined on disk: loglikelihoods (echo +
    logprobs, token-id prompts, the remote tokenizer through /tokenizer_info and /tokenize) that match
    transformers' own computation within 1e-3, and a generate_until task."""
    pytest.importorskip("lm_eval", reason="pip install lm-eval (the dev extra brings it)")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from raygen.registry import Registry

    mc = [{"question": "A list is", "choices": [" mutable", " a number", " frozen"], "answer": 0},
          {"question": "The with statement", "choices": [" opens", " calls the context manager"], "answer": 1},
          {"question": "def", "choices": [" f", " class"], "answer": 0}]
    gen = [{"question": "The for statement is", "answer": " used"}, {"question": "import", "answer": " os"}]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in mc))
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(d) + "\n" for d in gen))
    for i, part in enumerate(LM_EVAL_TASKS.format(mc=tmp_path / "mc.jsonl", gen=tmp_path / "gen.jsonl").split("---\n")):
        (tmp_path / f"task{i}.yaml").write_text(part)
    out = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={"base_url": f"{server}/v1/completions", "model": tiny_config.registry.name,
                    "tokenizer_backend": "auto", "num_concurrent": 1, "max_retries": 1},
        tasks=["raygen_mc", "raygen_gen"], task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True)
    assert set(out["results"]) == {"raygen_mc", "raygen_gen"}
    assert 0 <= out["results"]["raygen_mc"]["acc,none"] <= 1
    assert any(k.startswith("exact_match") for k in out["results"]["raygen_gen"]), out["results"]["raygen_gen"]

    model_dir = Registry(tiny_config.registry.root).local_dir(tiny_config.registry.name, "latest")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    checked = 0
    for sample in out["samples"]["raygen_mc"]:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"], strict=True):
            ll_served = resp[0][0]
            whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
            ctx = tok(context, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                lp = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
            ref = sum(lp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))
            assert abs(ll_served - ref) < 1e-3, (context, continuation, ll_served, ref)
            checked += 1
    assert checked == sum(len(d["choices"]) for d in mc)
    gens = [s["resps"][0][0] for s in out["samples"]["raygen_gen"]]
    assert len(gens) == 2 and all(isinstance(g, str) for g in gens)
