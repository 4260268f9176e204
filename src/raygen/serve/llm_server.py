"""LLMServer deployment: one raygen engine per replica; token ids in, per-sequence output chunks out."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from ray import serve

from raygen.engine.request import RequestOutput, SamplingParams
from raygen.errors import RequestError


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=256)
class LLMServer:
    def __init__(self, model_dir: str, engine: dict, torch_threads: int = 0):
        """engine: the serve.engine section of the raygen config (EngineSettings, as a dict)."""
        import torch

        from raygen.engine.engine import AsyncLLMEngine, EngineConfig

        torch.set_num_threads(torch_threads or os.cpu_count() or 1)
        mib = engine.pop("kv_cache_mib", None)
        self.engine = AsyncLLMEngine.from_config(
            EngineConfig(model_dir, kv_cache_bytes=mib * 2**20 if mib else None, **engine))

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[list[RequestOutput]]:
        """Yields lists of deltas (one per sequence that advanced) until every sequence has finished.
        Cancelling the call (client gone) aborts the request and frees its KV blocks."""
        try:
            stream = self.engine.add_request(prompt_ids, params, batched=True)
        except ValueError as exc:  # too long for the cache, bad ids: the caller's fault
            raise RequestError(str(exc), param="prompt") from exc
        try:
            async for chunk in stream:
                yield chunk
        finally:
            await stream.aclose()

    def stats(self) -> dict:
        """Engine stats of this replica, with its Serve replica id."""
        from dataclasses import asdict

        return {"replica": serve.get_replica_context().replica_id.unique_id, **asdict(self.engine.stats())}

    def record_routing_stats(self) -> dict:
        """What PrefixAwareRouter balances on (Serve polls it every request_routing_stats_period_s)."""
        import time

        s = self.engine.stats()
        return {"load": s.num_running + s.num_waiting, "kv_usage": s.kv_usage, "at": time.time()}

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
