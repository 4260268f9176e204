"""OpenAI-compatible request bodies and the sampling parameters that cross the graph. No Ray in here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raygen.engine.request import RequestOutput
from raygen.errors import RequestError


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
# (Issue 19 implements structured outputs and tools.)
_REFUSED_COMMON = {
    "response_format": (lambda v: _off(v) or (isinstance(v, dict) and v.get("type") == "text"),
                        "structured output (json_object / json_schema) is not supported by this server yet"),
    "guided_json": (_off, "guided decoding is not supported by this server yet"),
    "guided_regex": (_off, "guided decoding is not supported by this server yet"),
    "guided_choice": (_off, "guided decoding is not supported by this server yet"),
    "guided_grammar": (_off, "guided decoding is not supported by this server yet"),
    "structured_outputs": (_off, "structured outputs are not supported by this server yet"),
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
        "tools": (_off, "tool calling is not supported by this server yet"),
        "tool_choice": (lambda v: v in (None, "none", "auto"), "tool calling is not supported by this server yet"),
        "functions": (_off, "function calling is not supported by this server"),
        "function_call": (lambda v: v in (None, "none", "auto"), "function calling is not supported by this server"),
        "echo": (_off, "echo is not supported on chat completions"),
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

    @property
    def token_bias(self) -> dict[int, float]:
        return {int(k): b for k, b in (self.logit_bias or {}).items()}

    @property
    def num_logprobs(self) -> int | None:
        raise NotImplementedError


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
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

    @field_validator("echo")
    @classmethod
    def _not_yet(cls, v, info):
        if v:  # refuse rather than silently answer without it
            raise ValueError(f"{info.field_name} is not supported by this server yet")
        return v

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list) and v and isinstance(v[0], str):
            if len(v) != 1:
                raise ValueError("batched prompts (a list of strings) are not supported yet; send one per request")
            v = v[0]
        if isinstance(v, str) and not v:
            raise ValueError("prompt must not be empty")
        if isinstance(v, list) and not v:
            raise ValueError("prompt must not be empty")
        return v

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None

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
    parallel_tool_calls: bool | None = None  # honoured trivially: no tools are accepted (_REFUSED)
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

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


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
