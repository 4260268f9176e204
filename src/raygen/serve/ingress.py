"""Ingress deployment: the OpenAI-compatible HTTP API behind Serve's proxy, and the gateway in front of
the model: auth, per-key rate limits, the response cache, request ids; errors map to OpenAI's body here.

    request ─► auth (401/403) ─► parse + limits (400/404/413) ─► cache hit? ─► preprocess (400)
            ─► rate limit (429) ─► postprocessor ► LLMServer stream ─► SSE or JSON ─► cache store, settle
"""

# No `from __future__ import annotations` here: FastAPI must see the real `Request` type, or it reads the
# parameter as a query field and answers 422.

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from opentelemetry import trace
from ray import serve

from raygen.errors import RaygenError, RequestError, as_request_error, find_cause, unavailable
from raygen.observability import logs  # (its request_id_var by attribute: route functions get pickled)
from raygen.observability.config import ObservabilitySettings
from raygen.observability.metrics import record
from raygen.observability.process import init_process
from raygen.observability.requests import RequestObserver
from raygen.observability.tracing import SpanSource
from raygen.serve import openai_format as fmt
from raygen.serve.auth import ANONYMOUS, KeyStore
from raygen.serve.cache import cache_key, cacheable
from raygen.serve.config import AuthSettings
from raygen.serve.postprocess import Postprocessor
from raygen.serve.preprocess import Preprocessor
from raygen.serve import tools
from raygen.serve.protocol import (ChatCompletionRequest, CompletionRequest, Delta, DetokenizeRequest, TokenizeRequest,
                                   load_json, parse_request)
from raygen.serve.schema import (ChatCompletionChunk, ChatCompletionResponse, CompletionChunk, CompletionResponse,
                                 ModelList, error_responses, generation_route, install_openapi)

log = logging.getLogger(__name__)

# FastAPI's own OpenTelemetry spans are off: the ingress opens the request's root span itself (it must live until
# the last streamed byte), continuing the caller's W3C context when the request carries one.
api = FastAPI(title="raygen", description="OpenAI-compatible completions served by raygen on Ray Serve",
              telemetry={"tracing": False, "metrics": False, "logs": False})
install_openapi(api, [CompletionRequest, ChatCompletionRequest, CompletionChunk, ChatCompletionChunk])


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):
    """Unknown routes (404) and wrong methods (405) answer OpenAI's error body too, as OpenAI does."""
    what = {404: "Invalid URL", 405: "Method not allowed"}.get(exc.status_code, exc.detail)
    err = RequestError(f"{what} ({request.method} {request.url.path})", status=exc.status_code,
                       code={404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code))
    return JSONResponse(err.to_body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


UI = Path(__file__).with_name("ui") / "index.html"
ROUTES = {"text": CompletionRequest, "chat": ChatCompletionRequest}
ROUTE_LABEL = {"text": "completions", "chat": "chat.completions"}  # the `route` metric label
NEAR_CACHE_ENTRIES = 256


class NearCache:
    """A per-ingress copy of recent response-cache hits, each kept `ttl_s` (short): a hot deterministic
    request is answered without the round trip to the shared Gateway. The Gateway stays the one source
    of truth; an entry may outlive an admin invalidation made through another ingress by up to ttl_s
    (a promotion redeploys the ingress, so versions never mix)."""

    def __init__(self, ttl_s: float, size: int = NEAR_CACHE_ENTRIES):
        self.ttl_s, self.size = ttl_s, size
        self._d: OrderedDict[str, tuple[float, dict]] = OrderedDict()

    def get(self, key: str) -> dict | None:
        hit = self._d.get(key)
        if hit is None or hit[0] < time.monotonic():
            self._d.pop(key, None)
            return None
        return hit[1]

    def put(self, key: str, value: dict) -> None:
        if self.ttl_s <= 0:
            return
        self._d[key] = (time.monotonic() + self.ttl_s, value)
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def clear(self) -> None:
        self._d.clear()


def _error(exc: RequestError, request_id: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status, headers={"x-request-id": request_id, **(headers or {})})


async def _chain(first: Delta | None, rest):
    if first is not None:
        yield first
    async for d in rest:
        yield d


class _InProcess:
    """A Preprocessor or Postprocessor run inside the ingress process, called like its DeploymentHandle:
    `.method.remote(...)` is awaitable; with `.options(stream=True)` it is an async iterator with
    `cancel()`. Saves a Serve hop each way (see app.py for when the graph uses it)."""

    def __init__(self, cls, kwargs: dict):
        self._obj = cls.func_or_class(**kwargs)
        self._stream = False

    def options(self, stream: bool = False) -> "_InProcess":
        view = object.__new__(_InProcess)
        view._obj, view._stream = self._obj, stream
        return view

    def __getattr__(self, name: str):
        fn = getattr(self._obj, name)
        stream = self._stream

        class _Method:
            @staticmethod
            def remote(*args, **kwargs):
                return _LocalStream(fn(*args, **kwargs)) if stream else _awaitable(fn, args, kwargs)

        return _Method


async def _awaitable(fn, args, kwargs):
    return fn(*args, **kwargs)


class _LocalStream:
    def __init__(self, agen):
        self._agen = agen

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self._agen.__anext__()

    def cancel(self) -> None:
        asyncio.ensure_future(self._agen.aclose())  # runs the generator's finally: the LLM stream is cancelled


# Defined before the class: @serve.ingress pickles the app (and what its routes reference) right there.
class _ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its generator when it ends for any reason. Starlette leaves a
    generator whose client went away suspended at its `yield` (it is cancelled in `send`, outside the
    generator), so the generator's `finally` (cancel the generation, release the key's lease) would wait
    for the garbage collector."""

    on_close = None  # called once the response has ended (the ingress's in-flight count)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            if self.on_close is not None:
                self.on_close()


class _GatewayDown(RaygenError):
    """A Gateway call failed or timed out (the actor died, is being replaced, or is overloaded)."""


async def _awaited(response):
    return await response


def _replica_gone(exc: BaseException) -> bool:
    """Did the request fail because the replica serving it died or is going away (not because of the request)?"""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return find_cause(exc, (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)) is not None


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(api)
class Ingress(SpanSource):
    def __init__(self, preprocessor, postprocessor, gateway, llm, model_name: str, version: str, max_body_bytes: int,
                 auth: AuthSettings | None = None, rate_limited: bool = True, cached: bool = True,
                 near_cache_s: float = 1.0, observability: ObservabilitySettings | None = None,
                 gateway_failure: str = "open", gateway_timeout_s: float = 2.0, retry_after_s: int = 1,
                 max_inflight: int | None = None):
        self.obs = init_process(observability, "raygen-ingress")
        # DeploymentHandles, or (the default, see app.py) the same classes run in this process.
        self.pre = preprocessor if not isinstance(preprocessor, dict) else _InProcess(Preprocessor, preprocessor)
        self.post = postprocessor if not isinstance(postprocessor, dict) else \
            _InProcess(Postprocessor, {**postprocessor, "llm": llm})
        self.gateway = gateway
        self.llm = llm
        self.model_name = model_name
        self.version = version
        self._tool_parser: str | None = None  # asked of the preprocessor on the first request with tools
        self.max_body_bytes = max_body_bytes
        auth = auth or AuthSettings()
        self.keys = KeyStore.load(auth.keys, auth.keys_file)
        self.rate_limited, self.cached = rate_limited, cached  # off: no Gateway round trip for them
        self.near = NearCache(near_cache_s)
        # While the Gateway is down: "open" admits without limits, "closed" answers 503 (the cache fails open).
        self.gateway_failure, self.gateway_timeout_s = gateway_failure, gateway_timeout_s
        self.retry_after_s = retry_after_s
        # Generation requests in this replica at most (the model replicas' capacity, see app.py): past it a 503
        # comes back before any work is done, so refusals stay fast however many clients pile on.
        self.max_inflight, self._inflight = max_inflight, 0
        self._background: set[asyncio.Task] = set()  # fire-and-forget Gateway calls, kept until done

    # -- plain routes -----------------------------------------------------------------------------------
    @api.get("/", response_class=HTMLResponse)
    def ui(self):
        return HTMLResponse(UI.read_text() if UI.exists() else "<p>raygen: no UI bundled</p>")

    @api.get("/health")
    def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self):
        """Ready when a model replica answers (its engine is loaded)."""
        try:
            stats = await asyncio.wait_for(self.llm.stats.remote(), timeout=10)
        except Exception as exc:
            return JSONResponse({"status": "not ready", "reason": exc.__class__.__name__}, status_code=503)
        return {"status": "ready", "model": self.model_name, "version": self.version, "engine": stats}

    @api.get("/v1/models", responses={200: {"model": ModelList}, **error_responses()})
    def models(self, request: Request):
        try:
            self.keys.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
        except RequestError as exc:
            return _error(exc, "models")
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                             "owned_by": "raygen", "root": f"{self.model_name}/{self.version}"}]}

    @api.post("/tokenize")
    async def tokenize(self, request: Request):
        """vLLM's /tokenize: {prompt} or {messages} → {count, max_model_len, tokens[, token_strs]}."""
        return await self._tokenizer_route(request, TokenizeRequest, "tokenize")

    @api.get("/tokenizer_info")
    async def tokenizer_info(self, request: Request):
        """vLLM's /tokenizer_info: special tokens, chat template, context length."""
        return await self._tokenizer_route(request, None, "tokenizer_info")

    @api.post("/detokenize")
    async def detokenize(self, request: Request):
        """vLLM's /detokenize: {tokens} → {prompt}."""
        return await self._tokenizer_route(request, DetokenizeRequest, "detokenize")

    async def _tokenizer_route(self, request: Request, model_cls, method: str):
        """The preprocessor's `method`, for an authorized key, with the body as model_cls (None: no body)."""
        try:
            key = self.keys.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
            args = []
            if model_cls is not None:
                req = parse_request(await self._body(request), model_cls)
                if req.model not in (None, self.model_name, f"{self.model_name}/{self.version}"):
                    raise RequestError(f"model {req.model!r} does not exist; this server has {self.model_name!r}",
                                       status=404, param="model", code="model_not_found")
                args.append(req)
            self.keys.authorize(key, self.model_name)
            return await getattr(self.pre, method).remote(*args)
        except Exception as exc:
            return _error(self._as_error(exc), method)

    @api.post("/admin/cache/invalidate")
    async def invalidate(self, request: Request):
        try:
            key = self.keys.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
            if self.keys.enabled and not key.admin:
                raise RequestError("this API key is not an admin key", status=403, type="permission_error")
        except RequestError as exc:
            return _error(exc, "admin")
        self.near.clear()
        return {"invalidated": await self.gateway.invalidate.remote()}

    @api.post("/v1/completions", **generation_route(CompletionRequest, CompletionResponse, CompletionChunk))
    async def completions(self, request: Request):
        return await self._serve(request, "text")

    @api.post("/v1/chat/completions", **generation_route(ChatCompletionRequest, ChatCompletionResponse,
                                                         ChatCompletionChunk))
    async def chat_completions(self, request: Request):
        return await self._serve(request, "chat")


    async def text_stream(self, prompt, params: dict):
        """For Python code in the cluster (raygen.client.HandleClient, via serve.get_app_handle): text
        pieces of choice 0. No auth, rate limit or cache: those belong to the HTTP edge."""
        ids, sp = await self.pre.prepare.remote(CompletionRequest(prompt=prompt, **params))
        async for d in self.post.options(stream=True).stream.remote(ids, sp):
            if d.index == 0 and d.text:
                yield d.text

    # -- the pipeline -----------------------------------------------------------------------------------
    async def _serve(self, request: Request, kind: str):
        request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        obs = RequestObserver(ROUTE_LABEL[kind], self.model_name, self.version, request_id,
                              log_text=self.obs.log_text, access=self.obs.access_log,
                              parent=dict(request.headers))
        if self.max_inflight is not None and self._inflight >= self.max_inflight:
            err = unavailable(f"the server is overloaded ({self._inflight} requests in flight on this ingress "
                              "replica); retry shortly", self.retry_after_s)
            obs.finish(err.status, error=err.message)
            return _error(err, request_id, err.headers())
        self._inflight += 1
        rid_token = logs.request_id_var.set(request_id)
        streaming = False
        try:
            with trace.use_span(obs.span, end_on_exit=False):
                response = await self._serve_in_span(request, kind, request_id, obs)
            if isinstance(response, _ClosingStreamingResponse):  # in flight until its last byte
                response.on_close, streaming = self._one_less, True
            return response
        finally:
            logs.request_id_var.reset(rid_token)
            if not streaming:
                self._one_less()

    def _one_less(self) -> None:
        self._inflight -= 1

    async def _serve_in_span(self, request: Request, kind: str, request_id: str, obs: RequestObserver):
        headers: dict = {"x-trace-id": obs.trace_id} if obs.trace_id else {}
        account = None  # (key name, reserved tokens, lease): what the Gateway must be told when the request ends
        try:
            req, body = await self._parse(request, kind, obs)
            ckey = self._cache_key(request, kind, req)
            hit = await self._cache_lookup(ckey, obs) if ckey else None
            if hit is not None:
                obs.finish(200, hit.get("usage"))
                return self._from_cache(kind, hit, req, request_id, headers)
            prepare = self.pre.prepare_chat if kind == "chat" else self.pre.prepare
            prompt_ids, params = await prepare.remote(req, trace=obs.carrier())
            reserved = len(prompt_ids) + params.max_tokens * params.n
            account = await self._admit(obs.key_name, reserved, request_id, headers, obs)
            tool_mode = await self._tool_mode(req) if kind == "chat" else None
            first, deltas = await self._start(prompt_ids, params, obs, req.echo_spec)
        except Exception as exc:
            self._settle_account(account, 0)
            err = self._as_error(exc)
            if err.code == "content_policy_violation":
                obs.safety = "refused_input"
            obs.finish(err.status, error=err.message)
            return _error(err, request_id, {**headers, **err.headers()})
        version = first.version if first is not None and first.version else self.version
        headers.update({"x-request-id": request_id, "x-raygen-model-version": version})
        # Cache only what the version the key names produced (during a promotion both versions serve).
        ckey = ckey if version == self.version else None
        if req.stream:
            return _ClosingStreamingResponse(self._sse(kind, request_id, req, first, deltas, ckey, account, obs,
                                                       version, tool_mode), media_type="text/event-stream",
                                             headers=headers)
        return await self._whole(kind, request_id, first, deltas, ckey, account, obs, version, headers, tool_mode)

    async def _tool_mode(self, req) -> tuple[str, str | None, bool] | None:
        """(how the output is parsed into tool calls, the forced function's name, parallel_tool_calls) or None:
        no tools, or none."""
        choice = req.tool_choice or ("auto" if req.tools else None)
        if not req.tools or choice == "none":
            return None
        if self._tool_parser is None:
            self._tool_parser = await self.pre.tool_parser_name.remote()
        return tools.mode(choice, self._tool_parser), req.named_tool, req.parallel_tool_calls

    async def _parse(self, request: Request, kind: str, obs: RequestObserver):
        """Authenticate, read and validate the body, check the model and the key's right to it."""
        key = self.keys.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))
        obs.key_name = key.name if key is not ANONYMOUS else "anonymous"
        body = await self._body(request)
        req = parse_request(body, ROUTES[kind])
        if obs.log_text:
            obs.prompt_text = json.dumps(body.get("messages") if kind == "chat" else body.get("prompt"))
        model = req.model or self.model_name
        if model not in (self.model_name, f"{self.model_name}/{self.version}"):
            raise RequestError(f"model {req.model!r} does not exist; this server has {self.model_name!r}",
                               status=404, param="model", code="model_not_found")
        self.keys.authorize(key, self.model_name)
        return req, body

    def _cache_key(self, request: Request, kind: str, req) -> str | None:
        if not self.cached or "no-cache" in request.headers.get("cache-control", ""):
            return None  # no dump of the request when nothing will be looked up
        fields = req.model_dump(mode="json")
        return cache_key(self.version, kind, fields) if cacheable(fields) else None

    async def _cache_lookup(self, ckey: str, obs: RequestObserver) -> dict | None:
        with obs.child("response_cache.lookup"):
            hit = self.near.get(ckey)
            if hit is None:
                try:
                    hit = await self._gateway_call("cache_get", ckey)
                except _GatewayDown:
                    hit = None  # the cache fails open: a miss
                if hit is not None:
                    self.near.put(ckey, hit)
        obs.cache_result(hit is not None)
        return hit

    async def _admit(self, key_name: str, reserved: int, lease: str, headers: dict, obs: RequestObserver):
        """Rate limits and the concurrency cap (429), or, while the Gateway is down, as configured. Returns the
        account to settle when the request ends (None: nothing to settle)."""
        if not self.rate_limited:
            return None
        with obs.child("rate_limit.acquire"):
            try:
                admission = await self._gateway_call("acquire", key_name, reserved, lease)
            except _GatewayDown as exc:
                if self.gateway_failure == "closed":
                    raise unavailable("the rate limiter is unavailable (being restarted); retry shortly",
                                      self.retry_after_s, code="rate_limiter_unavailable") from exc
                return None  # open: admitted without limits until the Gateway is back
        headers.update(admission.headers)
        if not admission.allowed:
            raise RequestError(admission.message, status=429, type="rate_limit_error",
                               code="concurrency_limit_exceeded" if admission.reason == "concurrency"
                               else "rate_limit_exceeded")
        return key_name, reserved, lease

    async def _start(self, prompt_ids: list[int], params, obs: RequestObserver, echo=None):
        """Start generating; returns (first delta or None, the rest). A model replica that died before the first
        delta (nothing reached the client yet) gets the request once more: Serve routes it to a live one."""
        for attempt in (1, 2):
            deltas = self.post.options(stream=True).stream.remote(prompt_ids, params, trace=obs.carrier(), echo=echo)
            try:
                return await deltas.__anext__(), deltas
            except StopAsyncIteration:
                return None, deltas
            except Exception as exc:
                if attempt == 2 or not _replica_gone(exc):
                    raise
                log.warning("model replica gone before the first token (%s); retrying once", exc.__class__.__name__)

    async def _gateway_call(self, method: str, *args):
        """One Gateway call, bounded by gateway_timeout_s; _GatewayDown when it is dead, restarting or slow."""
        try:
            return await asyncio.wait_for(_awaited(getattr(self.gateway, method).remote(*args)),
                                          self.gateway_timeout_s)
        except Exception as exc:
            if as_request_error(exc) is not None:
                raise
            record("raygen_gateway_failures_total", model=self.model_name, call=method)
            log.warning("gateway %s failed (%s): %s", method, exc.__class__.__name__,
                        "cache misses" if method.startswith("cache") else f"limits fail {self.gateway_failure}")
            raise _GatewayDown(method) from exc

    def _gateway_tell(self, method: str, *args) -> None:
        """A Gateway call nobody waits for (settle, cache_put): its failure is logged, never raised."""
        async def call():
            try:
                await self._gateway_call(method, *args)
            except Exception:
                pass  # _gateway_call counted and logged it
        task = asyncio.ensure_future(call())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _settle_account(self, account, used: int) -> None:
        if account:
            self._gateway_tell("settle", account[0], account[1], used, account[2])

    async def _whole(self, kind, request_id, first, deltas, ckey, account, obs, version, headers, tool_mode=None):
        """A non-streamed answer: gather every delta, then one JSON body."""
        choices: dict[int, list[Delta]] = {}
        try:
            async for d in _chain(first, deltas):
                obs.delta(d.index, d.completion_tokens, d.text, d.prompt_tokens)
                choices.setdefault(d.index, []).append(d)
        except Exception as exc:
            self._settle_account(account, 0)
            err = self._as_error(exc)
            obs.finish(err.status, error=err.message)
            return _error(err, request_id, {**({"x-trace-id": obs.trace_id} if obs.trace_id else {}), **err.headers()})
        result = fmt.whole(kind, request_id, self.model_name, version, choices)
        if tool_mode is not None:
            fmt.with_tool_calls(result, *tool_mode)
        self._settle(obs, result)
        self._after(result, ckey, account)
        return JSONResponse(result, headers=headers)

    @staticmethod
    def _settle(obs: RequestObserver, result: dict) -> None:
        if any(c["finish_reason"] == "content_filter" for c in result["choices"]):
            obs.safety = "cut_output"
        obs.finish(200, result["usage"])

    async def _body(self, request: Request) -> dict:
        raw = await request.body()
        if len(raw) > self.max_body_bytes:
            raise RequestError(f"request body is {len(raw)} bytes; the limit is {self.max_body_bytes}", status=413)
        return load_json(raw)

    def _after(self, result: dict | None, ckey: str | None, account) -> None:
        """Book an ended response: refund unused tokens and free its lease, cache it when it is complete."""
        self._settle_account(account, result["usage"]["total_tokens"] if result else 0)
        if result and ckey and all(c["finish_reason"] in ("stop", "length") for c in result["choices"]):
            self._gateway_tell("cache_put", ckey, result)
            self.near.put(ckey, result)

    def _from_cache(self, kind: str, hit: dict, req, request_id: str, extra: dict | None = None):
        headers = {"x-request-id": request_id, "x-raygen-model-version": self.version, "x-raygen-cache": "hit",
                   **(extra or {})}
        if not req.stream:
            return JSONResponse({**hit, "id": request_id}, headers=headers)
        opts = req.stream_options

        async def events():
            for c in fmt.replay(kind, hit, request_id, bool(opts and opts.include_usage),
                                bool(opts and opts.continuous_usage_stats)):
                yield f"data: {json.dumps(c)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def _as_error(self, exc: Exception) -> RequestError:
        """Any failure as the client sees it: our RequestErrors as they are; overload and a model replica that
        died as 503 with Retry-After; anything else is a 500 (our fault, logged whole)."""
        rerr = as_request_error(exc)
        if rerr is not None:
            return rerr
        from ray.serve.exceptions import BackPressureError

        if find_cause(exc, BackPressureError) is not None:
            return unavailable("the server is overloaded; retry shortly", self.retry_after_s)
        if _replica_gone(exc):
            return unavailable(f"the model replica serving this request stopped ({exc.__class__.__name__}); "
                               "retry: another replica takes it", self.retry_after_s, code="replica_unavailable")
        log.exception("completion failed")  # our fault: log it whole, tell the client it is a server error
        return RequestError(f"internal error: {exc.__class__.__name__}", status=500, type="server_error")

    async def _sse(self, kind: str, request_id: str, req, first: Delta | None, deltas, ckey, account,
                   obs: RequestObserver, version: str, tool_mode=None):
        choices: dict[int, list[Delta]] = {}
        parsers: dict[int, tools.ToolStream] = {}  # per choice, with tool calls to read from the output
        offsets: dict[int, int] = {}
        generated: dict[int, int] = {}  # tokens so far per choice, for continuous_usage_stats
        continuous = bool(req.stream_options and req.stream_options.continuous_usage_stats)
        done, err = False, None
        try:
            async for d in _chain(first, deltas):
                obs.delta(d.index, d.completion_tokens, d.text, d.prompt_tokens)
                first_of_choice = d.index not in choices
                choices.setdefault(d.index, []).append(d)
                c = fmt.choice(kind, d.index, [d], stream=True, first=first_of_choice, offset=offsets.get(d.index, 0))
                if tool_mode is not None:
                    mode, named, parallel = tool_mode
                    parser = parsers.setdefault(d.index, tools.ToolStream(mode, named, parallel=parallel))
                    events = parser.feed(d.text) + (parser.finish() if d.finish_reason else [])
                    c["delta"] = tools.stream_delta(events, first_of_choice)
                    if d.finish_reason == "stop" and parser.calls:
                        c["finish_reason"] = "tool_calls"
                    if not c["delta"] and not c["finish_reason"] and not c.get("logprobs"):
                        continue  # markup held back: nothing to send yet
                if c.get("logprobs") and kind == "text":
                    offsets[d.index] = offsets.get(d.index, 0) + sum(len(t) for t in c["logprobs"]["tokens"])
                chunk = fmt.envelope(kind, request_id, self.model_name, version, [c], True)
                if continuous:
                    generated[d.index] = d.completion_tokens
                    chunk["usage"] = fmt.running_usage(d.prompt_tokens, sum(generated.values()), d.cached_tokens)
                yield f"data: {json.dumps(chunk)}\n\n"
            done = True
        except Exception as exc:  # the stream already started: report in-band, as OpenAI does
            err = self._as_error(exc)
            yield f"data: {json.dumps(err.to_body())}\n\n"
        finally:
            if not done:
                deltas.cancel()  # client gone or failure: stop generating, free the KV blocks
                # 499: the client went away (nginx's convention); an in-band error keeps its own status
                obs.finish(err.status if err else 499, error=err.message if err else "client disconnected")
                # Here, not below: a client that left closes this generator at its yield, so nothing after
                # the finally runs. A failed request is refunded; a client that left pays its reservation.
                self._settle_account(account, 0 if err else account[1] if account else 0)
        if choices:
            result = fmt.whole(kind, request_id, self.model_name, version, choices)
            if tool_mode is not None:
                fmt.with_tool_calls(result, *tool_mode)
            if done:  # booked before the last yields, which a leaving client never resumes
                self._settle(obs, result)
                self._after(result, ckey, account)
            if req.stream_options and req.stream_options.include_usage:
                usage = {**fmt.envelope(kind, request_id, self.model_name, version, [], True),
                         "usage": result["usage"]}
                yield f"data: {json.dumps(usage)}\n\n"
        elif done:
            self._settle_account(account, 0)
        obs.finish(200)  # a stream with no choices (idempotent otherwise)
        yield "data: [DONE]\n\n"

