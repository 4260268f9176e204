"""Clients for a raygen server: async and sync over HTTP (aiohttp), and a Serve-handle client for Python
code running inside the same Ray cluster (no HTTP hop).

    async with AsyncClient("http://127.0.0.1:8000", api_key="sk-...") as c:
        print((await c.complete("The for statement", max_tokens=16))["choices"][0]["text"])
        async for piece in c.stream_chat([{"role": "user", "content": "hi"}], max_tokens=32):
            print(piece, end="")

    c = Client("http://127.0.0.1:8000")            # same calls, blocking; streams are plain iterators
    h = HandleClient()                               # inside the cluster: text deltas straight from Serve

Errors come back as raygen.errors.RequestError with the server's status, message and code.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator

from raygen.errors import RequestError


class AsyncClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json",
                        **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self.timeout = timeout
        self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _s(self):
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers,
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    async def _raise(resp) -> None:
        if resp.status >= 400:
            try:
                err = (await resp.json())["error"]
            except Exception:
                err = {"message": await resp.text()}
            retry = resp.headers.get("Retry-After")
            raise RequestError(err.get("message", ""), status=resp.status, param=err.get("param"),
                               type=err.get("type") or "invalid_request_error", code=err.get("code"),
                               retry_after=int(retry) if retry and retry.isdigit() else None)

    async def _post(self, path: str, body: dict) -> dict:
        async with (await self._s()).post(self.base_url + path, json=body) as resp:
            await self._raise(resp)
            return await resp.json()

    async def _events(self, path: str, body: dict) -> AsyncIterator[dict]:
        async with (await self._s()).post(self.base_url + path, json={**body, "stream": True}) as resp:
            await self._raise(resp)
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    e = event["error"]  # in-band, after the stream began: a replica lost or a server fault
                    retryable = e.get("code") in ("replica_unavailable", "overloaded")
                    raise RequestError(e.get("message", ""), status=503 if retryable else 500,
                                       type=e.get("type") or "server_error", code=e.get("code"),
                                       retry_after=1 if retryable else None)
                yield event

    async def models(self) -> list[str]:
        async with (await self._s()).get(self.base_url + "/v1/models") as resp:
            await self._raise(resp)
            return [m["id"] for m in (await resp.json())["data"]]

    async def complete(self, prompt: str | list[int], **params) -> dict:
        return await self._post("/v1/completions", {"prompt": prompt, **params})

    async def chat(self, messages: list[dict], **params) -> dict:
        return await self._post("/v1/chat/completions", {"messages": messages, **params})

    async def stream(self, prompt: str | list[int], **params) -> AsyncIterator[str]:
        """Text pieces of choice 0 as they arrive."""
        async for e in self._events("/v1/completions", {"prompt": prompt, **params}):
            for c in e["choices"]:
                if c["index"] == 0 and c.get("text"):
                    yield c["text"]

    async def stream_chat(self, messages: list[dict], **params) -> AsyncIterator[str]:
        async for e in self._events("/v1/chat/completions", {"messages": messages, **params}):
            for c in e["choices"]:
                if c["index"] == 0 and c.get("delta", {}).get("content"):
                    yield c["delta"]["content"]


class Client:
    """Blocking face of AsyncClient: its event loop runs in a private thread."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 300):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raygen-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(base_url, api_key, timeout)

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _iter(self, agen: AsyncIterator[str]) -> Iterator[str]:
        while True:
            try:
                yield self._run(agen.__anext__())
            except StopAsyncIteration:
                return

    def models(self) -> list[str]:
        return self._run(self._async.models())

    def complete(self, prompt: str | list[int], **params) -> dict:
        return self._run(self._async.complete(prompt, **params))

    def chat(self, messages: list[dict], **params) -> dict:
        return self._run(self._async.chat(messages, **params))

    def stream(self, prompt: str | list[int], **params) -> Iterator[str]:
        return self._iter(self._async.stream(prompt, **params))

    def stream_chat(self, messages: list[dict], **params) -> Iterator[str]:
        return self._iter(self._async.stream_chat(messages, **params))

    def close(self) -> None:
        self._run(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class HandleClient:
    """For code inside the Ray cluster: the app's ingress through its Serve handle
    (`serve.get_app_handle`), without HTTP (and without auth, rate limits or the response cache: those
    belong to the HTTP edge)."""

    def __init__(self, app_name: str = "raygen"):
        from ray import serve

        self.app = serve.get_app_handle(app_name)

    async def stream(self, prompt: str | list[int], **params) -> AsyncIterator[str]:
        async for piece in self.app.options(stream=True).text_stream.remote(prompt, params):
            yield piece

    async def complete(self, prompt: str | list[int], **params) -> str:
        return "".join([t async for t in self.stream(prompt, **params)])
