"""Gateway deployment: the one source of truth that every ingress replica shares.

Holds the per-key rate limiter, the per-key concurrency cap and the response cache (pure objects from
ratelimit.py and cache.py). One replica by design: N ingress replicas each enforcing the full rate would
grant N times it. When it dies Serve recreates it, empty; meanwhile the ingress fails open for the cache
and as `rate_limit.on_gateway_failure` says for the limits (ingress.py).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from ray import serve

from raygen.serve.cache import ResponseCache
from raygen.serve.config import CacheSettings, RateLimitSettings
from raygen.serve.ratelimit import ConcurrencyLimiter, RateLimiter


@dataclass
class Admission:
    """The gateway's answer to one request: admitted or not, why not, and the headers to send."""

    allowed: bool
    reason: str = ""  # when refused: requests | tokens | concurrency
    headers: dict[str, str] = field(default_factory=dict)  # x-ratelimit-*, retry-after

    @property
    def message(self) -> str:
        if self.reason == "concurrency":
            return (f"too many concurrent requests for this API key (the limit is "
                    f"{self.headers.get('x-raygen-limit-concurrent')}); retry after {self.headers['retry-after']} s")
        return f"rate limit reached for {self.reason} per minute; retry after {self.headers['retry-after']} s"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1024)
class Gateway:
    def __init__(self, rate_limit: RateLimitSettings, cache: CacheSettings, version: str,
                 key_caps: dict[str, int] | None = None):
        """key_caps: concurrency caps of named API keys (overriding rate_limit's max_concurrent_per_key)."""
        rl = rate_limit
        self.limiter = RateLimiter(rl.requests_per_minute, rl.tokens_per_minute) if rl.enabled else None
        cap = rl.max_concurrent_per_key
        self.concurrency = ConcurrencyLimiter(cap, per_key=key_caps) if cap or key_caps else None
        self.cache = ResponseCache(cache.max_entries, cache.max_mib * 2**20, cache.ttl_s) if cache.enabled else None
        self.version = version
        if self.cache is not None:
            # A new deployment of the graph means a promoted version: answers of the old one must go.
            self.cache.invalidate(keep_version=version)

    def acquire(self, key: str, tokens: int, lease: str) -> Admission:
        """Admit one request of `key` that may use up to `tokens` tokens; while admitted it holds `lease`
        (release it with settle)."""
        now = time.monotonic()
        if self.concurrency and not self.concurrency.acquire(key, lease, now):
            return Admission(False, "concurrency", {"retry-after": "1",
                                                    "x-raygen-limit-concurrent": str(self.concurrency.cap(key))})
        if self.limiter is None:
            return Admission(True)
        d = self.limiter.acquire(key, tokens, now)
        if not d.allowed and self.concurrency:
            self.concurrency.release(lease)
        return Admission(d.allowed, "" if d.allowed else "tokens" if tokens > d.remaining_tokens else "requests",
                         d.headers())

    def settle(self, key: str, reserved: int, used: int, lease: str) -> None:
        """The request holding `lease` ended having used `used` of its `reserved` tokens."""
        if self.limiter:
            self.limiter.settle(key, reserved, used, time.monotonic())
        if self.concurrency:
            self.concurrency.release(lease)

    def cache_get(self, key: str) -> dict | None:
        return self.cache.get(key, time.monotonic()) if self.cache else None

    def cache_put(self, key: str, value: dict) -> None:
        if self.cache:
            self.cache.put(key, value, self.version, time.monotonic())

    def invalidate(self) -> int:
        return self.cache.invalidate() if self.cache else 0

    def stats(self) -> dict:
        return {"cache": asdict(self.cache.stats()) if self.cache else None}
