"""The engine: schedule → execute → sample/update, one step at a time, and an asyncio face over it.

    LLMEngine        synchronous core; add_request / abort / step / stats; usable alone (tests, bench)
    AsyncLLMEngine   runs LLMEngine.step in a background thread while there is work; add_request()
                     returns an async iterator of RequestOutput deltas; leaving the iterator early aborts

The seam follows vLLM v1: the scheduler's output carries what the runner needs (each sequence's tokens,
start and block table: scheduler.ScheduledSeq), so the runner never reads scheduler state; detokenization,
stop strings and the RequestOutput deltas live in the output processor beside the core
(output_processor.py). No Ray here: the Serve deployment wraps AsyncLLMEngine, one per replica.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from raygen.engine.config import EngineConfig
from raygen.engine.detok import IncrementalDetokenizer
from raygen.engine.output_processor import OutputProcessor
from raygen.engine.kv_cache import BlockManager
from raygen.engine.request import (GrammarSpec, RequestOutput, RequestTiming, SamplingParams, Sequence, Status,
                                   TokenLogprob)
from raygen.engine.runner import ModelRunner
from raygen.engine.sampling import apply_penalties, sample, top_logprobs
from raygen.engine.scheduler import Scheduler
from raygen.errors import (EngineClosedError, EngineOverloadedError, EngineSetupError, InvalidPromptError,
                           PromptTooLongError)

log = logging.getLogger(__name__)
MAX_CHUNK_OUTPUTS = 8  # step outputs merged into one streamed chunk at most
MAX_COALESCED_OUTPUTS = 256  # ... while streams are coalesced (EngineConfig.stream_interval_ms)


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_usage: float  # fraction of KV blocks held by sequences
    prefix_hit_rate: float  # prompt tokens served from cache / prompt tokens looked up
    num_blocks: int
    num_free_blocks: int
    num_cached_blocks: int
    num_steps: int
    num_preemptions: int
    num_prompt_tokens_computed: int  # prefill tokens actually run (recompute after preemption included)
    num_generated_tokens: int
    num_aborted: int  # requests aborted before they finished (a client that left, a cancelled call)


@dataclass
class StepRecord:
    """What one step ran, for roofline accounting: per scheduled sequence (new tokens, context after)."""

    seconds: float
    tokens: list[tuple[int, int]]
    num_sampled: int


@dataclass
class _Request:
    req_id: str
    params: SamplingParams
    seqs: list[Sequence]  # index i is the request's i-th sequence; children join after the prompt's prefill
    detoks: list[IncrementalDetokenizer | None]
    generators: list[torch.Generator | None]
    pending_children: list[Sequence] = field(default_factory=list)
    prompt_lps: list[TokenLogprob | None] | None = None  # by prompt position, with SamplingParams.prompt_logprobs
    num_finished: int = 0
    timing: RequestTiming = field(default_factory=lambda: RequestTiming(time.time()))


def merge(outputs: Iterable[RequestOutput]) -> RequestOutput:
    """Fold consecutive deltas of one sequence into one (text, ids and logprobs joined, latest counts)."""
    outputs = list(outputs)
    first, last = outputs[0], outputs[-1]
    lps = [lp for o in outputs for lp in (o.logprobs or [])] if first.logprobs is not None else None
    prompt_lps = next((o.prompt_logprobs for o in outputs if o.prompt_logprobs is not None), None)
    return RequestOutput(first.req_id, first.index, [t for o in outputs for t in o.token_ids],
                         "".join(o.text for o in outputs), lps, last.finish_reason, last.num_prompt_tokens,
                         last.num_cached_tokens, last.num_output_tokens, last.timing, prompt_lps)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        if not config.model:
            raise EngineSetupError("EngineConfig.model is empty: give a local Hugging Face model directory")
        self.config = config
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.runner = ModelRunner(config.model, dtype=config.dtype, device=config.device,
                                  block_size=config.block_size, kv_cache_bytes=config.kv_cache_bytes,
                                  kv_cache_fraction=config.kv_cache_fraction)
        self.max_model_len = min(config.max_model_len or self.runner.shape.max_len, self.runner.shape.max_len)
        self.bm = BlockManager(self.runner.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.bm, config.max_num_seqs, config.max_num_batched_tokens)
        self.tokenizer = self._load_tokenizer(config)
        self.outputs = OutputProcessor(self.tokenizer)
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        self.eos_token_ids = self.runner.eos_token_ids | ({tok_eos} if tok_eos is not None else set())
        self._requests: dict[str, _Request] = {}
        self._owner: dict[str, tuple[_Request, int]] = {}  # sequence id -> (request, index)
        self._copies: list[tuple[int, int]] = []  # fork copies due before the next forward
        self._lock = threading.RLock()  # add/abort may come from another thread while a forward runs
        self._counts = dict.fromkeys(("steps", "preemptions", "prompt_tokens", "generated", "aborted"), 0)
        self.step_log: list[StepRecord] | None = None  # set to [] to record steps (benchmarks)
        self._step_sizes: deque[int] = deque(maxlen=4096)  # sequences per step, until drained (metrics)
        self._grammars = None  # structured.Grammars, made on the first constrained request
        self._grammars_lock = threading.Lock()

    @staticmethod
    def _load_tokenizer(config: EngineConfig):
        path = config.model if config.tokenizer == "auto" else config.tokenizer
        if path is None or (config.tokenizer == "auto" and not any(
                Path(path, f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))):
            return None
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)

    # -- requests ---------------------------------------------------------------------------------------
    def grammars(self):
        """The engine's grammar compiler and matcher factory (structured outputs), made on first use."""
        with self._grammars_lock:
            if self._grammars is None:
                if self.tokenizer is None:
                    raise InvalidPromptError("structured outputs need a tokenizer, and this engine's model "
                                             "directory has none")
                from raygen.engine.structured import Grammars

                self._grammars = Grammars(self.tokenizer, self.runner.shape.vocab, self.eos_token_ids,
                                          any_whitespace=self.config.grammar_any_whitespace)
            return self._grammars

    def compile_grammar(self, spec: GrammarSpec) -> None:
        """Compile (and cache) a structured-output spec; GrammarError when it does not compile. Call it before
        add_request from a thread that is not the step loop's: a large schema takes tens of milliseconds."""
        self.grammars().compile(spec)

    def add_request(self, req_id: str, prompt_ids: list[int], params: SamplingParams) -> None:
        """Queue a request; raises ValueError (bad ids, too long, stop strings without a tokenizer) at once,
        EngineOverloadedError when max_num_waiting requests already wait."""
        vocab = self.runner.shape.vocab
        if not prompt_ids:
            raise InvalidPromptError("the prompt has no tokens")
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise InvalidPromptError(f"prompt token ids must be in [0, {vocab}); got {min(prompt_ids)}..{max(prompt_ids)}")
        if len(prompt_ids) + params.max_tokens > self.max_model_len:
            raise PromptTooLongError(f"{len(prompt_ids)} prompt tokens + max_tokens {params.max_tokens} exceed the model's "
                             f"context of {self.max_model_len} tokens; shorten the prompt or lower max_tokens")
        if params.logit_bias and not all(0 <= t < vocab for t in params.logit_bias):
            raise InvalidPromptError(f"logit_bias token ids must be in [0, {vocab})")
        if params.stop and self.tokenizer is None:
            raise InvalidPromptError("stop strings need a tokenizer, and this engine's model directory has none")
        eos = frozenset() if params.ignore_eos else self.eos_token_ids
        seqs = [Sequence(req_id if i == 0 else f"{req_id}/{i}", list(prompt_ids), params.max_tokens,
                         frozenset(params.stop_token_ids), eos, params.ignore_eos) for i in range(params.n)]
        if params.prompt_logprobs is not None:
            seqs[0].prompt_logits = True  # the first sequence runs the prompt; the others fork from it
        if params.structured is not None:
            grammars = self.grammars()
            for s in seqs:  # each sequence walks its own grammar (n > 1 samples differ)
                s.grammar = grammars.matcher(params.structured)
        device = self.runner.device
        gens = [torch.Generator(device=device).manual_seed(params.seed + i) if params.seed is not None else None
                for i in range(params.n)]
        detoks = self.outputs.detokenizers(params)
        with self._lock:
            if req_id in self._requests:
                raise InvalidPromptError(f"request id {req_id} is already in the engine")
            bound = self.config.max_num_waiting
            if bound is not None and len(self.scheduler.waiting) >= bound:
                raise EngineOverloadedError(f"{len(self.scheduler.waiting)} requests are already waiting for "
                                            f"admission (max_num_waiting={bound}); retry shortly")
            self.scheduler.add(seqs[0])
            req = self._requests[req_id] = _Request(req_id, params, seqs, detoks, gens, seqs[1:])
            if params.prompt_logprobs is not None:
                req.prompt_lps = [None] * len(prompt_ids)
            for i, s in enumerate(seqs):
                self._owner[s.req_id] = (req, i)

    def abort(self, req_id: str) -> list[RequestOutput]:
        """Free every block of the request now; returns the final 'abort' outputs of its live sequences."""
        with self._lock:
            req = self._requests.get(req_id)
            if req is None:
                return []
            outs = []
            for i, seq in enumerate(req.seqs):
                if not seq.status.finished:
                    self.scheduler.finish(seq.req_id, Status.FINISHED_ABORTED)
                    seq.status = Status.FINISHED_ABORTED
                    outs.append(self._output(req, i, [], "", None))
            self._counts["aborted"] += bool(outs)
            self._forget(req)
            return outs

    def drain_step_sizes(self) -> list[int]:
        """Sequences per step of the steps since the last call (for the batch-size histogram)."""
        out = []
        while self._step_sizes:
            out.append(self._step_sizes.popleft())
        return out

    def has_unfinished(self) -> bool:
        return bool(self._requests)

    def stats(self) -> EngineStats:
        c = self.bm.stats()
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting), c.usage, c.hit_rate,
                           c.num_blocks, c.num_free, c.num_cached, self._counts["steps"],
                           self._counts["preemptions"], self._counts["prompt_tokens"], self._counts["generated"],
                           self._counts["aborted"])

    # -- one step ---------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        t0 = time.perf_counter()
        with self._lock:
            if self._copies:
                self.runner.copy_blocks(self._copies)
                self._copies.clear()
            out = self.scheduler.schedule()
            if not out.num_scheduled_tokens:
                return []
            now = time.time()
            for r in out.num_scheduled_tokens:
                owner = self._owner.get(r)
                if owner and owner[0].timing.scheduled is None:
                    owner[0].timing.scheduled = now
            self._step_sizes.append(len(out.num_scheduled_tokens))
            inputs = self.runner.prepare(out)
            ran = [(len(s.token_ids), s.start + len(s.token_ids)) for s in out.scheduled]
        logits = self.runner.execute(inputs)  # no lock: abort() may free blocks meanwhile
        with self._lock:
            outputs = self._process(out, logits, inputs.prompt_spans)
        self._counts["steps"] += 1
        self._counts["preemptions"] += len(out.preempted_req_ids)
        self._counts["prompt_tokens"] += sum(n for r, n in out.num_scheduled_tokens.items()
                                             if n > 1 or r not in out.sample_req_ids)
        if self.step_log is not None:
            self.step_log.append(StepRecord(time.perf_counter() - t0, ran, len(out.sample_req_ids)))
        return outputs

    def _process(self, out, logits: torch.Tensor, prompt_spans=None) -> list[RequestOutput]:
        """Sample the step's sequences, book the step in the scheduler, and emit each sequence's delta.
        logits: the sampling rows, then the prompt rows of prompt_spans (prompt logprobs)."""
        if prompt_spans:
            self._book_prompt_logprobs(logits[len(out.sample_req_ids):], prompt_spans)
            logits = logits[:len(out.sample_req_ids)]
        rows = self._rows(out)
        if not rows:  # a step of prefill chunks only: book their progress, nothing to sample
            self.scheduler.update(out, {})
            return []
        token_ids, lps = self._sample(logits, rows)
        self._counts["generated"] += len(token_ids)
        now = time.time()
        for seq, _ in rows:
            t = self._owner[seq.req_id][0].timing
            if t.first_token is None:
                t.first_token = now
        self.scheduler.update(out, self._fork_or_book(rows, token_ids))
        return [self._emit(seq, tok, lp) for (seq, _), tok, lp in zip(rows, token_ids, lps, strict=True)]

    def _book_prompt_logprobs(self, logits: torch.Tensor, spans: list[tuple[str, int, int]]) -> None:
        """Each prompt row j of a span (req_id, c, n) predicts prompt token c + j + 1: its logprob and the top
        alternatives, stored by position (a preempted prompt run again overwrites the same entries)."""
        lp = logits.log_softmax(dim=-1)
        r = 0
        for req_id, c, n in spans:
            rows, r = lp[r:r + n], r + n
            owner = self._owner.get(req_id)
            if owner is None or owner[0].prompt_lps is None:
                continue  # aborted while the forward ran
            req = owner[0]
            prompt, k = req.seqs[0].prompt_ids, req.params.prompt_logprobs
            m = min(n, len(prompt) - 1 - c)  # the last prompt row predicts the first output token: not ours
            if m <= 0:
                continue
            targets = torch.tensor(prompt[c + 1:c + 1 + m], device=lp.device)
            chosen = rows[:m].gather(1, targets.unsqueeze(1)).squeeze(1).tolist()
            top_lp, top_ids = (x.tolist() for x in rows[:m].topk(k, dim=-1)) if k else ([[]] * m, [[]] * m)
            for j in range(m):
                req.prompt_lps[c + 1 + j] = TokenLogprob(prompt[c + 1 + j], chosen[j],
                                                         list(zip(top_ids[j], top_lp[j], strict=True)))

    def _rows(self, out) -> list[tuple[Sequence, int]]:
        """(sequence, logits row) of every live sequence that samples; a prompt's children share its row."""
        rows: list[tuple[Sequence, int]] = []
        for i, r in enumerate(out.sample_req_ids):
            seq = self.scheduler.seqs.get(r)
            if seq is None or seq.status.finished:
                continue  # aborted while the forward ran
            rows.append((seq, i))
            req, idx = self._owner[r]
            if idx == 0 and req.pending_children and not seq.output_ids:
                rows.extend((child, i) for child in req.pending_children)
        return rows

    def _fork_or_book(self, rows: list[tuple[Sequence, int]], token_ids: list[int]) -> dict[str, int]:
        """A child's first token forks it off its parent's prompt; the others' tokens are returned for the
        scheduler to book."""
        sampled = {}
        for (seq, _), tok in zip(rows, token_ids, strict=True):
            req, _ = self._owner[seq.req_id]
            if seq not in req.pending_children:
                sampled[seq.req_id] = tok
                continue
            req.pending_children.remove(seq)
            seq.append(tok)
            if not seq.status.finished and (copy := self.scheduler.fork(req.seqs[0], seq)):
                self._copies.append(copy)
        return sampled

    def _emit(self, seq: Sequence, tok: int, lp: TokenLogprob | None) -> RequestOutput:
        """The output processor's text for the token; a stop string finishes the sequence in the core."""
        req, idx = self._owner[seq.req_id]
        if seq.grammar_done:  # the output is complete: end it (before its text, so held-back text is flushed)
            if seq.status.finished:
                seq.status = Status.FINISHED_STOPPED  # complete on its last allowed token: "stop", not "length"
            else:
                self.scheduler.finish(seq.req_id, Status.FINISHED_STOPPED)
        text, stop = self.outputs.text(req.detoks[idx], tok, seq)
        if stop:
            self.scheduler.finish(seq.req_id, Status.FINISHED_STOPPED)
        reason = self.outputs.finish_reason(seq)
        output = self._output(req, idx, [tok], text, lp, reason)
        if req.prompt_lps is not None and len(seq.output_ids) == 1:  # each sequence's first output carries them
            output.prompt_logprobs = list(req.prompt_lps)
        if reason is not None:
            req.num_finished += 1
            if req.num_finished == len(req.seqs):
                self._forget(req)
        return output

    def _sample(self, logits: torch.Tensor, rows: list[tuple[Sequence, int]]
                ) -> tuple[list[int], list[TokenLogprob | None]]:
        reqs = [self._owner[s.req_id] for s, _ in rows]
        params = [req.params for req, _ in reqs]
        if len(rows) != logits.shape[0] or any(i != j for j, (_, i) in enumerate(rows)):
            logits = logits[torch.tensor([i for _, i in rows], device=logits.device)]
        raw = logits
        matchers = [s.grammar for s, _ in rows]
        if any(m is not None for m in matchers):  # structured outputs: mask what each grammar forbids next
            logits = logits.clone() if logits is raw else logits
            self.grammars().apply(logits, matchers)
        if all(p.greedy and not p.penalized for p in params):
            chosen = logits.argmax(dim=-1)
        else:
            if any(p.penalized for p in params):
                logits = apply_penalties(logits.clone(), params, [s.prompt_ids for s, _ in rows],
                                         [s.output_ids for s, _ in rows])
            chosen = sample(logits, params, [req.generators[i] for req, i in reqs])
        token_ids = chosen.tolist()
        for (seq, _), m, tok in zip(rows, matchers, token_ids, strict=True):
            if m is not None:
                seq.grammar_done = self._grammars.accept(m, tok)
        lps: list[TokenLogprob | None] = [None] * len(rows)
        want = [j for j, p in enumerate(params) if p.logprobs is not None]
        if want:
            sel = torch.tensor(want, device=raw.device)
            n = max(params[j].logprobs for j in want)
            lp, top_lp, top_ids = (x.tolist() for x in top_logprobs(raw[sel], chosen[sel], n))
            for k, j in enumerate(want):
                m = params[j].logprobs
                lps[j] = TokenLogprob(token_ids[j], lp[k], list(zip(top_ids[k][:m], top_lp[k][:m], strict=True)))
        return token_ids, lps

    def _output(self, req: _Request, idx: int, token_ids: list[int], text: str, lp: TokenLogprob | None,
                reason: str | None = "abort") -> RequestOutput:
        return self.outputs.output(req.req_id, idx, req.seqs[idx], req.params, req.timing, token_ids, text, lp, reason)

    def _forget(self, req: _Request) -> None:
        self._requests.pop(req.req_id, None)
        for s in req.seqs:
            self._owner.pop(s.req_id, None)

    # -- convenience ------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]
                 ) -> list[list[RequestOutput]]:
        """Run prompts to completion; per prompt, one merged output per sequence (index order)."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        ids = [f"gen-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(prompts))]
        for rid, p, sp in zip(ids, prompts, params, strict=True):
            self.add_request(rid, p, sp)
        got: dict[tuple[str, int], list[RequestOutput]] = {}
        while self.has_unfinished():
            for o in self.step():
                got.setdefault((o.req_id, o.index), []).append(o)
        return [[merge(got[(rid, i)]) for i in range(sp.n)] for rid, sp in zip(ids, params, strict=True)]


class AsyncLLMEngine:
    """LLMEngine on a background thread; safe to call from one asyncio event loop."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._sinks: dict[str, Callable[[object], None]] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="raygen-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, config: EngineConfig) -> AsyncLLMEngine:
        return cls(LLMEngine(config))

    async def compile_grammar(self, spec: GrammarSpec) -> None:
        """Compile a structured-output spec on a worker thread (a new schema never stalls the step loop, nor
        this event loop); a cache hit returns at once. GrammarError when it does not compile."""
        grammars = self.engine.grammars()
        if not grammars.is_compiled(spec):
            await asyncio.to_thread(grammars.compile, spec)

    def add_request(self, prompt_ids: list[int], params: SamplingParams, req_id: str | None = None,
                    batched: bool = False) -> AsyncIterator[RequestOutput] | AsyncIterator[list[RequestOutput]]:
        """Queue a request now (bad input raises here) and return its stream of deltas. With batched=True
        each item is a list: everything already produced, merged per sequence (fewer, larger chunks for
        a consumer that is slower than the engine)."""
        if self._closed:
            raise EngineClosedError("the engine is shut down")
        req_id = req_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        self._sinks[req_id] = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)
        try:
            self.engine.add_request(req_id, prompt_ids, params)
        except Exception:
            self._sinks.pop(req_id, None)
            raise
        with self._wake:
            self._wake.notify()
        return self._stream(req_id, queue, params.n, batched)

    async def _stream(self, req_id: str, queue: asyncio.Queue, n: int, batched: bool):
        remaining, last = n, None
        cfg = self.engine.config
        interval = cfg.stream_interval_ms / 1000
        try:
            while remaining:
                items = [await queue.get()]
                cap = MAX_CHUNK_OUTPUTS
                if batched and interval and last is not None and len(self._sinks) > cfg.stream_coalesce_above:
                    # Busy: hold this chunk until the interval since the last one is up, collecting the steps
                    # made meanwhile (the first chunk, and a finished request's last, are not held).
                    wait = last + interval - time.perf_counter()
                    if wait > 0 and not items[0].finished:
                        await asyncio.sleep(wait)
                    cap = MAX_COALESCED_OUTPUTS
                # Merge what is already there, up to a chunk: a slow consumer gets fewer, larger pieces, but
                # text still streams rather than arriving in one lump at the end.
                while batched and not queue.empty() and len(items) < cap:
                    items.append(queue.get_nowait())
                last = time.perf_counter()
                for item in items:
                    if isinstance(item, BaseException):
                        raise item
                remaining -= sum(item.finished for item in items)
                if not batched:
                    yield items[0]
                    continue
                by_index: dict[int, list[RequestOutput]] = {}
                for item in items:
                    by_index.setdefault(item.index, []).append(item)
                yield [merge(group) for group in by_index.values()]
        finally:
            if remaining:  # the consumer left early: free the blocks now
                self.abort(req_id)
            self._sinks.pop(req_id, None)

    def abort(self, req_id: str) -> None:
        outs = self.engine.abort(req_id)
        sink = self._sinks.get(req_id)
        for o in outs:
            if sink:
                sink(o)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def drain_step_sizes(self) -> list[int]:
        return self.engine.drain_step_sizes()

    def shutdown(self) -> None:
        self._closed = True
        with self._wake:
            self._wake.notify()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self.engine.has_unfinished():
                    self._wake.wait()
            if self._closed:
                return
            try:
                outputs = self.engine.step()
            except Exception as exc:  # fail the requests in flight, keep the engine serving new ones
                log.exception("engine step failed; aborting the requests in flight")
                for req_id in list(self.engine._requests):
                    self.engine.abort(req_id)
                    sink = self._sinks.get(req_id)
                    if sink:
                        sink(RuntimeError(f"engine step failed: {exc!r}"))
                continue
            for key, group in itertools.groupby(outputs, key=lambda o: o.req_id):
                sink = self._sinks.get(key)
                if sink:
                    for o in group:
                        sink(o)
