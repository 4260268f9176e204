"""Language identification with py3langid: a naive Bayes model over byte n-grams (langid.py, Lui & Baldwin
2012) whose 4.6 MB model ships inside the wheel, so nothing is downloaded at run time.

Why this one (the fastest of langid.py, langdetect and lingua on CPU, deterministic, a small wheel):
benchmarks/RESULTS.md, "Design measurements".

Codes are ISO 639-1 where the language has one ("en", "fr"); the model's other labels are ISO 639-3
("yue", "grc"), and "zxx" means no linguistic content. Empty text gets "und" with confidence 0.
"""

from __future__ import annotations

from functools import lru_cache

# Language shows in the first few paragraphs; reading the rest of a long document only costs time.
MAX_CHARS = 2000
UNDETERMINED = "und"


@lru_cache(maxsize=1)
def _identifier():
    # Loaded once per process (Ray workers included): ~0.5 s to decompress the model.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    # norm_probs: softmax over languages, so the confidence is a probability in [0, 1].
    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def _prefix(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", max_chars // 2, max_chars)  # end on a word boundary, not inside a word
    return text[: cut if cut > 0 else max_chars]


def detect_language(text: str, max_chars: int = MAX_CHARS) -> tuple[str, float]:
    """(language code, confidence in [0, 1]) of the first `max_chars` characters of text."""
    if not text or text.isspace():
        return UNDETERMINED, 0.0
    lang, conf = _identifier().classify(_prefix(text, max_chars))
    return lang, min(max(float(conf), 0.0), 1.0)


def languages() -> list[str]:
    """Every code detect_language can return (besides "und")."""
    return list(_identifier().labels)
