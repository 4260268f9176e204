"""The serving graph as a gateway: the official openai client, auth, every error status, rate limits,
the response cache, input safety, disconnects freeing KV blocks, and the web UI (headless chromium)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.conftest import chat_page, send_and_wait

pytestmark = pytest.mark.integration

KEY, LIMITED, OTHER_MODEL = "sk-test-main", "sk-test-limited", "sk-test-other"
RPM = 30


@pytest.fixture(scope="module")
def gateway_server(trained, tiny_config, tmp_path_factory):
    from ray import serve

    from raygen.registry import Registry
    from raygen.serve import app
    from raygen.workflow import wait_ready

    Registry(tiny_config.registry.root).set_alias(tiny_config.registry.name, "production", trained[2])

    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"main:{KEY}::admin\nlimited:{LIMITED}\nother:{OTHER_MODEL}:someone-else\n")
    cfg = tiny_config.model_copy(deep=True)
    s = cfg.serve
    s.auth.keys_file = str(keys)
    s.rate_limit.requests_per_minute = RPM
    s.safety.blocklist = ["zebra unicorn"]
    s.max_prompt_tokens = 40
    s.ingress_replicas = 2  # the rate limit and cache must hold across both
    s.version = "production"
    url = app.run(cfg)
    wait_ready(url)
    yield url
    serve.shutdown()


def post(url, path, body, key=KEY, headers=None, raw=None):
    h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    req = urllib.request.Request(url + path, data=raw if raw is not None else json.dumps(body).encode(), headers=h)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_official_openai_client_works_unchanged(gateway_server):
    import openai

    client = openai.OpenAI(base_url=gateway_server + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["demo"]
    c = client.completions.create(model="demo", prompt="The with statement", max_tokens=8, temperature=0)
    assert c.choices[0].finish_reason in ("stop", "length") and c.usage.completion_tokens >= 1
    chat = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "What is a class?"}],
                                          max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
    assert chat.choices[0].message.role == "assistant" and isinstance(chat.choices[0].message.content, str)
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    pieces = list(client.chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "Explain loops"}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(p.choices[0].delta.content or "" for p in pieces if p.choices)
    assert pieces[-1].usage.completion_tokens >= 1 and pieces[0].choices[0].delta.role == "assistant"
    again = client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Explain loops"}],
                                           max_tokens=12, temperature=0)
    assert again.choices[0].message.content == text
    stream = client.completions.create(model="demo", prompt="A list", max_tokens=6, temperature=0, stream=True)
    assert "".join(p.choices[0].text for p in stream)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway_server + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="demo", prompt="x", max_tokens=1, temperature=5)


@pytest.mark.parametrize("case,key,body,raw,status,code", [
    ("no key", None, {"prompt": "x"}, None, 401, "missing_api_key"),
    ("bad key", "nope", {"prompt": "x"}, None, 401, "invalid_api_key"),
    ("key scoped to another model", OTHER_MODEL, {"prompt": "x"}, None, 403, "model_not_allowed"),
    ("unknown model", KEY, {"prompt": "x", "model": "gpt-9"}, None, 404, "model_not_found"),
    ("body too large", KEY, None, b'{"prompt": "' + b"x" * 1_100_000 + b'"}', 413, None),
    ("prompt too large", KEY, {"prompt": list(range(41)), "max_tokens": 1}, None, 413, "prompt_too_large"),
    ("bad json", KEY, None, b"{oops", 400, None),
    ("bad parameter", KEY, {"prompt": "x", "top_p": 0}, None, 400, None),
    ("blocked prompt", KEY, {"prompt": "tell me about the Zebra Unicorn"}, None, 400, "content_policy_violation"),
    ("hostile types", KEY, {"prompt": {"$ne": 1}, "n": "many"}, None, 400, None),
    ("bad chat role", KEY, {"messages": [{"role": "wizard", "content": "hi"}]}, None, 400, None),
])
def test_error_statuses_use_openai_bodies(gateway_server, case, key, body, raw, status, code):
    path = "/v1/chat/completions" if body and "messages" in body else "/v1/completions"
    got, _, data = post(gateway_server, path, body, key=key, raw=raw)
    assert got == status, (case, data)
    err = json.loads(data)["error"]
    assert err["message"] and (code is None or err["code"] == code), err


def test_rate_limit_is_shared_by_ingress_replicas_and_says_when_to_retry(gateway_server):
    statuses, last = [], {}
    for _ in range(RPM + 10):
        status, headers, _ = post(gateway_server, "/v1/completions", {"prompt": "x", "max_tokens": 1, "seed": 1},
                                  key=LIMITED, headers={"Cache-Control": "no-cache"})
        statuses.append(status)
        last = headers if status == 429 else last
    admitted = statuses.count(200)
    # A full bucket of RPM, plus what refills while the loop runs (a request every ~0.1-0.3 s at 0.5/s).
    assert RPM <= admitted <= RPM + 6, statuses
    assert statuses.count(429) >= 4 and int(last["retry-after"]) >= 1
    assert last["x-ratelimit-limit-requests"] == str(RPM)
    assert post(gateway_server, "/v1/completions", {"prompt": "x", "max_tokens": 1})[0] == 200  # per key


def test_response_cache_hits_identical_and_fast_and_a_new_seed_misses(gateway_server):
    body = {"prompt": "The def statement", "max_tokens": 16, "temperature": 0.8, "seed": 11}
    s1, h1, b1 = post(gateway_server, "/v1/completions", body)
    s2, h2, b2 = post(gateway_server, "/v1/completions", body)
    assert s1 == s2 == 200 and h2.get("x-raygen-cache") == "hit" and "x-raygen-cache" not in h1
    one, two = json.loads(b1), json.loads(b2)
    assert {**one, "id": "", "created": 0} == {**two, "id": "", "created": 0}
    # The same request with defaults spelled out and the model named is the same entry.
    _, h_same, _ = post(gateway_server, "/v1/completions", {**body, "top_p": 1.0, "n": 1, "stream": False,
                                                             "model": one["model"]})
    assert h_same.get("x-raygen-cache") == "hit"
    _, h3, _ = post(gateway_server, "/v1/completions", {**body, "seed": 12})
    assert "x-raygen-cache" not in h3
    _, h4, _ = post(gateway_server, "/v1/completions", body, headers={"Cache-Control": "no-cache"})
    assert "x-raygen-cache" not in h4
    # A stream request replays the cached answer as a stream.
    _, h5, raw = post(gateway_server, "/v1/completions", {**body, "stream": True})
    events = [ln[6:] for ln in raw.decode().splitlines() if ln.startswith("data: ")]
    assert h5.get("x-raygen-cache") == "hit" and events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == one["choices"][0]["text"]


def test_client_disconnect_frees_kv_blocks(gateway_server):
    from ray import serve

    from raygen.serve.app import APP_NAME

    llm = serve.get_deployment_handle("LLMServer", APP_NAME)  # one model replica in this app
    aborted = llm.stats.remote().result()["num_aborted"]
    host, port = gateway_server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "The class", "max_tokens": 48, "stream": True,
                                                        "ignore_eos": True, "n": 4}),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    conn.close()  # the client goes away mid-stream (after the first of 4 x 48 tokens)
    deadline = time.time() + 30
    while time.time() < deadline:
        st = llm.stats.remote().result()
        if st["num_running"] == st["num_waiting"] == 0 and st["num_free_blocks"] == st["num_blocks"]:
            break
        time.sleep(0.2)
    assert st["num_free_blocks"] == st["num_blocks"], st
    assert st["num_aborted"] == aborted + 1, st  # the request was aborted, not run to its end


def test_ready_and_admin_cache_invalidation(gateway_server):
    with urllib.request.urlopen(gateway_server + "/ready", timeout=30) as r:
        assert json.loads(r.read())["status"] == "ready"
    assert post(gateway_server, "/admin/cache/invalidate", {}, key=LIMITED)[0] == 403
    status, _, body = post(gateway_server, "/admin/cache/invalidate", {})
    assert status == 200 and json.loads(body)["invalidated"] >= 1


def test_web_ui_streams_a_reply_in_headless_chromium(gateway_server):
    with chat_page(gateway_server) as page:
        page.fill("#key", KEY)
        page.dispatch_event("#key", "change")
        page.wait_for_function("document.querySelector('#model').options.length > 0", timeout=30_000)
        page.fill("#max_tokens", "16")
        page.fill("#prompt", "What does a for loop do?")
        status = send_and_wait(page)
        assert status.startswith("finish"), status
        reply = page.text_content(".msg.assistant")
        assert reply and reply.strip(), status
        assert "chunks" in status


def test_python_clients_http_sync_async_and_handle(gateway_server):
    import asyncio

    from raygen.client import AsyncClient, Client, HandleClient
    from raygen.errors import RequestError

    with Client(gateway_server, api_key=KEY) as c:
        assert c.models() == ["demo"]
        whole = c.complete("The import system", max_tokens=10, temperature=0)["choices"][0]["text"]
        assert "".join(c.stream("The import system", max_tokens=10, temperature=0)) == whole
        assert c.chat([{"role": "user", "content": "hi"}], max_tokens=4)["choices"][0]["message"]["role"] == "assistant"
        with pytest.raises(RequestError) as e:
            c.complete("x", max_tokens=10**6)
        assert e.value.status == 400 and e.value.param == "max_tokens"

    async def main():
        async with AsyncClient(gateway_server, api_key=KEY) as ac:
            pieces = [p async for p in ac.stream_chat([{"role": "user", "content": "hi"}], max_tokens=6, temperature=0)]
            chat = await ac.chat([{"role": "user", "content": "hi"}], max_tokens=6, temperature=0,
                                 extra_field_ignored=True)
            assert "".join(pieces) == chat["choices"][0]["message"]["content"]
        assert await HandleClient().complete("The import system", max_tokens=10, temperature=0) == whole

    asyncio.run(main())


def test_structured_output_streams_whole_through_the_output_safety_guard(gateway_server):
    """The output guard holds back text that may start a blocked phrase; a JSON-constrained stream through it
    arrives whole and parses (the guard composes with structured outputs)."""
    body = {"messages": [{"role": "user", "content": "flag"}], "max_tokens": 40, "temperature": 0.7, "seed": 2,
            "stream": True, "response_format": {"type": "json_schema", "json_schema": {"name": "f", "schema": {
                "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
                "additionalProperties": False}}}}
    status, _, raw = post(gateway_server, "/v1/chat/completions", body, headers={"Cache-Control": "no-cache"})
    assert status == 200, raw
    text, finish = "", None
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for c in json.loads(line[6:]).get("choices", []):
                text += c["delta"].get("content") or ""
                finish = c["finish_reason"] or finish
    assert finish == "stop" and json.loads(text) in ({"ok": True}, {"ok": False}), (finish, text)
