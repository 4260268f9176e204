"""Per-key rate limits: requests/minute and tokens/minute token buckets. Pure Python, clock injected.

A request is admitted when both buckets hold enough: one request, and its token estimate (prompt tokens +
max_tokens, what it may cost at most). When it ends, `settle` refunds the tokens it did not use, so
the tokens/minute limit tracks real usage. Buckets start full (a burst of one minute's allowance) and
refill continuously. One RateLimiter instance is the source of truth for all ingress replicas (it lives
in the gateway actor), so N replicas do not each grant the full rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from raygen.errors import ConfigError


@dataclass
class Bucket:
    capacity: float  # the most it holds (one minute's allowance)
    rate: float  # refill per second
    level: float
    updated: float  # clock of the last refill

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait(self, amount: float) -> float:
        """Seconds until `amount` is available (0 when it is now)."""
        short = amount - self.level
        return 0.0 if short <= 0 else short / self.rate


@dataclass
class Decision:
    allowed: bool
    retry_after: float  # seconds to wait before retrying (0 when allowed)
    limit_requests: int
    remaining_requests: int
    limit_tokens: int
    remaining_tokens: int
    reset_requests: float  # seconds until the request bucket is full again
    reset_tokens: float

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers (plus Retry-After when refused)."""
        h = {"x-ratelimit-limit-requests": str(self.limit_requests),
             "x-ratelimit-remaining-requests": str(self.remaining_requests),
             "x-ratelimit-reset-requests": f"{self.reset_requests:.3f}s",
             "x-ratelimit-limit-tokens": str(self.limit_tokens),
             "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
             "x-ratelimit-reset-tokens": f"{self.reset_tokens:.3f}s"}
        if not self.allowed:
            h["retry-after"] = str(max(1, round(self.retry_after + 0.4999)))
        return h


class RateLimiter:
    def __init__(self, requests_per_minute: int, tokens_per_minute: int):
        if requests_per_minute < 1 or tokens_per_minute < 1:
            raise ConfigError("rate limits must be >= 1 per minute")
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self._buckets: dict[str, tuple[Bucket, Bucket]] = {}

    def _get(self, key: str, now: float) -> tuple[Bucket, Bucket]:
        if key not in self._buckets:
            self._buckets[key] = (Bucket(self.rpm, self.rpm / 60, self.rpm, now),
                                  Bucket(self.tpm, self.tpm / 60, self.tpm, now))
        req, tok = self._buckets[key]
        req.refill(now)
        tok.refill(now)
        return req, tok

    def acquire(self, key: str, tokens: int, now: float) -> Decision:
        """Admit one request that may use up to `tokens` tokens, or say how long to wait."""
        req, tok = self._get(key, now)
        if tokens > self.tpm:  # could never pass: say so rather than ask the client to wait forever
            return self._decision(False, float("inf"), req, tok)
        wait = max(req.wait(1), tok.wait(tokens))
        if wait == 0:
            req.level -= 1
            tok.level -= tokens
        return self._decision(wait == 0, wait, req, tok)

    def settle(self, key: str, reserved: int, used: int, now: float) -> None:
        """A request that reserved `reserved` tokens used `used`: refund the difference."""
        _, tok = self._get(key, now)
        tok.level = min(tok.capacity, tok.level + max(0, reserved - used))

    def _decision(self, allowed: bool, wait: float, req: Bucket, tok: Bucket) -> Decision:
        return Decision(allowed, wait, self.rpm, int(req.level), self.tpm, int(tok.level),
                        (req.capacity - req.level) / req.rate, (tok.capacity - tok.level) / tok.rate)


class ConcurrencyLimiter:
    """Per-key cap on requests generating at once. Each admitted request holds a lease until `release`;
    a lease also expires after `lease_ttl_s`, so the leases of an ingress replica that died mid-request
    come back by themselves."""

    def __init__(self, max_per_key: int | None, lease_ttl_s: float = 600.0, per_key: dict[str, int] | None = None):
        """max_per_key: every key's cap (None: uncapped); per_key: caps of named keys, overriding it."""
        caps = [max_per_key] if max_per_key is not None else []
        if any(c < 1 for c in caps + list((per_key or {}).values())):
            raise ConfigError("concurrency caps must be >= 1")
        self.max_per_key, self.per_key, self.ttl = max_per_key, dict(per_key or {}), lease_ttl_s
        self._leases: dict[str, tuple[str, float]] = {}  # lease id -> (key, expiry clock)
        self._held: dict[str, int] = {}  # key -> leases held

    def acquire(self, key: str, lease: str, now: float) -> bool:
        self._expire(now)
        if lease in self._leases:
            return True
        cap = self.cap(key)
        if cap is not None and self._held.get(key, 0) >= cap:
            return False
        self._leases[lease] = (key, now + self.ttl)
        self._held[key] = self._held.get(key, 0) + 1
        return True

    def release(self, lease: str) -> None:
        held = self._leases.pop(lease, None)
        if held is not None:
            key = held[0]
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]

    def cap(self, key: str) -> int | None:
        return self.per_key.get(key, self.max_per_key)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def _expire(self, now: float) -> None:
        for lease in [lease for lease, (_, until) in self._leases.items() if until <= now]:
            self.release(lease)
