import json

import pytest

from raygen.errors import RequestError, as_request_error
from raygen.serve.protocol import parse_request
from raygen.train.schedule import lr_factor


def test_valid_request_defaults():
    r = parse_request({"prompt": "hi", "stop": "\n"})
    assert r.stop == ["\n"] and r.temperature == 1.0 and not r.stream
    assert parse_request({"prompt": ["one"]}).prompt == "one"


@pytest.mark.parametrize("body,param", [
    ({}, "prompt"), ({"prompt": ""}, "prompt"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"), ({"prompt": "x", "stop": ["a"] * 5}, "stop"),
    ({"prompt": ["a", "b"]}, "prompt"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "logprobs": 50}, "logprobs"), ({"prompt": "x", "n": 0}, "n"),
])
def test_invalid_requests_name_the_field(body, param):
    with pytest.raises(RequestError) as e:
        parse_request(body)
    assert e.value.status == 400 and e.value.param == param and param in e.value.message


def test_non_object_body_and_pickling():
    import pickle

    with pytest.raises(RequestError):
        parse_request([1, 2])
    err = pickle.loads(pickle.dumps(RequestError("nope", status=404, param="model")))
    assert (err.status, err.param, err.message) == (404, "model", "nope")
    assert as_request_error(ValueError()) is None


def test_lr_schedule_warmup_then_cosine_to_floor():
    assert lr_factor(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.1) == pytest.approx(0.55)


CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("route,extra,param", [
    ("text", {"suffix": "after"}, "suffix"),
    ("text", {"best_of": 3}, "best_of"),
    ("text", {"best_of": 2, "n": 1}, "best_of"),
    ("text", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("text", {"guided_json": "{not json"}, "guided_json"),
    ("text", {"guided_regex": "a+", "response_format": {"type": "json_object"}}, "guided_regex"),
    ("text", {"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
    ("text", {"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag"),
    ("text", {"structured_outputs": {"choice": ["ok", ""]}}, "structured_outputs.choice"),
    ("text", {"guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
    ("text", {"guided_whitespace_pattern": " *"}, "guided_whitespace_pattern"),
    ("text", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("text", {"stream": True, "stream_options": {"include_usage": True, "usage_every": 2}},
     "stream_options.usage_every"),
    ("text", {"seed": 2**64}, "seed"),
    ("text", {"seed": -(2**63) - 1}, "seed"),
    ("text", {"logit_bias": {"x": 1}}, "logit_bias"),
    ("text", {"logit_bias": {"3": 100.5}}, "logit_bias"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}] * 2}, "tools"),
    ("chat", {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required",
              "guided_regex": "x"}, "tool_choice"),
    ("chat", {"tool_choice": "required"}, "tool_choice"),
    ("chat", {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    ("chat", {"functions": [{"name": "f"}]}, "functions"),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
     "response_format.json_schema"),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": [], "strict": True}}},
     "response_format.json_schema.schema"),
    ("chat", {"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "format": "y"}}},
     "response_format.json_schema.format"),
    ("chat", {"echo": True}, "echo"),
    ("chat", {"top_logprobs": 3}, "top_logprobs"),
    ("chat", {"reasoning_effort": "high"}, "reasoning_effort"),
    ("chat", {"modalities": ["text", "audio"]}, "modalities"),
    ("chat", {"store": True}, "store"),
    ("chat", {"prediction": {"type": "content", "content": "x"}}, "prediction"),
])
def test_fields_raygen_does_not_implement_are_refused_by_name(route, extra, param):
    """Never accepted and dropped: a client asking for JSON or a tool call must not get free text."""
    from raygen.serve.protocol import ChatCompletionRequest, CompletionRequest

    body = {**(CHAT if route == "chat" else {"prompt": "x"}), **extra}
    with pytest.raises(RequestError) as e:
        parse_request(body, ChatCompletionRequest if route == "chat" else CompletionRequest)
    assert e.value.status == 400 and e.value.param == param and param in e.value.message, e.value.message


def test_structured_output_fields_become_one_grammar_spec():
    """OpenAI's response_format and vLLM's structured_outputs / guided_* name the same constraints."""
    from raygen.engine.request import GrammarSpec
    from raygen.serve.protocol import ChatCompletionRequest

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    cases = [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}}},
         GrammarSpec("json_schema", json.dumps(schema))),
        ({"response_format": {"type": "json_object"}}, GrammarSpec("json_object")),
        ({"structured_outputs": {"json": schema}}, GrammarSpec("json_schema", json.dumps(schema))),
        ({"guided_json": json.dumps(schema)}, GrammarSpec("json_schema", json.dumps(schema))),
        ({"guided_regex": "[a-z]+", "guided_decoding_backend": "guidance"}, GrammarSpec("regex", "[a-z]+")),
        ({"structured_outputs": {"choice": ["a", "é"], "regex": None}}, GrammarSpec("choice", '["a", "é"]')),
        ({"guided_grammar": 'root ::= "x"'}, GrammarSpec("grammar", 'root ::= "x"')),
        ({"response_format": {"type": "text"}, "structured_outputs": {"json_object": True}}, GrammarSpec("json_object")),
        ({"response_format": {"type": "text"}}, None),
    ]
    for extra, spec in cases:
        assert parse_request({"prompt": "x", **extra}).grammar_spec == spec, extra
        assert parse_request({**CHAT, **extra}, ChatCompletionRequest).grammar_spec == spec, extra
    got = parse_request({"prompt": "x", "structured_outputs": {"regex": "a"}}).grammar_spec
    assert got.param == "structured_outputs.regex"  # errors from the compiler name the field


def test_unused_values_of_refused_fields_and_unknown_extras_pass():
    from raygen.serve.protocol import ChatCompletionRequest

    parse_request({"prompt": "x", "suffix": None, "best_of": 2, "n": 2, "seed": 2**63 - 1, "made_up_field": 1})
    r = parse_request({**CHAT, "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
                       "parallel_tool_calls": True, "modalities": ["text"], "service_tier": "auto",
                       "logit_bias": {"7": -100, "9": 2.5}, "user": "u-1"}, ChatCompletionRequest)
    assert r.token_bias == {7: -100, 9: 2.5}


@pytest.mark.parametrize("raw,why", [
    (b'{"prompt": "\\ud800"}', "surrogate"),
    (b'{"prompt": "ok", "stop": ["\\udfff x"]}', "surrogate"),
    (b'{"\\ud800": 1, "prompt": "x"}', "surrogate"),
    (b"[" * 100_000, "deeper"),
    (b"[" * 5_000 + b"]" * 5_000, "deeper"),
    (b'{"prompt": ' + b'{"a": ' * 40 + b"1" + b"}" * 41, "deeper"),
    (b"\xff\xfe", "not valid JSON"),
    (b"", "not valid JSON"),
])
def test_hostile_json_bodies_are_400s_that_say_why(raw, why):
    from raygen.serve.protocol import load_json

    with pytest.raises(RequestError) as e:
        load_json(raw)
    assert e.value.status == 400 and why in e.value.message


def test_valid_unicode_and_surrogate_pairs_load():
    from raygen.serve.protocol import load_json

    assert load_json(b'{"prompt": "\\ud83d\\ude00 caf\\u00e9 \xe6\x97\xa5"}')["prompt"] == "😀 café 日"


def test_logit_bias_moves_the_sampled_token(tmp_path):
    """logit_bias is honoured by the engine: +100 on one token makes greedy pick it; -100 bans the argmax."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from raygen.engine.engine import EngineConfig, LLMEngine
    from raygen.engine.request import SamplingParams

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=100,
                                                initializer_range=0.3)).save_pretrained(tmp_path)
    eng = LLMEngine(EngineConfig(str(tmp_path), dtype="float32", block_size=4))
    plain = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0))[0][0].token_ids
    forced = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0, logit_bias={42: 100}))
    assert forced[0][0].token_ids == [42] * 4
    banned = eng.generate([[1, 2, 3]], SamplingParams(max_tokens=1, temperature=0, logit_bias={plain[0]: -100}))
    assert banned[0][0].token_ids[0] != plain[0]
    with pytest.raises(ValueError, match="logit_bias"):
        eng.add_request("bad", [1], SamplingParams(logit_bias={100: 1.0}))


def test_tokenize_refuses_a_field_its_input_does_not_use():
    from raygen.serve.protocol import TokenizeRequest

    with pytest.raises(RequestError) as e:
        parse_request({"prompt": "x", "add_generation_prompt": False}, TokenizeRequest)
    assert e.value.param == "add_generation_prompt"
    assert parse_request({"messages": [{"role": "user", "content": "x"}], "add_special_tokens": True},
                         TokenizeRequest).add_special_tokens
