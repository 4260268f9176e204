"""Safety filters: blocklists, regexes, PII redaction and an optional classifier; streaming-aware.

Pure Python (the classifier, when configured, is any local Hugging Face sequence classifier). PII is
`raygen.pii`, the module data curation uses: the same kinds and placeholders in training data and in
answers.

Streaming: text is released only once no rule could still match across the next chunk. The guard holds
back the last `hold` characters (the longest blocked phrase minus one, and `window` when there are
regexes), so a blocked phrase split over two chunks is seen whole before any of it leaves. For PII it
holds back only the text a match could still grow from (`pii.release_point`: usually the last word), so
plain prose streams with about one token of delay. Regex matches longer than `window` that straddle a
release point can be missed; keep patterns shorter than it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from raygen import pii
from raygen.errors import ConfigError


@dataclass
class Violation:
    rule: str  # "blocklist:<phrase>", "regex:<pattern>" or "classifier:<label>"
    where: str  # "input" | "output"


@dataclass
class SafetyFilter:
    blocklist: list[str] = field(default_factory=list)  # phrases, matched case-insensitively
    patterns: list[str] = field(default_factory=list)  # regexes, matched case-insensitively
    redact_pii: bool = True
    classifier: Callable[[str], str | None] | None = None  # text -> the blocked label it found, or None
    window: int = 48  # characters held back for regexes while streaming
    pii_kinds: tuple[str, ...] = pii.KINDS  # what redact_pii redacts

    def __post_init__(self):
        self._phrases = [p.lower() for p in self.blocklist if p]
        try:
            self._regexes = [re.compile(p, re.IGNORECASE) for p in self.patterns]
        except re.error as exc:
            raise ConfigError(f"safety pattern {exc.pattern!r} is not a valid regex: {exc}") from exc
        longest = max((len(p) for p in self._phrases), default=1)
        self.hold = max(longest - 1 if self._phrases else 0, self.window if self._regexes else 0)

    @property
    def active(self) -> bool:
        return bool(self._phrases or self._regexes or self.redact_pii or self.classifier)

    def violation(self, text: str, where: str) -> Violation | None:
        low = text.lower()
        for p in self._phrases:
            if p in low:
                return Violation(f"blocklist:{p}", where)
        for r in self._regexes:
            if r.search(text):
                return Violation(f"regex:{r.pattern}", where)
        if self.classifier is not None:
            label = self.classifier(text)
            if label:
                return Violation(f"classifier:{label}", where)
        return None

    def redact(self, text: str) -> str:
        return pii.redact_pii(text, self.pii_kinds)[0] if self.redact_pii else text

    def guard(self) -> OutputGuard:
        return OutputGuard(self)


class OutputGuard:
    """One response's output stream: feed chunks, get back what is safe to send."""

    def __init__(self, f: SafetyFilter):
        self.f = f
        self.pending = ""  # received, not yet released
        self.released = ""  # everything released so far (classifier input)
        self.violation: Violation | None = None

    def feed(self, text: str) -> str:
        """Returns the text that may be sent now; '' once a rule has fired (see .violation)."""
        if self.violation:
            return ""
        self.pending += text
        return self._release(final=False)

    def flush(self) -> str:
        """End of the stream: check and release what was held."""
        if self.violation:
            return ""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        f = self.f
        # Phrases and regexes are checked over the held text plus enough already-released context to
        # cover a match that started before the release point.
        context = self.released[-f.hold:] if f.hold else ""
        v = f.violation(context + self.pending, "output") if (f._phrases or f._regexes) else None
        if v:
            self.violation = v
            self.pending = ""
            return ""
        cut = len(self.pending) if final else max(0, len(self.pending) - f.hold)
        if f.redact_pii and not final:
            cut = pii.release_point(self.pending, cut, f.pii_kinds)
        out, self.pending = f.redact(self.pending[:cut]), self.pending[cut:]
        if f.classifier is not None and (out or final):  # before anything leaves (use a small model)
            v = f.classifier(self.released + out)
            if v:
                self.violation = Violation(f"classifier:{v}", "output")
                return ""
        self.released += out
        return out


def hf_classifier(model_dir: str, blocked_labels: list[str], threshold: float = 0.5) -> Callable[[str], str | None]:
    """A text classifier from a local Hugging Face directory: returns the first blocked label whose
    probability reaches `threshold`, else None."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    labels = model.config.id2label
    unknown = set(blocked_labels) - set(labels.values())
    if unknown:
        raise ConfigError(f"classifier {model_dir} has no labels {sorted(unknown)}; it has {sorted(labels.values())}")

    def classify(text: str) -> str | None:
        with torch.inference_mode():
            enc = tok(text[-2000:], return_tensors="pt", truncation=True)
            probs = model(**enc).logits.softmax(-1)[0]
        for i, p in enumerate(probs.tolist()):
            if labels[i] in blocked_labels and p >= threshold:
                return labels[i]
        return None

    return classify
