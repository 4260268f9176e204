"""Ingress deployment: the OpenAI-compatible HTTP API behind Serve's proxy. Errors map to OpenAI's body here."""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` type, or it reads the
# parameter as a query field and answers 422.


import json
import logging
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve

from raygen.errors import RequestError, as_request_error
from raygen.serve.protocol import CompletionRequest, Delta, parse_request

log = logging.getLogger(__name__)

api = FastAPI(title="raygen", description="OpenAI-compatible completions served by raygen on Ray Serve")


async def _chain(first: Delta | None, rest):
    if first is not None:
        yield first
    async for d in rest:
        yield d


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
            deltas = self.post.options(stream=True).stream.remote(prompt_ids, params)
            # Wait for the first delta before answering: errors up to then still get a status code.
            first = await deltas.__anext__()
        except StopAsyncIteration:
            first = None
        except Exception as exc:
            return _error(self._as_error(exc), request_id)
        headers = {"x-request-id": request_id, "x-raygen-model-version": self.version}
        if req.stream:
            return StreamingResponse(self._sse(request_id, req, first, deltas), media_type="text/event-stream",
                                     headers=headers)
        choices: dict[int, list[Delta]] = {}
        try:
            async for d in _chain(first, deltas):
                choices.setdefault(d.index, []).append(d)
        except Exception as exc:
            return _error(self._as_error(exc), request_id)
        body = self._chunk(request_id, [self._choice(i, ds) for i, ds in sorted(choices.items())])
        body["usage"] = self._usage([ds[-1] for ds in choices.values()])
        return JSONResponse(body, headers=headers)

    @staticmethod
    def _as_error(exc: Exception) -> RequestError:
        rerr = as_request_error(exc)
        if rerr is None:  # our fault: log it whole, tell the client it is a server error
            log.exception("completion failed")
            rerr = RequestError(f"internal error: {exc.__class__.__name__}", status=500, type="server_error")
        return rerr

    @staticmethod
    def _choice(index: int, deltas: list[Delta]) -> dict:
        """One choice from its deltas (all of them, or one streamed chunk)."""
        lps = [d.logprobs for d in deltas if d.logprobs is not None]
        merged = {k: [x for lp in lps for x in lp[k]] for k in ("tokens", "token_logprobs", "top_logprobs",
                                                                "text_offset")} if lps else None
        return {"index": index, "text": "".join(d.text for d in deltas), "logprobs": merged,
                "finish_reason": deltas[-1].finish_reason}

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

    def _chunk(self, request_id: str, choices: list[dict]) -> dict:
        return {"id": request_id, "object": "text_completion", "created": int(time.time()),
                "model": self.model_name, "system_fingerprint": self.version, "choices": choices}

    @staticmethod
    def _usage(last: list[Delta]) -> dict:
        """From each choice's last delta: the prompt counts once, completions add up over choices."""
        prompt = last[0].prompt_tokens if last else 0
        completion = sum(d.completion_tokens for d in last)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": last[0].cached_tokens if last else 0}}

    async def _sse(self, request_id: str, req: CompletionRequest, first: Delta | None, deltas):
        last: dict[int, Delta] = {}
        try:
            async for d in _chain(first, deltas):
                last[d.index] = d
                yield f"data: {json.dumps(self._chunk(request_id, [self._choice(d.index, [d])]))}\n\n"
        except Exception as exc:  # the stream already started: report in-band, as OpenAI does
            body = {"error": {"message": f"generation failed: {exc}", "type": "server_error",
                              "param": None, "code": None}}
            yield f"data: {json.dumps(body)}\n\n"
        if last and req.stream_options and req.stream_options.include_usage:
            usage = {**self._chunk(request_id, []), "usage": self._usage(list(last.values()))}
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
