"""Scheduler with hand-built "runner outputs": no model, no torch. The fake model's next token is a
function of the whole history, so any recompute error after preemption changes the output."""

import random

import pytest

from raygen.engine.kv_cache import BlockManager
from raygen.engine.request import Sequence, Status
from raygen.engine.scheduler import PromptTooLongError, Scheduler

V = 97


def next_token(tokens: list[int]) -> int:
    return (sum(tokens) * 31 + len(tokens)) % V


def run(sched: Scheduler, max_steps: int = 10_000):
    """Drive schedule → fake execute → update; return per-request outputs and the step outputs."""
    done, steps = {}, []
    for _ in range(max_steps):
        if not sched.has_work():
            break
        out = sched.schedule()
        steps.append(out)
        assert out.total_tokens <= sched.max_num_batched_tokens
        assert len(out.num_scheduled_tokens) <= sched.max_num_seqs
        _check_runner_input(sched, out)
        sampled = {r: next_token(sched.seqs[r].token_ids) for r in out.sample_req_ids}
        for seq in sched.update(out, sampled):
            done[seq.req_id] = (list(seq.output_ids), seq.status)
    assert not sched.has_work(), "did not converge"
    return done, steps


def _check_runner_input(sched: Scheduler, out) -> None:
    """The output carries all the runner needs: each sequence's tokens to run, where they start and the
    blocks that hold them, in schedule order (the runner never reads scheduler state)."""
    assert [s.req_id for s in out.scheduled] == list(out.num_scheduled_tokens)
    bs = sched.bm.block_size
    for s in out.scheduled:
        seq, n = sched.seqs[s.req_id], out.num_scheduled_tokens[s.req_id]
        assert s.start == seq.num_computed_tokens and s.token_ids == seq.token_ids[s.start:s.start + n]
        assert s.block_table == sched.bm.block_table(s.req_id)[:-(-(s.start + n) // bs)]
        assert len(s.block_table) * bs >= s.start + n


def reference(prompt: list[int], max_tokens: int) -> list[int]:
    toks, out = list(prompt), []
    for _ in range(max_tokens):
        t = next_token(toks)
        toks.append(t)
        out.append(t)
    return out


def make(i: int, rng: random.Random, max_tokens=None) -> Sequence:
    prompt = [rng.randrange(V) for _ in range(rng.randrange(1, 40))]
    return Sequence(f"r{i}", prompt, max_tokens or rng.randrange(1, 30))


@pytest.mark.parametrize("num_blocks,budget", [(256, 512), (12, 64), (6, 16)])
def test_outputs_match_reference_with_chunking_and_preemption(num_blocks, budget):
    rng = random.Random(num_blocks)
    bm = BlockManager(num_blocks, block_size=4)
    sched = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=budget)
    seqs = [make(i, rng) for i in range(40)]
    seqs = [s for s in seqs if bm.blocks_needed(len(s.prompt_ids) + s.max_tokens) <= num_blocks]
    for s in seqs:
        sched.add(s)
    done, steps = run(sched)
    for s in seqs:
        out, status = done[s.req_id]
        assert out == reference(s.prompt_ids, s.max_tokens)
        assert status == Status.FINISHED_LENGTH
    assert bm.num_free_blocks() == num_blocks and all(b.ref_count == 0 for b in bm.blocks)
    if num_blocks == 6:
        assert any(o.preempted_req_ids for o in steps), "the tiny cache should have forced preemption"


def test_fcfs_head_is_not_starved_and_order_is_kept():
    bm = BlockManager(num_blocks=9, block_size=4)
    sched = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    big = Sequence("big", list(range(32)), 4)  # 8 blocks to admit, 9 at the end
    sched.add(Sequence("small0", list(range(8)), 12))  # 2 blocks: big cannot join it
    sched.add(big)
    sched.add(Sequence("small1", [3, 4], 2))
    out = sched.schedule()
    # small0 runs; big does not fit next to it, and small1 must not jump ahead of big.
    assert list(out.num_scheduled_tokens) == ["small0"]
    done, _ = run(sched)
    assert set(done) == {"small0", "big", "small1"}


def test_prefill_is_chunked_under_the_budget_and_samples_only_at_the_end():
    bm = BlockManager(num_blocks=32, block_size=4)
    sched = Scheduler(bm, max_num_batched_tokens=8)
    sched.add(Sequence("a", list(range(20)), 1))
    chunks = []
    while sched.has_work():
        out = sched.schedule()
        chunks.append((out.num_scheduled_tokens["a"], out.sample_req_ids))
        sched.update(out, {r: 0 for r in out.sample_req_ids})
    assert chunks == [(8, []), (8, []), (4, ["a"])]


def test_prefix_cache_hit_skips_computed_tokens():
    bm = BlockManager(num_blocks=32, block_size=4)
    sched = Scheduler(bm)
    system = list(range(16))
    sched.add(Sequence("a", system + [50], 2))
    run(sched)
    sched.add(Sequence("b", system + [60, 61], 2))
    out = sched.schedule()
    assert out.num_scheduled_tokens["b"] == 2  # 16 prompt tokens came from the cache
    assert sched.seqs["b"].num_cached_prompt_tokens == 16


def test_stop_token_abort_and_too_long_prompt():
    bm = BlockManager(num_blocks=4, block_size=4)
    sched = Scheduler(bm)
    with pytest.raises(PromptTooLongError, match="the cache has 4"):
        sched.add(Sequence("huge", list(range(16)), 1))
    stop_at = next_token([5])
    sched.add(Sequence("s", [5], 10, stop_token_ids=frozenset({stop_at})))
    sched.add(Sequence("x", [6], 10))
    out = sched.schedule()
    sched.abort("x")
    finished = sched.update(out, {r: next_token(sched.seqs[r].token_ids) for r in out.sample_req_ids
                                  if r in sched.seqs})
    assert [s.req_id for s in finished] == ["s"] and finished[0].status == Status.FINISHED_STOPPED
    assert bm.num_free_blocks() == 4 and not sched.has_work()


def test_thousand_requests_with_random_aborts_return_every_block():
    rng = random.Random(7)
    bm = BlockManager(num_blocks=24, block_size=4)
    sched = Scheduler(bm, max_num_seqs=16, max_num_batched_tokens=48)
    pending = [make(i, rng) for i in range(1000)]
    preemptions = aborts = 0
    while pending or sched.has_work():
        for _ in range(rng.randrange(0, 4)):
            if pending:
                seq = pending.pop()
                if bm.blocks_needed(len(seq.prompt_ids) + seq.max_tokens) <= 24:
                    sched.add(seq)
        if sched.seqs and rng.random() < 0.1:
            sched.abort(rng.choice(sorted(sched.seqs)))
            aborts += 1
        out = sched.schedule()
        preemptions += len(out.preempted_req_ids)
        sched.update(out, {r: next_token(sched.seqs[r].token_ids) for r in out.sample_req_ids})
        held = sum(len(bm.block_table(r)) for r in sched.seqs if r in bm._seqs)
        assert sum(b.ref_count for b in bm.blocks) == held
    assert preemptions > 0 and aborts > 0
    assert bm.num_free_blocks() == 24 and all(b.ref_count == 0 for b in bm.blocks)
