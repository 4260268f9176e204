"""Tool calling through the whole serving graph with the official openai client, on a random-init GPT-2
with a 1k context (the session's trained model has 64 tokens: too few for a prompt that lists tools):
forced calls (named and required) with arguments valid for their schemas, streamed and not; `auto` with
the model's own markup in the output, split across streamed chunks; follow-up turns with tool results;
and the refusals."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from tests.integration.conftest import TINY, chat_page, free_port, send_and_wait
from tests.structured_schemas import WEATHER_ARGS

pytestmark = pytest.mark.integration

TIME_ARGS = {"type": "object", "properties": {"tz": {"enum": ["UTC", "CET", "JST"]}}, "required": ["tz"],
             "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": WEATHER_ARGS}},
         {"type": "function", "function": {"name": "get_time", "description": "Time in a zone",
                                           "parameters": TIME_ARGS}}]
SCHEMAS = {"get_weather": WEATHER_ARGS, "get_time": TIME_ARGS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(ray_cluster, tmp_path_factory):
    import openai
    import pydoc_data.topics
    import torch
    from ray import serve
    from transformers import AutoModelForCausalLM, GPT2Config

    from raygen.config import load_config
    from raygen.data.features import train_tokenizer
    from raygen.registry import Registry
    from raygen.serve import app
    from raygen.workflow import wait_ready

    home = tmp_path_factory.mktemp("tools_api")
    model_dir = home / "gpt2-1k"
    tok = train_tokenizer(pydoc_data.topics.topics.values(), 1024, str(model_dir))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=1024, vocab_size=len(tok), bos_token_id=None,
        eos_token_id=None, pad_token_id=None)).save_pretrained(model_dir)
    Registry(home / "models").register("toolsmodel", model_dir, None, {"source": "test_tools_api random init"})
    cfg = load_config(None, TINY + [f"registry.root={home}/models", "registry.name=toolsmodel",
                                    f"serve.port={free_port()}", "serve.max_tokens_limit=256",
                                    "serve.rate_limit.enabled=false", "serve.cache.enabled=false"])
    url = app.run(cfg)
    wait_ready(url)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    client.raygen_url = url
    yield client
    serve.shutdown()


def _streamed_calls(stream) -> tuple[str, list[dict], str | None, list[list[str]]]:
    """(content, calls by index {id, name, arguments}, finish_reason, the order of fields per call)."""
    content, calls, finish, order = "", {}, None, {}
    for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for t in c.delta.tool_calls or []:
                call = calls.setdefault(t.index, {"id": None, "name": None, "arguments": ""})
                seen = order.setdefault(t.index, [])
                if t.id:
                    call["id"], call["name"] = t.id, t.function.name
                    seen.append("name")
                if t.function and t.function.arguments:
                    call["arguments"] += t.function.arguments
                    seen.append("arguments")
            finish = c.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish, [order[i] for i in sorted(order)]


def test_a_named_tool_choice_yields_valid_arguments_streamed_and_not(client):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    for seed in range(3):
        r = client.chat.completions.create(model="toolsmodel", messages=ASK, tools=TOOLS, tool_choice=choice,
                                           max_tokens=96, temperature=1.0, seed=seed)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        Draft202012Validator(WEATHER_ARGS).validate(json.loads(call.function.arguments))
    content, calls, finish, order = _streamed_calls(client.chat.completions.create(
        model="toolsmodel", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=96, temperature=1.0, seed=9,
        stream=True))
    assert finish == "tool_calls" and content == "" and len(calls) == 1 and calls[0]["name"] == "get_weather"
    assert order[0][0] == "name" and order[0].count("arguments") > 1  # the name first, then fragments
    Draft202012Validator(WEATHER_ARGS).validate(json.loads(calls[0]["arguments"]))


def test_required_yields_calls_of_the_given_tools(client):
    names = set()
    for seed in range(4):
        r = client.chat.completions.create(model="toolsmodel", messages=ASK, tools=TOOLS, tool_choice="required",
                                           max_tokens=160, temperature=1.0, seed=seed, parallel_tool_calls=False)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and len(c.message.tool_calls) == 1, c
        call = c.message.tool_calls[0]
        Draft202012Validator(SCHEMAS[call.function.name]).validate(json.loads(call.function.arguments))
        names.add(call.function.name)
    _, calls, finish, _ = _streamed_calls(client.chat.completions.create(
        model="toolsmodel", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=200, temperature=1.0,
        seed=5, stream=True))
    assert finish == "tool_calls" and calls
    for call in calls:
        Draft202012Validator(SCHEMAS[call["name"]]).validate(json.loads(call["arguments"]))


def test_auto_parses_the_models_markup_even_split_across_chunks(client):
    """A random model does not write markup on its own: a regex (vLLM's structured_outputs) makes it, and
    the markup then streams token by token through the parser."""
    markup = r'I will check\. <tool_call>\{"name": "get_weather", "arguments": \{"city": "[a-z]{2,6}", ' \
             r'"unit": "celsius"\}\}</tool_call>'
    extra = {"structured_outputs": {"regex": markup}}
    r = client.chat.completions.create(model="toolsmodel", messages=ASK, tools=TOOLS, max_tokens=120,
                                       temperature=0.8, seed=1, extra_body=extra)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content == "I will check. ", c
    args = json.loads(c.message.tool_calls[0].function.arguments)
    assert c.message.tool_calls[0].function.name == "get_weather" and args["unit"] == "celsius"
    content, calls, finish, order = _streamed_calls(client.chat.completions.create(
        model="toolsmodel", messages=ASK, tools=TOOLS, max_tokens=120, temperature=0.8, seed=1, stream=True,
        extra_body=extra))
    assert content == "I will check. " and finish == "tool_calls"
    assert order[0][0] == "name" and order[0].count("arguments") > 1  # the arguments stream as the model writes
    assert json.loads(calls[0]["arguments"]) == args  # same seed, same call
    # tool_choice none: the same output is content, unparsed
    r = client.chat.completions.create(model="toolsmodel", messages=ASK, tools=TOOLS, tool_choice="none",
                                       max_tokens=120, temperature=0.8, seed=1, extra_body=extra)
    assert r.choices[0].message.tool_calls is None and "<tool_call>" in r.choices[0].message.content


def test_a_follow_up_turn_with_the_tool_result(client):
    r = client.chat.completions.create(model="toolsmodel", messages=ASK, tools=TOOLS, max_tokens=60, temperature=0,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    call = r.choices[0].message.tool_calls[0]
    turn = ASK + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                  {"role": "tool", "tool_call_id": call.id, "content": '{"time": "12:00"}'}]
    r = client.chat.completions.create(model="toolsmodel", messages=turn, tools=TOOLS, max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens > 40


def test_the_chat_page_shows_tool_calls(client):
    with chat_page(client.raygen_url) as page:
        page.wait_for_function("document.querySelector('#model').options.length > 0", timeout=30_000)
        page.fill("#max_tokens", "256")
        page.fill("#tools", json.dumps(TOOLS[1:]))  # get_time: an enum argument, a short call
        page.select_option("#tool_choice", "required")
        page.fill("#prompt", "Weather in Paris?")
        status = send_and_wait(page)
        assert status.startswith("finish: tool_calls"), status
        shown = page.text_content(".msg.tool")
        assert shown.startswith("tool call get_time({") and shown.endswith("})"), shown


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools"),
    ({"response_format": {"type": "json_object"}, "tool_choice": "required"}, "tool_choice"),
    ({"messages": ASK + [{"role": "tool", "content": "x"}]}, "messages.tool_call_id"),
])
def test_bad_tool_requests_are_refused_by_name(client, extra, param):
    import openai

    body = {"model": "toolsmodel", "messages": ASK, "tools": TOOLS, "max_tokens": 8, **extra}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**body)
    assert e.value.body["param"] == param, e.value.body
