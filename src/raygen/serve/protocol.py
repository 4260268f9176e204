"""OpenAI-compatible request bodies and the sampling parameters that cross the graph. No Ray in here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from raygen.errors import RequestError


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat completions. Unknown OpenAI fields are ignored, as
    OpenAI-compatible servers do."""

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

    @property
    def num_logprobs(self) -> int | None:
        raise NotImplementedError


class CompletionRequest(_Sampling):
    """POST /v1/completions."""

    prompt: str | list[int] | list[str]
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)

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
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


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
class Delta:
    """One chunk of one choice of a streamed completion, as it leaves the postprocessor."""

    index: int  # the choice (0..n-1)
    text: str  # new text since the previous delta of this choice
    finish_reason: str | None = None  # "stop" | "length" on the choice's last delta
    logprobs: dict | None = None  # OpenAI completions format for this delta's tokens, when asked for
    prompt_tokens: int = 0  # usage: set on the choice's last delta
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache
