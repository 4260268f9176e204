"""KV-block bookkeeping: block tables, prefix caching by hash chain, LRU reuse of freed cached blocks.

Pure Python: no torch, no Ray. The model runner owns the K/V tensors; this module only decides which
block ids a sequence uses. A block's position in the pool never changes, so block ids index the pool.

    full block hash = hash((parent block hash, its token ids))   # one chain per prefix
    free queue      = blocks with no reader, oldest first; a cached one keeps its hash until it is
                      popped for reuse, so a later request with the same prefix can still hit it
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from raygen.errors import EngineSetupError


@dataclass
class Block:
    block_id: int
    ref_count: int = 0  # sequences whose block table holds this block
    hash: int | None = None  # set once the block is full and cached
    token_ids: tuple[int, ...] = ()  # the block's tokens when cached (guards against hash collisions)


@dataclass
class CacheStats:
    num_blocks: int
    num_free: int  # blocks with no reader (cached or empty)
    num_cached: int  # blocks that hold a reusable prefix
    query_tokens: int  # prompt tokens looked up in the prefix cache
    hit_tokens: int  # of those, tokens served from cache

    @property
    def usage(self) -> float:
        return 1 - self.num_free / self.num_blocks

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


@dataclass
class _Seq:
    block_ids: list[int] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading blocks already registered in the prefix cache
    last_hash: int | None = None  # hash of the last cached block (the chain's parent)


def block_hash(parent: int | None, token_ids: tuple[int, ...]) -> int:
    return hash((parent, token_ids))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise EngineSetupError(f"need at least one block of at least one token (got {num_blocks} × {block_size})")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))  # LRU order
        self._cached: dict[int, int] = {}  # block hash -> block id
        self._seqs: dict[str, _Seq] = {}
        self._query_tokens = 0
        self._hit_tokens = 0

    # -- queries ---------------------------------------------------------------------------------------
    def num_free_blocks(self) -> int:
        return len(self._free)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def block_table(self, req_id: str) -> list[int]:
        return self._seqs[req_id].block_ids

    def stats(self) -> CacheStats:
        return CacheStats(len(self.blocks), len(self._free), len(self._cached), self._query_tokens,
                          self._hit_tokens)

    def lookup_prefix(self, token_ids: list[int]) -> list[int]:
        """Cached blocks covering the longest full-block prefix of token_ids. At least one token is left
        uncovered: the model must still run on it to produce the next token's logits."""
        if not self.enable_prefix_caching:
            return []
        hits, parent = [], None
        for start in range(0, len(token_ids) - 1 - (len(token_ids) - 1) % self.block_size, self.block_size):
            chunk = tuple(token_ids[start:start + self.block_size])
            h = block_hash(parent, chunk)
            bid = self._cached.get(h)
            if bid is None or self.blocks[bid].token_ids != chunk:
                break
            hits.append(bid)
            parent = h
        return hits

    # -- changes ---------------------------------------------------------------------------------------
    def allocate(self, req_id: str, token_ids: list[int], num_tokens: int, lookup: bool = True) -> int | None:
        """Make req_id's block table cover its first num_tokens tokens.

        On a sequence's first call its prompt is matched against the prefix cache (unless not lookup); hit
        blocks are shared.
        Returns how many leading tokens are already computed (cache hits; 0 after the first call), or
        None when the free pool cannot cover the request — then nothing changed."""
        seq = self._seqs.get(req_id)
        hits: list[int] = []
        if seq is None and lookup:
            hits = self.lookup_prefix(token_ids)
        have = len(seq.block_ids) if seq else len(hits)
        need = max(0, self.blocks_needed(num_tokens) - have)
        # Hit blocks that sit in the free queue stop being free once we take them.
        free_hits = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        if need > len(self._free) - free_hits:
            return None
        if seq is None:
            seq = self._seqs[req_id] = _Seq()
            for bid in hits:
                self._take(bid)
                seq.block_ids.append(bid)
            seq.num_cached_blocks = len(hits)
            seq.last_hash = self.blocks[hits[-1]].hash if hits else None
            self._query_tokens += len(token_ids)
            self._hit_tokens += len(hits) * self.block_size
        for _ in range(need):
            seq.block_ids.append(self._take(self._pop_free()))
        return len(hits) * self.block_size

    def cache_full_blocks(self, req_id: str, token_ids: list[int], num_computed: int) -> None:
        """Register the blocks that the first num_computed tokens of token_ids fill completely."""
        if not self.enable_prefix_caching:
            return
        seq = self._seqs[req_id]
        for i in range(seq.num_cached_blocks, num_computed // self.block_size):
            chunk = tuple(token_ids[i * self.block_size:(i + 1) * self.block_size])
            h = block_hash(seq.last_hash, chunk)
            block = self.blocks[seq.block_ids[i]]
            if h not in self._cached:  # an identical block computed by another sequence stays canonical
                block.hash, block.token_ids = h, chunk
                self._cached[h] = block.block_id
            seq.last_hash = h
            seq.num_cached_blocks = i + 1

    def free(self, req_id: str) -> None:
        """Release a sequence's blocks. Cached ones stay findable until their slot is reused (LRU).
        Tail blocks go to the queue first, so a prompt's shared head outlives its private tail."""
        seq = self._seqs.pop(req_id, None)
        if seq is None:
            return
        for bid in reversed(seq.block_ids):
            block = self.blocks[bid]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[bid] = None

    def fork(self, parent_id: str, child_id: str, num_tokens: int) -> tuple[int, int] | bool:
        """child_id shares parent_id's full blocks (n > 1 sampling over one prompt of num_tokens tokens).

        A partly filled last block cannot be shared, since both would write into it: the child gets a
        fresh block and the (src, dst) pair is returned for the runner to copy. Returns True when no copy
        is needed, False when no free block is left for the copy (nothing changed)."""
        parent = self._seqs[parent_id]
        n_full = num_tokens // self.block_size
        partial = self.blocks_needed(num_tokens) > n_full
        if partial and not self._free:
            return False
        shared = parent.block_ids[:n_full]
        for bid in shared:
            self.blocks[bid].ref_count += 1
        child = self._seqs[child_id] = _Seq(list(shared), min(parent.num_cached_blocks, n_full),
                                            parent.last_hash if parent.num_cached_blocks <= n_full else None)
        if not partial:
            return True
        dst = self._take(self._pop_free())
        child.block_ids.append(dst)
        return parent.block_ids[n_full], dst

    # -- internals -------------------------------------------------------------------------------------
    def _pop_free(self) -> int:
        bid, _ = self._free.popitem(last=False)  # least recently freed first
        block = self.blocks[bid]
        if block.hash is not None:  # evict its cached prefix: the slot gets new contents
            if self._cached.get(block.hash) == bid:
                del self._cached[block.hash]
            block.hash, block.token_ids = None, ()
        return bid

    def _take(self, bid: int) -> int:
        block = self.blocks[bid]
        if block.ref_count == 0:
            self._free.pop(bid, None)
        block.ref_count += 1
        return bid
