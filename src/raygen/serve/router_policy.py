"""Prefix-affinity routing policy: send a request to the replica most likely to hold its prompt's prefix
in its KV cache, unless that replica is busier than the least-loaded one by more than a margin. Pure.

The index remembers, per chunk-aligned prompt prefix (a hash chain over `chunk`-token pieces, the same
idea as the engine's block hashes), which replicas were recently sent a prompt starting with it. It is
an estimate: a replica may have evicted the blocks since, which costs a recompute, never a wrong answer.
The decision is per request: one hot prefix does not pin the fleet, because a replica whose load is more
than `margin` above the minimum loses its affinity for that request.
"""

from __future__ import annotations

from collections import OrderedDict


class PrefixAffinity:
    def __init__(self, chunk: int = 16, margin: int = 4, max_entries: int = 100_000):
        self.chunk, self.margin, self.max_entries = chunk, margin, max_entries
        self._index: OrderedDict[int, set[str]] = OrderedDict()  # prefix hash -> replica ids

    def _hashes(self, token_ids: list[int]) -> list[int]:
        out, h = [], None
        for start in range(0, len(token_ids) - len(token_ids) % self.chunk, self.chunk):
            h = hash((h, tuple(token_ids[start:start + self.chunk])))
            out.append(h)
        return out

    def match(self, token_ids: list[int]) -> dict[str, int]:
        """replica id -> how many leading tokens of token_ids it is believed to hold."""
        held: dict[str, int] = {}
        for i, h in enumerate(self._hashes(token_ids)):
            replicas = self._index.get(h)
            if not replicas:
                break
            for r in replicas:
                held[r] = (i + 1) * self.chunk
        return held

    def rank(self, token_ids: list[int], loads: dict[str, int]) -> list[str]:
        """Replica ids, best first. loads: ongoing requests per live replica."""
        if not loads:
            return []
        least = min(loads.values())
        by_load = sorted(loads, key=lambda r: (loads[r], r))
        held = {r: n for r, n in self.match(token_ids).items() if r in loads}
        affine = [r for r in sorted(held, key=lambda r: (-held[r], loads[r])) if loads[r] <= least + self.margin]
        return affine + [r for r in by_load if r not in affine]

    def record(self, token_ids: list[int], replica: str) -> None:
        for h in self._hashes(token_ids):
            self._index.setdefault(h, set()).add(replica)
            self._index.move_to_end(h)
        while len(self._index) > self.max_entries:
            self._index.popitem(last=False)

    def forget(self, replica: str) -> None:
        """A replica went away: it holds nothing any more."""
        for replicas in self._index.values():
            replicas.discard(replica)
