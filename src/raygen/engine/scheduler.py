"""KV-cache-aware continuous batching. Policy only: which sequences run how many tokens this step.

Each step mixes decodes and (chunked) prefills under a token budget and a sequence cap. Running
sequences go first, oldest first; when one cannot grow, the newest running sequence is preempted (its
blocks freed, recomputed later). Waiting sequences are admitted strictly FCFS and only when their
blocks fit after prefix-cache hits, so a large request at the head is never starved by small ones.
Pure Python: no torch, no Ray.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from raygen.engine.kv_cache import BlockManager
from raygen.engine.request import Sequence, Status
from raygen.errors import InvalidPromptError, PromptTooLongError


@dataclass
class ScheduledSeq:
    """What the runner needs of one sequence for one step (it never sees the scheduler's state)."""

    req_id: str
    token_ids: list[int]  # the tokens to run: a chunk of prompt, or the last token
    start: int  # the position of the first of them: tokens before it are in the KV cache
    block_table: list[int]  # the KV blocks of positions [0, start + len(token_ids)), in order
    prompt_logits: bool = False  # the logits of every token run are wanted (prompt logprobs), not only the last


@dataclass
class SchedulerOutput:
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)  # req_id -> tokens to run, in order
    sample_req_ids: list[str] = field(default_factory=list)  # sequences whose last scheduled token samples
    preempted_req_ids: list[str] = field(default_factory=list)
    scheduled: list[ScheduledSeq] = field(default_factory=list)  # the runner's input, in num_scheduled_tokens order

    @property
    def total_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 256, max_num_batched_tokens: int = 2048):
        self.bm = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # admission order: [-1] is the newest
        self.seqs: dict[str, Sequence] = {}
        self._arrivals = 0

    def add(self, seq: Sequence) -> None:
        # The whole sequence must fit when it runs alone, or it would preempt itself forever.
        total = len(seq.prompt_ids) + seq.max_tokens
        need = self.bm.blocks_needed(total)
        if need > len(self.bm.blocks):
            raise PromptTooLongError(
                f"request {seq.req_id}: {len(seq.prompt_ids)} prompt tokens + max_tokens {seq.max_tokens} need "
                f"{need} KV blocks of {self.bm.block_size} tokens, but the cache has {len(self.bm.blocks)} "
                f"({len(self.bm.blocks) * self.bm.block_size} tokens); shorten the prompt, lower max_tokens "
                "or give the engine a larger KV budget")
        if seq.req_id in self.seqs:
            raise InvalidPromptError(f"request id {seq.req_id} is already in the engine")
        seq.arrival, self._arrivals = self._arrivals, self._arrivals + 1
        self.seqs[seq.req_id] = seq
        self.waiting.append(seq)

    def fork(self, parent: Sequence, child: Sequence) -> tuple[int, int] | None:
        """child (holding its first sampled token) continues parent's prompt, sharing its KV blocks.
        Returns a (src, dst) block pair the runner must copy before the next step, if any. When no block
        or sequence slot is free, the child waits at the head of the queue instead and recomputes only
        what the prefix cache does not hold."""
        child.arrival = parent.arrival
        self.seqs[child.req_id] = child
        n = len(parent.prompt_ids)
        shared = len(self.running) < self.max_num_seqs and self.bm.fork(parent.req_id, child.req_id, n)
        if shared is False:
            child.status = Status.WAITING
            self.waiting.appendleft(child)
            return None
        child.status, child.num_computed_tokens = Status.RUNNING, n
        child.num_cached_prompt_tokens = parent.num_cached_prompt_tokens
        self.running.append(child)
        return shared if isinstance(shared, tuple) else None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.bm.free(seq.req_id)
        seq.status, seq.num_computed_tokens = Status.PREEMPTED, 0
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)  # first in line again: it arrived before everyone waiting
        out.preempted_req_ids.append(seq.req_id)
        out.num_scheduled_tokens.pop(seq.req_id, None)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        for seq in list(self.running):
            if seq not in self.running or budget == 0:
                continue  # preempted by an older sequence earlier in this loop
            n = min(seq.num_tokens - seq.num_computed_tokens, budget)
            while self.bm.allocate(seq.req_id, seq.token_ids, seq.num_computed_tokens + n) is None:
                victim = self.running[-1]
                budget += out.num_scheduled_tokens.get(victim.req_id, 0)
                self._preempt(victim, out)
                if victim is seq:
                    break
            else:
                out.num_scheduled_tokens[seq.req_id] = n
                budget -= n
        if not out.preempted_req_ids:  # memory is tight when we just preempted: admit nobody this step
            while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
                seq = self.waiting[0]
                lookup = not seq.prompt_logits  # a cached prefix has no logits to give
                hit = len(self.bm.lookup_prefix(seq.token_ids)) * self.bm.block_size if lookup else 0
                n = min(seq.num_tokens - hit, budget)
                computed = self.bm.allocate(seq.req_id, seq.token_ids, hit + n, lookup=lookup)
                if computed is None:
                    break  # FCFS: nobody jumps the head of the queue
                self.waiting.popleft()
                seq.num_computed_tokens = computed
                if seq.status == Status.WAITING:
                    seq.num_cached_prompt_tokens = computed
                seq.status = Status.RUNNING
                self.running.append(seq)
                out.num_scheduled_tokens[seq.req_id] = n
                budget -= n
        out.sample_req_ids = [r for r, n in out.num_scheduled_tokens.items()
                              if self.seqs[r].num_computed_tokens + n == self.seqs[r].num_tokens]
        out.scheduled = [self._scheduled(self.seqs[r], n) for r, n in out.num_scheduled_tokens.items()]
        return out

    def _scheduled(self, seq: Sequence, n: int) -> ScheduledSeq:
        c = seq.num_computed_tokens
        blocks = -(-(c + n) // self.bm.block_size)
        return ScheduledSeq(seq.req_id, seq.tokens(c, n), c, self.bm.block_table(seq.req_id)[:blocks],
                            seq.prompt_logits and c < len(seq.prompt_ids))

    def update(self, out: SchedulerOutput, sampled: dict[str, int]) -> list[Sequence]:
        """Book a step's results: advance computed tokens, cache full blocks, append sampled tokens.
        Returns the sequences that finished (their blocks are already freed)."""
        finished = []
        for req_id, n in out.num_scheduled_tokens.items():
            seq = self.seqs.get(req_id)
            if seq is None or seq.status.finished:
                continue  # aborted while the step ran
            seq.num_computed_tokens += n
            self.bm.cache_full_blocks(req_id, seq.token_ids, seq.num_computed_tokens)
            if req_id in sampled:
                seq.append(sampled[req_id])
                if seq.status.finished:
                    finished.append(seq)
                    self._release(seq)
        return finished

    def abort(self, req_id: str) -> Sequence | None:
        return self.finish(req_id, Status.FINISHED_ABORTED)

    def finish(self, req_id: str, status: Status) -> Sequence | None:
        """End a sequence from outside the step (abort, stop string); its blocks are free at once."""
        seq = self.seqs.get(req_id)
        if seq is None:
            return None
        seq.status = status
        if seq in self.waiting:
            self.waiting.remove(seq)
        self._release(seq)
        return seq

    def _release(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.bm.free(seq.req_id)
        self.seqs.pop(seq.req_id, None)
