"""OpenAI-compatible request bodies and the sampling parameters that cross the graph. No Ray in here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from raygen.engine.request import GrammarSpec, RequestOutput
from raygen.errors import GrammarError, RequestError


class StreamOptions(BaseModel):
    """OpenAI's include_usage (a last chunk with the usage) and vLLM's continuous_usage_stats (every chunk
    carries the usage so far: how a load generator counts the tokens of a chunk that merged several steps).
    An option raygen does not know is refused by name."""

    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


SEED_RANGE = (-(2**63), 2**63 - 1)  # OpenAI's seed is a signed 64-bit integer
MAX_LOGIT_BIAS = 1024  # entries


def _off(v) -> bool:
    return v in (None, False, [], {}, "")


# Fields of OpenAI's (and vLLM's) request schemas that raygen does not implement yet, with the values
# that mean "not used": anything else is refused with a 400 naming the field, never accepted and dropped.
_REFUSED_COMMON = {
    "guided_whitespace_pattern": (_off, "a custom whitespace pattern is not supported; JSON is compact unless the "
                                        "server sets serve.engine.grammar_any_whitespace"),
    "guided_decoding_backend": (lambda v: v in (None, "", "auto", "guidance", "llguidance"),
                                "this server's structured outputs run on llguidance (set it to auto or guidance)"),
    "use_beam_search": (_off, "beam search is not supported by this server"),
    "min_tokens": (lambda v: v in (None, 0), "min_tokens is not supported by this server yet"),
}
_REFUSED = {
    "text": {
        **_REFUSED_COMMON,
        "suffix": (_off, "suffix (insertion) is not supported by this server"),
    },
    "chat": {
        **_REFUSED_COMMON,
        "functions": (_off, "function calling is not supported by this server"),
        "function_call": (lambda v: v in (None, "none", "auto"), "function calling is not supported by this server"),
        "echo": (_off, "echo is not supported on chat completions"),
        "prompt_logprobs": (lambda v: v is None, "prompt_logprobs is supported on /v1/completions only"),
        "audio": (_off, "audio output is not supported by this server"),
        "modalities": (lambda v: v in (None, ["text"]), "only the text modality is supported"),
        "prediction": (_off, "predicted outputs are not supported by this server"),
        "reasoning_effort": (_off, "this model is not a reasoning model"),
        "web_search_options": (_off, "web search is not supported by this server"),
        "store": (_off, "stored completions are not supported by this server"),
        "service_tier": (lambda v: v in (None, "auto", "default"), "only the default service tier exists here"),
    },
}


def _bad(param: str, why: str, code: str | None = None):
    """A request error found across fields (pydantic would not name the field): raise it named."""
    raise RequestError(f"{param}: {why}", param=param, code=code)


def _refuse_unsupported(body: Any, route: str) -> None:
    if not isinstance(body, dict):
        return
    for name, (unused, why) in _REFUSED[route].items():
        if name in body and not unused(body[name]):
            _bad(name, why, "unsupported_parameter")


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions. Unknown extra fields are ignored, as OpenAI does;
    fields of OpenAI's schema that raygen does not implement are refused (`_REFUSED`)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logit_bias: dict[str, float] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    user: str | None = None  # an end-user id for the caller's abuse tracking: no effect on the answer
    # Beyond OpenAI, as vLLM accepts them:
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    ignore_eos: bool = False
    # Structured outputs: OpenAI's response_format, vLLM's structured_outputs and its older guided_* fields
    # (one constraint per request; grammar_spec is what reaches the engine).
    response_format: dict | None = None
    structured_outputs: dict | None = None
    guided_json: dict | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    _grammar: GrammarSpec | None = PrivateAttr(None)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @model_validator(mode="after")
    def _stream_options(self):
        if self.stream_options is not None and not self.stream:
            _bad("stream_options", "only allowed when stream is true")  # as OpenAI answers
        return self

    @field_validator("seed")
    @classmethod
    def _seed(cls, v):
        if v is not None and not SEED_RANGE[0] <= v <= SEED_RANGE[1]:
            raise ValueError(f"must be a signed 64-bit integer, in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]; got {v}")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v):
        if not v:
            return None
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries")
        for k, b in v.items():
            if not k.isdigit():
                raise ValueError(f"keys are token ids; {k!r} is not one")
            if not -100 <= b <= 100:
                raise ValueError(f"bias {b} of token {k} is outside [-100, 100]")
        return v

    @model_validator(mode="after")
    def _one_constraint(self):
        found = [(name, spec) for name in _CONSTRAINT_FIELDS if (spec := _constraint(self, name)) is not None]
        if len(found) > 1:
            _bad(found[1][0], f"one structured-output constraint per request; this one also sets {found[0][0]}")
        self._grammar = found[0][1] if found else None
        return self

    @property
    def grammar_spec(self) -> GrammarSpec | None:
        """The request's structured-output constraint, for the engine (None: free text)."""
        return self._grammar

    @property
    def token_bias(self) -> dict[int, float]:
        return {int(k): b for k, b in (self.logit_bias or {}).items()}

    @property
    def num_logprobs(self) -> int | None:
        raise NotImplementedError

    @property
    def num_prompt_logprobs(self) -> int | None:
        """Top alternatives per prompt token the engine must compute (None: no prompt logprobs)."""
        return None

    @property
    def echo_spec(self) -> Echo:
        return Echo()


_CONSTRAINT_FIELDS = ("response_format", "structured_outputs", "guided_json", "guided_regex", "guided_choice",
                      "guided_grammar")
_STRUCTURED_KEYS = {"json": "json_schema", "regex": "regex", "choice": "choice", "grammar": "grammar",
                    "json_object": "json_object"}  # vLLM's StructuredOutputsParams fields -> GrammarSpec kinds


def _spec(kind: str, value, param: str) -> GrammarSpec:
    """value as a GrammarSpec of kind; refuses (400, naming param) a value of the wrong shape."""
    try:
        if kind == "json_object":
            return GrammarSpec("json_object", param=param)
        if kind == "json_schema":
            if isinstance(value, str):  # vLLM takes the schema as JSON text too
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as exc:
                    _bad(param, f"is not valid JSON: {exc}")
            if not isinstance(value, dict):
                _bad(param, "must be a JSON schema (an object)")
            return GrammarSpec("json_schema", json.dumps(value, ensure_ascii=False), param)
        if kind == "choice":
            if not isinstance(value, list) or not value or not all(isinstance(c, str) and c for c in value):
                _bad(param, "must be a non-empty list of non-empty strings")
            return GrammarSpec("choice", json.dumps(value, ensure_ascii=False), param)
        if not isinstance(value, str) or not value:
            _bad(param, f"must be a non-empty string (a {'regular expression' if kind == 'regex' else 'grammar'})")
        return GrammarSpec(kind, value, param)
    except GrammarError as exc:
        _bad(param, str(exc).removeprefix(f"{param}: "))


def _constraint(req: _Sampling, name: str) -> GrammarSpec | None:
    """The constraint one field of the request sets, or None when it sets none."""
    value = getattr(req, name)
    if _off(value):
        return None
    if name == "response_format":
        kind = value.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return _spec("json_object", None, "response_format")
        if kind == "json_schema":
            js = value.get("json_schema")
            if not isinstance(js, dict) or "schema" not in js:
                _bad("response_format.json_schema", "must be an object with a schema (and a name)")
            unknown = set(js) - {"name", "schema", "strict", "description"}
            if unknown:
                _bad(f"response_format.json_schema.{sorted(unknown)[0]}", "is not a json_schema field")
            return _spec("json_schema", js["schema"], "response_format.json_schema.schema")
        _bad("response_format.type", f"must be text, json_object or json_schema; got {kind!r}")
    if name == "structured_outputs":
        given = {k: v for k, v in value.items() if not _off(v)}
        unknown = sorted(set(given) - set(_STRUCTURED_KEYS))
        if unknown:
            _bad(f"structured_outputs.{unknown[0]}", f"is not supported here; use one of {sorted(_STRUCTURED_KEYS)}")
        if len(given) != 1:
            _bad("structured_outputs", f"set exactly one of {sorted(_STRUCTURED_KEYS)}; got {sorted(given) or 'none'}")
        (key, v), = given.items()
        return _spec(_STRUCTURED_KEYS[key], v, f"structured_outputs.{key}")
    kind = {"guided_json": "json_schema", "guided_regex": "regex", "guided_choice": "choice",
            "guided_grammar": "grammar"}[name]
    return _spec(kind, value, name)


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo: the prompt's logprobs, nothing generated
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    prompt_logprobs: int | None = Field(None, ge=0, le=20, description="vLLM's: each prompt token's logprob "
                                        "and this many top alternatives, in choices[].prompt_logprobs")
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None  # refused unless empty (_REFUSED)

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, body):
        _refuse_unsupported(body, "text")
        return body

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of is not None and self.best_of != self.n:
            # best_of > n ranks candidates by their likelihood and returns the best n: not implemented.
            _bad("best_of", "must equal n (or be unset): ranking extra candidates is not supported")
        return self

    @model_validator(mode="after")
    def _zero_tokens(self):
        if self.max_tokens == 0 and not self.echo:
            _bad("max_tokens", "must be at least 1 (0 is allowed with echo: the prompt's logprobs alone)")
        return self

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], (str, list)):  # a batch of prompts: one is fine
            if len(v) != 1:
                raise ValueError("batched prompts (a list of strings or of token lists) are not supported yet; "
                                 "send one per request")
            v = v[0]
        if isinstance(v, str) and not v:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs

    @property
    def num_prompt_logprobs(self) -> int | None:
        wanted = [k for k in (self.prompt_logprobs, self.logprobs if self.echo else None) if k is not None]
        return max(wanted) if wanted else None

    @property
    def echo_spec(self) -> Echo:
        return Echo(self.echo, self.prompt_logprobs is not None, self.max_tokens != 0)


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it

    @field_validator("arguments")
    @classmethod
    def _json(cls, v):
        try:
            json.loads(v)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON: {exc}") from exc
        return v


class ToolCall(BaseModel):
    """An assistant message's earlier tool call, sent back in a follow-up turn."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None  # arguments always follow the schema when a call is forced; free under auto


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDef


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns that called tools
    tool_call_id: str | None = None  # tool turns: the call this answers
    name: str | None = None

    @model_validator(mode="after")
    def _tool_turns(self):
        if self.role == "tool" and not self.tool_call_id:
            _bad("messages.tool_call_id", "a tool message needs the tool_call_id of the call it answers")
        if self.tool_calls and self.role != "assistant":
            _bad("messages.tool_calls", "only assistant messages carry tool_calls")
        return self

    def template_dict(self) -> dict:
        """As chat templates take it (transformers' tool-use format: arguments as objects)."""
        out: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": json.loads(c.function.arguments)}}
                                 for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name:
            out["name"] = self.name
        return out

    @field_validator("content")
    @classmethod
    def _text_only(cls, v):
        if isinstance(v, list):  # OpenAI's content parts: text parts only
            if any(p.get("type") != "text" for p in v):
                raise ValueError("only text content parts are supported")
            v = "".join(p.get("text", "") for p in v)
        return v or ""


class ChatCompletionRequest(_Sampling):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | dict | None = None
    parallel_tool_calls: bool = True  # off: one call at most (required: maxItems 1; auto: the first call only)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, body):
        _refuse_unsupported(body, "chat")
        return body

    @model_validator(mode="after")
    def _top_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            _bad("top_logprobs", "needs logprobs: true")  # as OpenAI answers
        return self

    @model_validator(mode="after")
    def _tools(self):
        from raygen.serve import tools as tool_calls

        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            _bad("tools", "function names must be unique")
        choice = self.tool_choice
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
            if name is None:
                _bad("tool_choice", 'must be none, auto, required or {"type": "function", "function": {"name": ...}}')
            if name not in names:
                _bad("tool_choice", f"names {name!r}, which is not among the tools ({', '.join(names) or 'none'})")
        elif choice == "required" and not names:
            _bad("tool_choice", "required needs tools")
        spec = tool_calls.constraint(self.function_defs, choice, self.parallel_tool_calls) if names else None
        if spec is not None:
            if self._grammar is not None:
                _bad("tool_choice", f"a forced tool call constrains the output already; drop {self._grammar.param}")
            self._grammar = spec
        return self

    @property
    def function_defs(self) -> list[dict]:
        """The tools as the template and the constraint take them: {name, description, parameters}."""
        return [t.function.model_dump(exclude_none=True) for t in self.tools or []]

    @property
    def named_tool(self) -> str | None:
        return self.tool_choice["function"]["name"] if isinstance(self.tool_choice, dict) else None

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class TokenizeRequest(BaseModel):
    """POST /tokenize (vLLM's shape): a prompt, or chat messages through the chat template."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True  # unset with messages: false (their template writes the special tokens)
    add_generation_prompt: bool = True  # messages only
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            _bad("prompt", "give either prompt or messages")
        if self.prompt is not None and "add_generation_prompt" in self.model_fields_set:
            _bad("add_generation_prompt", "applies to messages (the chat template), not to a prompt")
        return self


class DetokenizeRequest(BaseModel):
    """POST /detokenize (vLLM's shape): token ids back to text."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


MAX_JSON_DEPTH = 32  # OpenAI's bodies nest a few levels; tool schemas (issue 19) a few more


def load_json(raw: bytes) -> Any:
    """The request body as JSON, refused (400) when it is not JSON, nests deeper than MAX_JSON_DEPTH or holds
    text that is not valid Unicode (a lone UTF-16 surrogate escape such as "\\ud800": JSON allows it, UTF-8 cannot
    encode it, and every tokenizer fails on it)."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # thousands of [ or {
        raise RequestError(f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels") from exc
    todo = [(body, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise RequestError("request body holds a lone UTF-16 surrogate escape (e.g. \\ud800) that is "
                                       "not valid Unicode; send a proper surrogate pair or the character "
                                       "itself") from exc
        elif isinstance(value, (list, dict)):
            if depth > MAX_JSON_DEPTH:
                raise RequestError(f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for k, v in items:
                todo.append((v, depth + 1))
                if k is not None:
                    todo.append((k, depth + 1))
    return body


def parse_request(body: Any, model_cls: type[BaseModel] = CompletionRequest) -> BaseModel:
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    try:
        return model_cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise RequestError(f"{param}: {msg}" if param else msg, param=param) from exc


@dataclass(frozen=True)
class Echo:
    """What the postprocessor adds to or takes from the generated output of a completions request: the
    prompt in front of it (echo; its tokens' logprobs too when logprobs are asked for), vLLM's
    `prompt_logprobs` beside it, and whether the generated tokens are returned at all (max_tokens 0: the
    engine generates one, which is dropped)."""

    prompt: bool = False
    prompt_logprobs: bool = False
    keep_output: bool = True


@dataclass
class ReplicaChunk:
    """What a model replica yields: the deltas of the sequences that advanced, and which model version
    produced them (during a promotion old and new replicas serve side by side)."""

    version: str
    outputs: list[RequestOutput]


@dataclass
class Delta:
    """One chunk of one choice of a streamed completion, as it leaves the postprocessor."""

    index: int  # the choice (0..n-1)
    text: str  # new text since the previous delta of this choice
    finish_reason: str | None = None  # "stop" | "length" on the choice's last delta
    logprobs: dict | None = None  # OpenAI completions format for this delta's tokens, when asked for
    prompt_tokens: int = 0  # usage: set on the choice's last delta
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
    version: str = ""  # the model version that produced it
    prompt_logprobs: list | None = None  # vLLM's, on the choice's first delta: [None, {id: {logprob, rank,
    # decoded_token}}, ...]
