"""The API describes itself: /openapi.json shows every request field, and what the server sends matches
the response models it documents."""

from __future__ import annotations

import pytest

from raygen.errors import RequestError, unavailable
from raygen.serve import openai_format as fmt
from raygen.serve import schema
from raygen.serve.protocol import ChatCompletionRequest, CompletionRequest, Delta


@pytest.fixture(scope="module")
def doc():
    from raygen.serve.ingress import api

    return api.openapi()


def _resolve(doc: dict, ref: dict) -> dict:
    return doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


@pytest.mark.parametrize("path,request_model,response_model,chunk_model", [
    ("/v1/completions", CompletionRequest, schema.CompletionResponse, schema.CompletionChunk),
    ("/v1/chat/completions", ChatCompletionRequest, schema.ChatCompletionResponse, schema.ChatCompletionChunk),
])
def test_generation_routes_document_every_field_the_responses_and_the_errors(doc, path, request_model,
                                                                                response_model, chunk_model):
    op = doc["paths"][path]["post"]
    body = _resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])
    assert set(body["properties"]) == set(request_model.model_fields)  # not `{}`: every field, with its type
    assert body["required"] == ["prompt" if request_model is CompletionRequest else "messages"]
    ok = op["responses"]["200"]["content"]
    assert _resolve(doc, ok["application/json"]["schema"])["title"] == response_model.__name__
    assert _resolve(doc, ok["text/event-stream"]["schema"])["title"] == chunk_model.__name__
    for code in ("400", "401", "404", "429", "503"):
        assert _resolve(doc, op["responses"][code]["content"]["application/json"]["schema"])["title"] == "ErrorResponse"
    refs = {r for r in _refs(doc)}
    assert refs <= set(doc["components"]["schemas"]), refs - set(doc["components"]["schemas"])  # no dangling $ref


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"].rsplit("/", 1)[1]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def _deltas(with_logprobs: bool) -> dict[int, list[Delta]]:
    lp = [{"token": " a", "logprob": -0.5, "top": [[" a", -0.5], [" b", -1.2]]}] if with_logprobs else None
    return {i: [Delta(i, " a", logprobs=lp), Delta(i, "", "length", logprobs=[] if lp else None, prompt_tokens=3,
                                                      completion_tokens=2, cached_tokens=1)] for i in range(2)}


@pytest.mark.parametrize("with_logprobs", [False, True])
def test_what_the_server_sends_validates_against_the_documented_models(with_logprobs):
    for kind, whole_model, chunk_model in (("text", schema.CompletionResponse, schema.CompletionChunk),
                                           ("chat", schema.ChatCompletionResponse, schema.ChatCompletionChunk)):
        ds = _deltas(with_logprobs)
        body = fmt.whole(kind, "id-1", "demo", "v3", ds)
        whole_model.model_validate(body)
        for first in (True, False):
            chunk = fmt.envelope(kind, "id-1", "demo", "v3", [fmt.choice(kind, 0, ds[0][:1], True, first)], True)
            chunk_model.model_validate(chunk)
        for chunk in fmt.replay(kind, body, "id-2", include_usage=True):
            chunk_model.model_validate(chunk)
        for chunk in fmt.replay(kind, body, "id-2", include_usage=False, continuous=True):
            assert chunk_model.model_validate(chunk).usage.total_tokens == body["usage"]["total_tokens"]
    schema.ErrorResponse.model_validate(RequestError("bad seed", param="seed", code="x").to_body())
    schema.ErrorResponse.model_validate(unavailable("busy").to_body())
