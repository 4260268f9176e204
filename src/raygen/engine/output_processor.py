"""The engine's output side, beside the core (as vLLM v1 splits them): each sequence's incremental
detokenization and stop strings, finish reasons, and the RequestOutput deltas callers get. Pure Python:
the core schedules, runs and samples; this turns sampled tokens into what leaves the engine."""

from __future__ import annotations

import dataclasses
import time

from raygen.engine.detok import IncrementalDetokenizer
from raygen.engine.request import FINISH_REASON, RequestOutput, RequestTiming, SamplingParams, Sequence, TokenLogprob


class OutputProcessor:
    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer  # None: token ids only, no text (and no stop strings)

    def detokenizers(self, params: SamplingParams) -> list[IncrementalDetokenizer | None]:
        """One per sequence of a request."""
        if self.tokenizer is None:
            return [None] * params.n
        return [IncrementalDetokenizer(self.tokenizer, params.stop) for _ in range(params.n)]

    @staticmethod
    def text(detok: IncrementalDetokenizer | None, token: int, seq: Sequence) -> tuple[str, bool]:
        """(the text this token releases, whether a stop string ends the sequence now); the held-back text
        is flushed when the sequence finished for another reason."""
        if detok is None:
            return "", False
        text = detok.add([token])
        if detok.stopped and not seq.status.finished:
            return text, True
        return text + (detok.flush() if seq.status.finished else ""), False

    @staticmethod
    def output(req_id: str, idx: int, seq: Sequence, params: SamplingParams, timing: RequestTiming,
               token_ids: list[int], text: str, lp: TokenLogprob | None, reason: str | None) -> RequestOutput:
        """One sequence's delta; a final one (reason set) carries a snapshot of the request's timing."""
        snapshot = None
        if reason is not None:
            timing.finished = time.time()
            snapshot = dataclasses.replace(timing)  # later sequences of the request finish later
        return RequestOutput(req_id, idx, token_ids, text, ([lp] if lp else []) if params.logprobs is not None else None,
                             reason, len(seq.prompt_ids), seq.num_cached_prompt_tokens, len(seq.output_ids), snapshot)

    @staticmethod
    def finish_reason(seq: Sequence) -> str | None:
        return FINISH_REASON.get(seq.status) if seq.status.finished else None
