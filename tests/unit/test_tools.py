"""Tool-call parsing and constraints (serve/tools.py), pure: markup split across chunks at every position,
content around calls, broken markup kept as text, Llama-3 JSON, named and required choices, and the
OpenAI streaming delta shapes."""

from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator

from raygen.serve.tools import ToolStream, constraint, mode, parse_whole, pick_parser, stream_delta

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}

HERMES = ('Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
          '<tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call> Done.')


def run(stream: ToolStream, pieces: list[str]) -> tuple[str, list[tuple]]:
    events = [e for p in pieces for e in stream.feed(p)] + stream.finish()
    return "".join(e[1] for e in events if e[0] == "content"), [e for e in events if e[0] == "call"]


def test_hermes_markup_split_at_every_position_parses_the_same():
    for cut in range(1, len(HERMES)):
        for pieces in ([HERMES[:cut], HERMES[cut:]], [HERMES[i:i + 3] for i in range(0, len(HERMES), 3)]):
            s = ToolStream("hermes")
            content, calls = run(s, pieces)
            assert content == "Let me check.  Done.", (cut, content)
            assert [(c.name, json.loads(c.arguments)) for c in s.calls] == [
                ("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
            opened = [e for e in calls if e[3]]
            assert [e[1] for e in opened] == [0, 1]  # each call opens once, with its index


def test_hermes_arguments_stream_in_fragments_after_the_name():
    s = ToolStream("hermes")
    events = [e for ch in HERMES for e in s.feed(ch)] + s.finish()
    calls = [e for e in events if e[0] == "call"]
    first = [e for e in calls if e[1] == 0]
    assert first[0][3] and first[0][2].name == "get_weather"  # the name goes out first
    fragments = [e[4] for e in first[1:]]
    assert len(fragments) > 3 and json.loads("".join(fragments)) == {"city": "Paris"}
    assert not any(f.endswith("}}") for f in fragments)  # the outer object's brace is never sent
    assert "".join(e[1] for e in events if e[0] == "content") == "Let me check.  Done."
    # parse_whole (a whole response) parses each call whole; a call cut by max_tokens streams what it had
    s = ToolStream("hermes")
    events = s.feed('<tool_call>{"name": "get_time", "arguments": {"tz": "U') + s.finish()
    assert s.calls[0].name == "get_time" and s.calls[0].arguments == '{"tz": "U'


def test_content_streams_before_markup_completes_and_a_tag_prefix_is_held():
    s = ToolStream("hermes")
    assert s.feed("Hello <tool") == [("content", "Hello ")]  # "<tool" may start a tag: held
    assert s.feed("box> is not a tag") == [("content", "<toolbox> is not a tag")]
    assert s.finish() == []


def test_broken_or_unclosed_markup():
    content, calls = parse_whole('x <tool_call>{"name": oops}</tool_call> y', "hermes")
    assert calls == [] and content == 'x <tool_call>{"name": oops}</tool_call> y'  # kept as text, not lost
    content, calls = parse_whole('<tool_call>{"name": "get_time", "arguments": {}}', "hermes")  # EOS before close
    assert content is None and calls[0].name == "get_time" and calls[0].arguments == "{}"
    content, calls = parse_whole("<tool_call>{\"name\": \"get_ti", "hermes")  # cut by max_tokens
    assert calls == [] and content == "<tool_call>{\"name\": \"get_ti"


def test_llama3_json_whole_output_and_python_tag():
    content, calls = parse_whole('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "llama3_json")
    assert content is None and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    content, calls = parse_whole('<|python_tag|>{"name": "get_time", "parameters": {}}; '
                                 '{"name": "get_weather", "parameters": {"city": "Rome"}}', "llama3_json")
    assert [c.name for c in calls] == ["get_time", "get_weather"]
    s = ToolStream("llama3_json")
    assert s.feed("The weather") == [("content", "The weather")]  # not JSON: streams as content at once
    assert parse_whole("{not json", "llama3_json") == ("{not json", [])


def test_named_streams_arguments_as_they_come_and_required_parses_the_array():
    s = ToolStream("named", "get_weather")
    first = s.feed('{"ci')
    assert first[0][:2] == ("call", 0) and first[0][3] and first[1][4] == '{"ci'
    assert s.feed('ty": "Lima"}')[0][4] == 'ty": "Lima"}' and s.finish() == []
    assert json.loads(s.calls[0].arguments) == {"city": "Lima"}
    content, calls = parse_whole('[{"name": "get_time", "arguments": {"tz": "UTC"}}, '
                                 '{"name": "get_weather", "arguments": {"city": "Kyiv"}}]', "required")
    assert content is None and [c.name for c in calls] == ["get_time", "get_weather"]


def test_stream_delta_has_openai_shapes():
    s = ToolStream("hermes")
    events = s.feed('hi <tool_call>{"name": "get_time", "arguments": {"tz": "UTC"}}</tool_call>') + s.finish()
    d = stream_delta(events, first=True)
    assert d["role"] == "assistant" and d["content"] == "hi "
    opened, args = d["tool_calls"]
    assert opened["id"].startswith("call_") and opened["type"] == "function"
    assert opened["function"] == {"name": "get_time", "arguments": ""} and opened["index"] == 0
    assert args == {"index": 0, "function": {"arguments": '{"tz": "UTC"}'}}
    assert stream_delta([], first=False) == {}


def test_constraints_and_modes():
    tools = [WEATHER, TIME]
    named = constraint(tools, {"type": "function", "function": {"name": "get_weather"}}, True)
    assert json.loads(named.text) == WEATHER["parameters"] and named.param == "tool_choice"
    required = json.loads(constraint(tools, "required", True).text)
    v = Draft202012Validator(required)
    v.validate([{"name": "get_time", "arguments": {"tz": "x"}}, {"name": "get_weather", "arguments": {"city": "y"}}])
    assert not v.is_valid([{"name": "get_weather", "arguments": {}}]) and not v.is_valid([])
    single = json.loads(constraint(tools, "required", False).text)
    assert single["maxItems"] == 1
    assert constraint(tools, "auto", True) is None and constraint(tools, "none", True) is None
    assert mode("auto", "hermes") == "hermes" and mode("none", "hermes") is None and mode(None, "hermes") is None
    assert mode({"type": "function", "function": {"name": "f"}}, "hermes") == "named"
    assert pick_parser("auto", "{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert pick_parser("auto", "<|start_header_id|>ipython<|end_header_id|>") == "llama3_json"
    assert pick_parser("llama3_json", None) == "llama3_json"
    with pytest.raises(ValueError):
        ToolStream("xml")


def test_parallel_tool_calls_off_keeps_only_the_first_call_and_the_rest_as_text():
    content, calls = parse_whole(HERMES, "hermes", parallel=False)
    assert [c.name for c in calls] == ["get_weather"]
    assert content == 'Let me check. <tool_call>{"name": "get_time", "arguments": {"tz": "CET"}}</tool_call> Done.'
    s = ToolStream("hermes", parallel=False)  # streamed alike, split anywhere
    events = [e for ch in HERMES for e in s.feed(ch)] + s.finish()
    assert [c.name for c in s.calls] == ["get_weather"] and "".join(e[1] for e in events if e[0] == "content") == content
    content, calls = parse_whole('{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {}}',
                                 "llama3_json", parallel=False)
    assert [c.name for c in calls] == ["get_time"] and content == '; {"name": "get_weather", "parameters": {}}'
