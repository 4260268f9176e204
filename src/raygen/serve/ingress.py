"""Ingress deployment: the OpenAI-compatible HTTP API behind Serve's proxy. Errors map to OpenAI's body here."""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` type, or it reads the
# parameter as a query field and answers 422.


import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from raygen.errors import RequestError, as_request_error
from raygen.serve.protocol import CompletionRequest, Delta, parse_request

api = FastAPI(title="raygen", description="OpenAI-compatible completions served by raygen on Ray Serve")


def _error(exc: RequestError, request_id: str) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status, headers={"x-request-id": request_id})


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(api)
class Ingress:
    def __init__(self, preprocessor, postprocessor, model_name: str, version: str, max_body_bytes: int):
        self.pre = preprocessor  # DeploymentHandle of Preprocessor
        self.post = postprocessor  # DeploymentHandle of Postprocessor
        self.model_name = model_name
        self.version = version
        self.max_body_bytes = max_body_bytes

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models")
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                             "owned_by": "raygen", "root": f"{self.model_name}/{self.version}"}]}

    @api.post("/v1/completions")
    async def completions(self, request: Request):
        request_id = f"cmpl-{uuid.uuid4().hex}"
        try:
            req = await self._parse(request)
            prompt_ids, params = await self.pre.prepare.remote(req)
        except Exception as exc:
            rerr = as_request_error(exc)
            if rerr is None:
                raise
            return _error(rerr, request_id)
        deltas = self.post.options(stream=True).stream.remote(prompt_ids, params)
        headers = {"x-request-id": request_id, "x-raygen-model-version": self.version}
        if req.stream:
            return StreamingResponse(self._sse(request_id, req, deltas), media_type="text/event-stream",
                                     headers=headers)
        text, last = [], None
        async for d in deltas:
            text.append(d.text)
            last = d
        body = self._chunk(request_id, "".join(text), last.finish_reason)
        body["usage"] = self._usage(last)
        return JSONResponse(body, headers=headers)

    async def _parse(self, request: Request) -> CompletionRequest:
        raw = await request.body()
        if len(raw) > self.max_body_bytes:
            raise RequestError(f"request body is {len(raw)} bytes; the limit is {self.max_body_bytes}", status=413)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(f"request body is not valid JSON: {exc}") from exc
        req = parse_request(body)
        if req.model not in (None, self.model_name, f"{self.model_name}/{self.version}"):
            raise RequestError(f"model {req.model!r} does not exist; this server has {self.model_name!r}",
                               status=404, param="model", code="model_not_found")
        return req

    def _chunk(self, request_id: str, text: str, finish_reason: str | None) -> dict:
        return {"id": request_id, "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "system_fingerprint": self.version,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}

    @staticmethod
    def _usage(d: Delta) -> dict:
        return {"prompt_tokens": d.prompt_tokens, "completion_tokens": d.completion_tokens,
                "total_tokens": d.prompt_tokens + d.completion_tokens}

    async def _sse(self, request_id: str, req: CompletionRequest, deltas):
        last = None
        try:
            async for d in deltas:
                last = d
                if d.text or d.finish_reason:
                    yield f"data: {json.dumps(self._chunk(request_id, d.text, d.finish_reason))}\n\n"
        except Exception as exc:  # the stream already started: report in-band, as OpenAI does
            body = {"error": {"message": f"generation failed: {exc}", "type": "server_error",
                              "param": None, "code": None}}
            yield f"data: {json.dumps(body)}\n\n"
        if last is not None and req.stream_options and req.stream_options.include_usage:
            usage = {**self._chunk(request_id, "", None), "choices": [], "usage": self._usage(last)}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
