"""Exact-match response cache for deterministic requests. Pure Python, clock injected.

Only requests whose answer is a function of the request are cacheable: temperature 0, or a seed. The key
is the model version plus the validated request (every field present, defaults filled in by the
protocol models, keys sorted; streaming flags, `model` and `user` removed), so the same question asked
streaming or not, with a default spelled out or left out, hits the same entry, and a new version never
serves an old answer. Entries expire after a TTL; the least recently used go first when
the entry or byte bound is reached.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass

# Fields that do not change the answer.
_NOT_IN_KEY = {"model", "stream", "stream_options", "user"}


def cacheable(fields: dict) -> bool:
    """fields: the validated request's fields (`model_dump(mode="json")`, defaults filled in)."""
    return fields["temperature"] == 0 or fields.get("seed") is not None


def cache_key(version: str, route: str, fields: dict) -> str:
    """route: the endpoint; fields: the validated request's fields (`model_dump(mode="json")`)."""
    norm = {k: v for k, v in fields.items() if k not in _NOT_IN_KEY}
    blob = json.dumps([version, route, norm], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


@dataclass
class _Entry:
    value: dict
    size: int
    expires: float
    version: str


@dataclass
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int


class ResponseCache:
    def __init__(self, max_entries: int = 1024, max_bytes: int = 64 * 2**20, ttl_s: float = 600.0):
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = self.hits = self.misses = 0

    def get(self, key: str, now: float) -> dict | None:
        e = self._entries.get(key)
        if e is None or e.expires <= now:
            if e is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return e.value

    def put(self, key: str, value: dict, version: str, now: float) -> bool:
        """Store a finished response (a JSON-able dict); False when it alone exceeds the byte bound."""
        size = len(json.dumps(value, separators=(",", ":")))
        if size > self.max_bytes:
            return False
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(value, size, now + self.ttl_s, version)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def invalidate(self, keep_version: str | None = None) -> int:
        """Drop every entry (or every entry not of keep_version); returns how many went."""
        gone = [k for k, e in self._entries.items() if e.version != keep_version]
        for k in gone:
            self._drop(k)
        return len(gone)

    def stats(self) -> CacheStats:
        return CacheStats(len(self._entries), self._bytes, self.hits, self.misses)

    def _drop(self, key: str) -> None:
        e = self._entries.pop(key)
        self._bytes -= e.size
