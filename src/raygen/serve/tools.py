"""Tool calling for chat completions: what a `tool_choice` constrains the output to, and parsers that turn
a model's output into OpenAI `tool_calls`, whole or streamed. Pure Python: no Ray, no torch.

    tool_choice      the output                          parsed by
    none             free text                           nothing (content)
    auto             free text, maybe tool-call markup   the model's parser: hermes (<tool_call>{json}
                                                         </tool_call>, Qwen/Hermes/raygen's template) or
                                                         llama3_json (the whole output one {"name",
                                                         "parameters"} object, optionally after <|python_tag|>)
    required         a JSON array of {name, arguments}   `required` (constrained by a JSON schema, so it parses)
    {function: f}    f's arguments as JSON               `named` (constrained by f's parameter schema)

A streamed choice goes through `ToolStream`: text before markup streams as content at once, a call is
sent as OpenAI does (a first delta with id, type and name, then its arguments), and markup split across
chunks is held until it is whole.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from raygen.engine.request import GrammarSpec
from raygen.errors import ConfigError

HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
PARSERS = ("hermes", "llama3_json")


def pick_parser(configured: str, chat_template: str | None) -> str:
    """serve.tool_parser: hermes | llama3_json | auto (llama3_json for Llama-3 style templates, else hermes)."""
    if configured != "auto":
        return configured
    t = chat_template or ""
    return "llama3_json" if ("<|python_tag|>" in t or "ipython" in t) and HERMES_OPEN not in t else "hermes"


def constraint(tools: list[dict], choice, parallel: bool) -> GrammarSpec | None:
    """The grammar a tool_choice imposes: tools are OpenAI function definitions ({name, description,
    parameters}); None for none/auto."""
    if choice in (None, "none", "auto"):
        return None
    if isinstance(choice, dict):
        name = choice["function"]["name"]
        params = next(t for t in tools if t["name"] == name).get("parameters") or {"type": "object"}
        return GrammarSpec("json_schema", json.dumps(params, ensure_ascii=False), "tool_choice")
    calls = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                               "arguments": t.get("parameters") or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema = {"type": "array", "minItems": 1, "items": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    if not parallel:
        schema["maxItems"] = 1
    return GrammarSpec("json_schema", json.dumps(schema, ensure_ascii=False), "tools")


def mode(choice, parser: str) -> str | None:
    """How a choice's output is parsed: None (no tools), named, required, or the model's parser for auto."""
    if choice in (None, "none"):
        return None
    if isinstance(choice, dict):
        return "named"
    return "required" if choice == "required" else parser


@dataclass
class Call:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def _call(obj, args_key: str = "arguments") -> Call | None:
    """A parsed {name, arguments} object as a Call; None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    return Call(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))


def _held_tag_prefix(text: str, tag: str) -> int:
    """How many trailing characters of text could start tag (held back: the next chunk may complete it)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ToolStream:
    """One choice's output, fed as it streams. feed()/finish() return events: ("content", text) or
    ("call", index, Call, first, arguments) — first=True opens the call (id, name), the arguments follow."""

    def __init__(self, mode: str, named: str | None = None, incremental: bool = True, parallel: bool = True):
        """incremental: a hermes call opens as soon as its name is read and its arguments stream as they
        come (what a client sees); off, each call is parsed whole at its close tag, and markup whose JSON
        does not parse stays text (a whole response). parallel (the request's parallel_tool_calls): off,
        only the first call is one; what follows it stays text."""
        if mode not in ("named", "required", *PARSERS):
            raise ConfigError(f"unknown tool-call mode {mode!r}; use named, required, {' or '.join(PARSERS)}")
        self.mode, self.named = mode, named
        self.calls: list[Call] = []
        self._buf = ""
        self._in_call = False
        self._started = False  # named: the call was opened
        self._decided = False  # llama3_json: whether the output is a call (starts with { or the python tag)
        self._open: Call | None = None  # hermes: the call whose arguments are streaming
        self.incremental = incremental
        self.parallel = parallel
        self._json_mode = False

    # -- feeding --------------------------------------------------------------------------------------
    def feed(self, text: str) -> list[tuple]:
        if self.mode == "named":
            return self._named(text)
        self._buf += text
        if self.mode == "required":
            return []  # a JSON array: parsed whole at the end
        if self.mode == "llama3_json":
            return self._llama(final=False)
        return self._hermes(final=False)

    def finish(self) -> list[tuple]:
        if self.mode == "named":
            return [] if self._started else self._named("")
        if self.mode == "required":
            return self._required()
        if self.mode == "llama3_json":
            return self._llama(final=True)
        return self._hermes(final=True)

    # -- modes ----------------------------------------------------------------------------------------
    def _named(self, text: str) -> list[tuple]:
        out = []
        if not self._started:
            self._started = True
            self.calls.append(Call(self.named, ""))
            out.append(("call", 0, self.calls[0], True, ""))
        if text:
            self.calls[0].arguments += text
            out.append(("call", 0, self.calls[0], False, text))
        return out

    def _emit_call(self, call: Call) -> list[tuple]:
        self.calls.append(call)
        i = len(self.calls) - 1
        return [("call", i, call, True, ""), ("call", i, call, False, call.arguments)]

    def _required(self) -> list[tuple]:
        try:
            items = json.loads(self._buf)
        except json.JSONDecodeError:
            return [("content", self._buf)] if self._buf else []  # cut by max_tokens: the text as it is
        out = []
        for item in items if isinstance(items, list) else [items]:
            call = _call(item)
            if call is None:
                return [("content", self._buf)]
            out += self._emit_call(call)
        return out

    def _hermes(self, final: bool) -> list[tuple]:
        out = []
        while True:
            if not self._in_call:
                i = self._buf.find(HERMES_OPEN) if self.parallel or not self.calls else -1
                if i < 0:
                    hold = 0 if final else _held_tag_prefix(self._buf, HERMES_OPEN)
                    text, self._buf = self._buf[:len(self._buf) - hold], self._buf[len(self._buf) - hold:]
                    if text:
                        out.append(("content", text))
                    return out
                if i:
                    out.append(("content", self._buf[:i]))
                self._buf, self._in_call = self._buf[i + len(HERMES_OPEN):], True
            if self._open is not None:  # a call whose name went out: its arguments stream as they come
                if not self._stream_arguments(out, final):
                    return out
                continue
            j = self._buf.find(HERMES_CLOSE)
            head = _HEAD.match(self._buf) if self.incremental else None
            if head and (j < 0 or head.end() <= j):  # {"name": "...", "arguments": seen: open the call now
                self._open = Call(json.loads(head.group(1)), "")
                self.calls.append(self._open)
                out.append(("call", len(self.calls) - 1, self._open, True, ""))
                self._buf = self._buf[head.end():]
                continue
            if j < 0:
                if final:  # the model stopped inside a call: a whole JSON object still counts
                    call = _try_call(self._buf)
                    out += self._emit_call(call) if call else [("content", HERMES_OPEN + self._buf)]
                    self._buf = ""
                return out
            body, self._buf, self._in_call = self._buf[:j], self._buf[j + len(HERMES_CLOSE):], False
            call = _try_call(body)
            out += self._emit_call(call) if call else [("content", HERMES_OPEN + body + HERMES_CLOSE)]

    def _stream_arguments(self, out: list, final: bool) -> bool:
        """Send the open call's arguments received so far, holding back what may be the object's closing
        brace and the close tag; True when the call ended (go on parsing what follows it)."""
        j = self._buf.find(HERMES_CLOSE)
        if j >= 0 or final:
            end = j if j >= 0 else len(self._buf)
            self._send_arguments(out, _without_outer_brace(self._buf[:end]))
            self._buf = self._buf[end + len(HERMES_CLOSE):] if j >= 0 else ""
            self._open, self._in_call = None, False
            return j >= 0
        text = self._buf[:len(self._buf) - _held_tag_prefix(self._buf, HERMES_CLOSE)]
        body = text.rstrip()
        keep = len(body) - 1 if body.endswith("}") else len(text)  # a final "}" may close the outer object
        self._send_arguments(out, self._buf[:keep])
        self._buf = self._buf[keep:]
        return False

    def _send_arguments(self, out: list, text: str) -> None:
        if text:
            self._open.arguments += text
            out.append(("call", self.calls.index(self._open), self._open, False, text))

    def _llama(self, final: bool) -> list[tuple]:
        if not self._decided:
            head = self._buf.lstrip()
            if not head and not final:
                return []
            if head.startswith(PYTHON_TAG) or head.startswith("{"):
                self._json_mode = True
            elif not final and PYTHON_TAG.startswith(head):
                return []  # could still become the tag
            self._decided = True
        if not self._json_mode:
            text, self._buf = self._buf, ""
            return [("content", text)] if text else []
        if not final:
            return []
        body = self._buf.strip().removeprefix(PYTHON_TAG)
        parts = body.split(";")  # Llama 3.1 separates parallel calls with ';'
        calls = [_try_call(part, "parameters") for part in parts]
        if None in calls:
            return [("content", self._buf)]
        keep = len(calls) if self.parallel else 1
        out = [e for call in calls[:keep] for e in self._emit_call(call)]
        rest = ";".join(parts[keep:])
        return out + ([("content", ";" + rest)] if rest else [])


# The head of a Hermes call, {"name": "...", "arguments": , after which the arguments stream as they come.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def _without_outer_brace(text: str) -> str:
    """A call's arguments text without the closing brace of the {"name", "arguments"} object around them."""
    body = text.rstrip()
    return body[:-1].rstrip() if body.endswith("}") else text


def _try_call(text: str, args_key: str = "arguments") -> Call | None:
    try:
        return _call(json.loads(text), args_key)
    except json.JSONDecodeError:
        return None


def parse_whole(text: str, mode: str, named: str | None = None, parallel: bool = True
                ) -> tuple[str | None, list[Call]]:
    """A finished output as (content or None, tool calls)."""
    stream = ToolStream(mode, named, incremental=False, parallel=parallel)
    events = stream.feed(text) + stream.finish()
    content = "".join(e[1] for e in events if e[0] == "content")
    return (content or None), stream.calls


def stream_delta(events: list[tuple], first: bool) -> dict:
    """An OpenAI chat chunk's delta for some events of one choice."""
    delta: dict = {"role": "assistant"} if first else {}
    content = "".join(e[1] for e in events if e[0] == "content")
    if content:
        delta["content"] = content
    calls = []
    for _, index, call, opens, args in (e for e in events if e[0] == "call"):
        if opens:
            calls.append({"index": index, "id": call.id, "type": "function",
                          "function": {"name": call.name, "arguments": ""}})
        elif args:
            calls.append({"index": index, "function": {"arguments": args}})
    if calls:
        delta["tool_calls"] = calls
    return delta
