"""A request's life in the engine: its parameters, one ordered status enum, the token state the
scheduler needs, and the incremental output handed back to callers. Pure Python: no torch, no Ray."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from raygen.errors import GrammarError, InvalidPromptError

MAX_SPEC_CHARS = 64 * 1024  # a schema, regex or grammar larger than this is refused before compiling


@dataclass(frozen=True)
class GrammarSpec:
    """A structured-output constraint (engine/structured.py): a JSON schema (its JSON text), any JSON object,
    a regex, a choice among strings (a JSON list of them), or a grammar (Lark, or GBNF with ::= rules).
    Frozen and hashable: the compile cache's key. `param` names the request field it came from, for errors;
    it is not part of the key."""

    kind: Literal["json_schema", "json_object", "regex", "choice", "grammar"]
    text: str = ""
    param: str = field(default="structured_outputs", compare=False)

    def __post_init__(self):
        if len(self.text) > MAX_SPEC_CHARS:
            raise GrammarError(f"{self.param}: {len(self.text)} characters; at most {MAX_SPEC_CHARS}", self.param)


@dataclass
class SamplingParams:
    max_tokens: int = 16  # new tokens at most
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    min_p: float = 0.0  # keep tokens with p >= min_p × p(max)
    repetition_penalty: float = 1.0  # HF semantics: divide positive logits of seen tokens, multiply negative
    presence_penalty: float = 0.0  # OpenAI semantics, over generated tokens
    frequency_penalty: float = 0.0
    seed: int | None = None  # sequence i of the request draws from a generator seeded with seed + i
    n: int = 1  # sequences sampled from one prompt; they share the prompt's KV blocks
    stop: list[str] = field(default_factory=list)  # output ends just before the first of these texts
    stop_token_ids: list[int] = field(default_factory=list)  # always end the output (kept in token_ids)
    ignore_eos: bool = False  # keep going past the model's EOS (stop_token_ids still apply)
    logprobs: int | None = None  # None: off; N: logprob of each token plus the top-N alternatives
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (OpenAI's)
    structured: GrammarSpec | None = None  # constrain every sequence's output to this grammar
    prompt_logprobs: int | None = None  # None: off; N: each prompt token's logprob and the top-N alternatives

    def __post_init__(self):
        checks = [
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (0 <= self.temperature <= 2, "temperature must be in [0, 2]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 disables it)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (1 <= self.n <= 64, "n must be in [1, 64]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty"),
            (self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs must be in [0, 20]"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "prompt_logprobs must be in [0, 20]"),
            (all(-100 <= b <= 100 for b in self.logit_bias.values()), "logit_bias values must be in [-100, 100]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidPromptError(msg)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalized(self) -> bool:
        return (self.repetition_penalty != 1.0 or bool(self.presence_penalty or self.frequency_penalty)
                or bool(self.logit_bias))


class Status(enum.IntEnum):
    """Ordered: everything above RUNNING is finished."""

    WAITING = 0
    PREEMPTED = 1  # blocks were taken back; waits at the head of the queue, recomputed from scratch
    RUNNING = 2
    FINISHED_STOPPED = 3  # EOS, a stop token id or a stop string
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
    stop_token_ids: frozenset[int] = frozenset()  # always finish the sequence
    eos_token_ids: frozenset[int] = frozenset()  # finish it unless ignore_eos
    ignore_eos: bool = False
    arrival: int = 0  # admission order: FCFS key
    status: Status = Status.WAITING
    output_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    num_cached_prompt_tokens: int = 0  # prefix-cache hit on admission (usage accounting)
    num_preemptions: int = 0
    prompt_logits: bool = False  # the prompt's logits are wanted (prompt logprobs): no prefix-cache reuse
    grammar: object | None = None  # its grammar matcher, for a structured output (engine/structured.py)
    grammar_done: bool = False  # the grammar is complete: the sequence ends after this token

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def tokens(self, start: int, n: int) -> list[int]:
        """token_ids[start:start + n] without building the whole list (a decode reads one token)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p:start - p + n]
        return self.prompt_ids[start:start + n] + (self.output_ids[:start + n - p] if start + n > p else [])

    def append(self, token_id: int) -> None:
        """Add a sampled token and move to a finished status when it ends the sequence."""
        self.output_ids.append(token_id)
        if token_id in self.stop_token_ids or (token_id in self.eos_token_ids and not self.ignore_eos):
            self.status = Status.FINISHED_STOPPED
        elif len(self.output_ids) >= self.max_tokens:
            self.status = Status.FINISHED_LENGTH


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float  # log-probability under the model (before penalties, temperature and filters)
    top: list[tuple[int, float]]  # the N most likely (token id, logprob), best first


@dataclass
class RequestTiming:
    """Wall-clock marks (time.time() seconds) of a request in the engine, for queue/prefill/decode spans
    and the queue-time metric. `scheduled`/`first_token` stay None when it was aborted before them."""

    arrival: float
    scheduled: float | None = None  # first step that ran any of its prompt
    first_token: float | None = None
    finished: float | None = None


@dataclass
class RequestOutput:
    """What one engine step produced for one sequence of a request (deltas, not totals)."""

    req_id: str
    index: int  # which of the request's n sequences
    token_ids: list[int]  # new tokens since the previous output
    text: str = ""  # new text (when the engine has a tokenizer); stop strings already cut
    logprobs: list[TokenLogprob] | None = None  # one per new token when asked for
    finish_reason: str | None = None  # "stop" | "length" | "abort" on the sequence's last output
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    num_output_tokens: int = 0  # generated so far, this sequence
    timing: RequestTiming | None = None  # on a sequence's last output only
    # With SamplingParams.prompt_logprobs, on each sequence's first output: one entry per prompt token, the
    # first None (nothing precedes it)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
