"""Structured outputs: a grammar per constrained sequence, and its allowed next tokens as a bitmask that the
batched sampler applies to that sequence's row of logits.

    GrammarSpec      (request.py) what a request asks for: a JSON schema, any JSON object, a regex, a
                     choice, a grammar (Lark, or GBNF/EBNF as vLLM's xgrammar backend takes it); frozen and
                     hashable: the cache key
    Grammars         one per engine: compiles specs (validated, cached, LRU) and hands each sequence its own
                     matcher; fills the step's bitmasks in one parallel call and applies them in place

Built on llguidance, chosen over xgrammar by measurement (benchmarks/grammar_bench.py; RESULTS.md,
"Structured outputs"): both fill 64 masks in well under a millisecond against a 40-80 ms step, but
xgrammar 0.2's rule for strings with maxLength lets raw control bytes and broken UTF-8 through (sampled
outputs json.loads refuses, or longer than maxLength), where llguidance's byte-level lexer does not.
A spec is compiled once (a validated grammar and a fresh matcher to copy) on a worker thread before the
request enters the step loop (`AsyncLLMEngine.compile_grammar`); llguidance builds grammars with the GIL
released. JSON is compact (no free whitespace) unless `any_whitespace`: free whitespace lets a weak model
emit spaces until max_tokens, so the default is the form every JSON parser reads.

torch and llguidance only; no Ray.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict

import torch

from raygen.engine.request import GrammarSpec
from raygen.errors import GrammarError, InvalidPromptError


def _llg():
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError as exc:  # the core install brings it; a bare engine install may not have it
        raise InvalidPromptError("structured outputs need the llguidance package: pip install llguidance") from exc
    return llguidance


_REGEX_SPECIAL = set("\\.+*?()|[]{}^$#&-~")


def _regex_literal(text: str) -> str:
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


class Grammars:
    """Compiled grammars of one engine (one tokenizer, one vocabulary), and the per-step bitmask work.
    vocab_size is the model's (its logits' width): ids past the tokenizer's are never allowed."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: set[int], any_whitespace: bool = False,
                 max_cached: int = 256, threads: int = 2):
        llg = _llg()
        self.vocab_size = vocab_size
        self.any_whitespace = any_whitespace
        try:
            self._tok = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size,
                                              eos_token=sorted(eos_token_ids) or None)
        except Exception as exc:  # slow (non-Rust) tokenizers
            raise InvalidPromptError(f"structured outputs need a fast tokenizer; this model's cannot be used: "
                                     f"{_short(exc)}") from exc
        self._executor = llg.LLExecutor(threads)
        self._cache: OrderedDict[GrammarSpec, object] = OrderedDict()  # spec -> a fresh matcher to copy
        self._lock = threading.Lock()
        self.max_cached = max_cached

    # -- compiling (off the step loop) -------------------------------------------------------------------
    def compile(self, spec: GrammarSpec):
        with self._lock:
            hit = self._cache.get(spec)
            if hit is not None:
                self._cache.move_to_end(spec)
                return hit
        compiled = self._compile(spec)
        with self._lock:
            self._cache[spec] = compiled
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return compiled

    def is_compiled(self, spec: GrammarSpec) -> bool:
        with self._lock:
            return spec in self._cache

    def _grammar(self, spec: GrammarSpec) -> str:
        m = _llg().LLMatcher
        if spec.kind in ("json_object", "json_schema"):
            schema = json.loads(spec.text) if spec.kind == "json_schema" else {"type": "object"}
            if not isinstance(schema, dict):
                raise GrammarError("a JSON schema is an object", spec.param)
            return m.grammar_from_json_schema(schema, defaults={"whitespace_flexible": self.any_whitespace})
        if spec.kind == "regex":
            return m.grammar_from_regex(spec.text)
        if spec.kind == "choice":
            choices = json.loads(spec.text)
            if not choices or not all(isinstance(c, str) and c for c in choices):
                raise GrammarError("a choice needs a non-empty list of non-empty strings", spec.param)
            return m.grammar_from_regex("|".join(f"({_regex_literal(c)})" for c in choices))
        if spec.kind == "grammar":  # GBNF/EBNF (rules with ::=, as llama.cpp and xgrammar write them) or Lark
            from llguidance.gbnf_to_lark import gbnf_to_lark

            text = gbnf_to_lark(spec.text) if "::=" in spec.text else spec.text
            return m.grammar_from_lark(text)
        raise GrammarError(f"unknown kind {spec.kind!r}", spec.param)

    def _compile(self, spec: GrammarSpec):
        llg = _llg()
        try:
            grammar = self._grammar(spec)
            matcher = llg.LLMatcher(self._tok, grammar, log_level=0)
            if matcher.is_error():
                raise GrammarError(matcher.get_error(), spec.param)
        except Exception as exc:  # llguidance's own errors, JSON's, ours: all say what in the spec is wrong
            raise GrammarError(f"{spec.param}: does not compile: {_short(exc)}", spec.param) from exc
        return matcher

    # -- in the step loop --------------------------------------------------------------------------------
    def matcher(self, spec: GrammarSpec):
        """A new matcher for one sequence's walk through the grammar: a copy of the compiled spec's fresh one
        (compiles on a cache miss: callers should have compiled already)."""
        return self.compile(spec).deep_copy()

    def apply(self, logits: torch.Tensor, matchers: list) -> None:
        """Mask in place every token a row's grammar does not allow next: logits (B, V) float; matchers[i] is
        row i's matcher or None (unconstrained rows are left untouched: their mask rows stay all ones)."""
        rows = [(m, i) for i, m in enumerate(matchers) if m is not None]
        if not rows:
            return
        llg = _llg()
        mask = llg.torch.allocate_token_bitmask(len(matchers), self.vocab_size)
        llg.torch.fill_next_token_bitmask_par(self._executor, rows, mask)
        llg.torch.apply_token_bitmask_inplace(logits, mask.to(logits.device, non_blocking=True))

    @staticmethod
    def accept(matcher, token_id: int) -> bool:
        """Advance the matcher by the sampled token; True when the grammar is finished (nothing but EOS may
        follow), or when the token broke it (cannot happen after a masked sample; end rather than drift)."""
        return not matcher.consume_token(token_id) or matcher.is_stopped()


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
