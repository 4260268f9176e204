"""The API's response bodies as pydantic models, for the OpenAPI document (`/openapi.json`, `/docs`) and
for the tests that check what the server sends against them. Request bodies are protocol.py's models.
The bodies themselves are built by openai_format.py (plain dicts, for speed on the streaming path)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length", "content_filter", "tool_calls"] | None


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="Prompt tokens served from the prefix cache.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="Summed over the choices.")
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None] = Field(description="With echo, the first prompt token's is null.")
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = Field(description="1 = the most likely token; null when outside the top asked for.")
    decoded_token: str


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason = Field(description="On the choice's last chunk; null before it.")
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        None, description="vLLM's, when prompt_logprobs is asked for: per prompt token, the first null.")


class _Envelope(BaseModel):
    id: str
    created: int
    model: str
    system_fingerprint: str = Field(description="The model version that produced the answer.")


class CompletionResponse(_Envelope):
    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunk(_Envelope):
    """One `data:` event of a streamed completion; with stream_options.include_usage the last one has
    no choices and the usage."""

    object: Literal["text_completion"]
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="JSON text.")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None = Field(description="Null when the answer is tool calls alone.")
    tool_calls: list[ToolCall] | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = Field(None, description="On the call's first delta, with type and name.")
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletionResponse(_Envelope):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = Field(None, description="On a choice's first chunk.")
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    prompt: str


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None
    finish_reason: FinishReason


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ErrorDetail(BaseModel):
    message: str = Field(description="What was wrong and what to do.")
    type: str = Field(description="invalid_request_error, authentication_error, rate_limit_error, server_error...")
    param: str | None = Field(description="The request field at fault, when there is one.")
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    root: str = Field(description="name/version of the version being served.")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


ERRORS = {400: "The request is malformed or a field is wrong or unsupported (the error names it).",
          401: "No API key, or an unknown one.", 403: "The key may not use this model.",
          404: "No such model.", 429: "Rate or concurrency limit; Retry-After says when to retry.",
          503: "Overloaded, or a model replica is being replaced; Retry-After says when to retry."}


# -- the OpenAPI document -------------------------------------------------------------------------------
def _ref(model: type[BaseModel]) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def error_responses() -> dict:
    return {code: {"model": ErrorResponse, "description": why} for code, why in ERRORS.items()}


def generation_route(request: type[BaseModel], response: type[BaseModel], chunk: type[BaseModel]) -> dict:
    """FastAPI route arguments that document a generation endpoint whose handler reads the raw body (it
    parses hostile JSON itself): the request model, the whole and streamed responses, the errors."""
    return {"openapi_extra": {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}}},
            "responses": {200: {"model": response, "description": "The whole answer; with `stream: true`, "
                                "server-sent events of chunks, then `data: [DONE]`.",
                                "content": {"text/event-stream": {"schema": _ref(chunk)}}}, **error_responses()}}


def install_openapi(api, models: list[type[BaseModel]]) -> None:
    """Make `api.openapi()` include `models` (those the routes reference by name) in its components."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if api.openapi_schema is None:
            doc = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for m in models:
                s = m.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(s.pop("$defs", {}))
                schemas[m.__name__] = s
            api.openapi_schema = doc
        return api.openapi_schema

    api.openapi = openapi
