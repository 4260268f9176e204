"""A sequence's life in the engine: one ordered status enum and the token state the scheduler needs."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """Ordered: everything above RUNNING is finished."""

    WAITING = 0
    PREEMPTED = 1  # blocks were taken back; waits at the head of the queue, recomputed from scratch
    RUNNING = 2
    FINISHED_STOPPED = 3  # a stop token (EOS) was sampled
    FINISHED_LENGTH = 4  # max_tokens reached
    FINISHED_ABORTED = 5  # abort() or the client went away

    @property
    def finished(self) -> bool:
        return self > Status.RUNNING


FINISH_REASON = {Status.FINISHED_STOPPED: "stop", Status.FINISHED_LENGTH: "length",
                 Status.FINISHED_ABORTED: "abort"}


@dataclass(eq=False)  # identity, not field equality: queues find a sequence by `is`
class Sequence:
    req_id: str
    prompt_ids: list[int]
    max_tokens: int  # new tokens at most
    stop_token_ids: frozenset[int] = frozenset()  # finishing tokens (EOS), ignored with ignore_eos
    ignore_eos: bool = False
    arrival: int = 0  # admission order: FCFS key, and "newest" for preemption
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt_tokens: int = 0  # prefix-cache hit on admission (usage accounting)
    num_preemptions: int = 0

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def append(self, token_id: int) -> None:
        """Add a sampled token and move to a finished status when it ends the sequence."""
        self.output_ids.append(token_id)
        if token_id in self.stop_token_ids and not self.ignore_eos:
            self.status = Status.FINISHED_STOPPED
        elif len(self.output_ids) >= self.max_tokens:
            self.status = Status.FINISHED_LENGTH
