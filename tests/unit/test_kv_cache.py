"""BlockManager: pure bookkeeping, no torch, no model. Milliseconds."""

import random

import pytest

from raygen.engine.kv_cache import BlockManager


def _all_free(bm: BlockManager) -> bool:
    return bm.num_free_blocks() == len(bm.blocks) and all(b.ref_count == 0 for b in bm.blocks)


def test_allocate_grows_block_table_and_frees():
    bm = BlockManager(num_blocks=8, block_size=4)
    assert bm.allocate("a", list(range(10)), 10) == 0
    assert len(bm.block_table("a")) == 3
    assert bm.allocate("a", list(range(12)), 12) == 0 and len(bm.block_table("a")) == 3
    bm.allocate("a", list(range(13)), 13)
    assert len(bm.block_table("a")) == 4
    bm.free("a")
    assert _all_free(bm)


def test_allocation_that_does_not_fit_changes_nothing():
    bm = BlockManager(num_blocks=4, block_size=4)
    bm.allocate("a", list(range(12)), 12)
    assert bm.allocate("b", list(range(100, 108)), 8) is None
    assert bm.num_free_blocks() == 1 and "b" not in bm._seqs


def test_prefix_hit_shares_blocks_and_leaves_one_token_to_compute():
    bm = BlockManager(num_blocks=16, block_size=4)
    prompt = list(range(12))
    bm.allocate("a", prompt, 12)
    bm.cache_full_blocks("a", prompt, 12)
    # Same 8-token prefix, different tail: two blocks hit.
    other = prompt[:8] + [99, 98, 97]
    assert bm.allocate("b", other, len(other)) == 8
    assert bm.block_table("b")[:2] == bm.block_table("a")[:2]
    assert bm.blocks[bm.block_table("a")[0]].ref_count == 2
    # The identical prompt hits only 2 of its 3 full blocks: the last token must still be computed.
    assert bm.allocate("c", prompt, 12) == 8
    assert bm.stats().hit_rate == pytest.approx(16 / 35)  # a: 0 of 12, b: 8 of 11, c: 8 of 12
    for r in "abc":
        bm.free(r)
    assert _all_free(bm)


def test_freed_cached_blocks_stay_reusable_until_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    p = [1, 2, 3, 4, 5]
    bm.allocate("a", p, 5)
    bm.cache_full_blocks("a", p, 4)
    bm.free("a")
    assert bm.stats().num_cached == 2 and _all_free(bm)
    assert bm.allocate("b", p, 5) == 4  # still there after free
    bm.free("b")
    # A different prompt needing every block evicts the cached ones.
    q = [9] * 8
    assert bm.allocate("c", q, 8) == 0
    assert bm.stats().num_cached == 0
    bm.free("c")
    assert bm.allocate("d", p, 5) == 0


def test_hash_chain_depends_on_the_whole_prefix():
    bm = BlockManager(num_blocks=8, block_size=2)
    bm.allocate("a", [1, 2, 3, 4, 0], 5)
    bm.cache_full_blocks("a", [1, 2, 3, 4, 0], 4)
    # Block [3, 4] after a different first block must not hit.
    assert bm.allocate("b", [7, 7, 3, 4, 0], 5) == 0


def test_fork_shares_full_blocks_and_copies_a_partial_one():
    bm = BlockManager(num_blocks=8, block_size=4)
    bm.allocate("p", list(range(6)), 6)
    src, dst = bm.fork("p", "c", 6)
    assert bm.block_table("c")[0] == bm.block_table("p")[0]
    assert src == bm.block_table("p")[1] and dst == bm.block_table("c")[1] and src != dst
    assert bm.fork("p", "d", 4) is True
    for r in "pcd":
        bm.free(r)
    assert _all_free(bm)


def test_random_workload_returns_every_block():
    rng = random.Random(0)
    bm = BlockManager(num_blocks=64, block_size=4)
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(4, 20))] for _ in range(5)]
    live: dict[str, list[int]] = {}
    for i in range(1000):
        if live and rng.random() < 0.4:
            rid = rng.choice(sorted(live))
            bm.free(rid)
            del live[rid]
            continue
        toks = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
        rid = f"r{i}"
        if bm.allocate(rid, toks, len(toks)) is None:
            continue
        live[rid] = toks
        bm.cache_full_blocks(rid, toks, len(toks))
        for _ in range(rng.randrange(0, 6)):  # decode a few tokens
            toks.append(rng.randrange(50))
            if bm.allocate(rid, toks, len(toks)) is None:
                break
            bm.cache_full_blocks(rid, toks, len(toks))
        refs = sum(b.ref_count for b in bm.blocks)
        assert refs == sum(len(bm.block_table(r)) for r in live)
    for rid in list(live):
        bm.free(rid)
    assert _all_free(bm)
    assert bm.stats().hit_tokens > 0
