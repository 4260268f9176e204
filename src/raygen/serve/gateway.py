"""Gateway deployment: the one source of truth that every ingress replica shares.

Holds the per-key rate limiter and the response cache (pure objects from ratelimit.py and cache.py).
One replica by design: N ingress replicas each enforcing the full rate would grant N times it.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from ray import serve

from raygen.serve.cache import ResponseCache
from raygen.serve.ratelimit import Decision, RateLimiter


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
class Gateway:
    def __init__(self, rate_limit: dict, cache: dict, version: str):
        self.limiter = RateLimiter(rate_limit["requests_per_minute"], rate_limit["tokens_per_minute"]) \
            if rate_limit["enabled"] else None
        self.cache = ResponseCache(cache["max_entries"], cache["max_mib"] * 2**20, cache["ttl_s"]) \
            if cache["enabled"] else None
        self.version = version
        if self.cache is not None:
            # A new deployment of the graph means a promoted version: answers of the old one must go.
            self.cache.invalidate(keep_version=version)

    def acquire(self, key: str, tokens: int) -> Decision | None:
        return self.limiter.acquire(key, tokens, time.monotonic()) if self.limiter else None

    def settle(self, key: str, reserved: int, used: int) -> None:
        if self.limiter:
            self.limiter.settle(key, reserved, used, time.monotonic())

    def cache_get(self, key: str) -> dict | None:
        return self.cache.get(key, time.monotonic()) if self.cache else None

    def cache_put(self, key: str, value: dict) -> None:
        if self.cache:
            self.cache.put(key, value, self.version, time.monotonic())

    def invalidate(self) -> int:
        return self.cache.invalidate() if self.cache else 0

    def stats(self) -> dict:
        return {"cache": asdict(self.cache.stats()) if self.cache else None}
