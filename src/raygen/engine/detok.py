"""Incremental detokenization with stop strings. Pure: any tokenizer with `decode`, no Ray, no torch.

Byte-level BPE can split one UTF-8 character across tokens; decoding a partial character yields U+FFFD,
so text is released only once it no longer ends in U+FFFD. Text that could still be the start of a stop
string is held back until it is known not to be one.
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = list(stop or [])
        self.token_ids: list[int] = []
        self.text = ""  # all text decoded so far (complete characters only)
        self.emitted = 0  # chars of self.text already released
        self.stopped = False

    def _holdback(self) -> int:
        """Chars at the end of text that are a proper prefix of some stop string."""
        tail = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    tail = max(tail, k)
                    break
        return tail

    def add(self, token_ids: list[int]) -> str:
        """Feed new tokens; return the text that is now safe to release ('' if none)."""
        if self.stopped:
            return ""
        self.token_ids.extend(token_ids)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # wait for the rest of a multi-byte character
        self.text = text
        # A stop string may have appeared anywhere after what was already released.
        search_from = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, search_from) for s in self.stop) if i != -1]
        if hits:
            self.stopped = True
            end = min(hits)
            out = self.text[self.emitted:end]
            self.emitted = end
            return out
        end = len(self.text) - self._holdback()
        out = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return out

    def flush(self) -> str:
        """At the end of generation: release held-back text (no stop string completed)."""
        if self.stopped:
            return ""
        # Generation may have ended inside a multi-byte character: release it as U+FFFD, not silently.
        self.text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        out = self.text[self.emitted:]
        self.emitted = len(self.text)
        return out
