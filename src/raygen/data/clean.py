"""Pure text cleaning: normalization, whitespace, length filter, content hash. No Ray in here."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# Control characters other than tab and newline (C0, DEL, C1) carry no text and break tokenizers.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TRAILING_WS = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")

DROP_EMPTY = "empty"
DROP_TOO_SHORT = "too_short"
DROP_DUPLICATE = "duplicate"


def clean_text(text: str, form: str = "NFKC") -> str:
    """Normalize Unicode, unify newlines, drop control characters and trailing spaces, squeeze blank
    runs to one empty line. Indentation is kept: code blocks in docs depend on it."""
    text = unicodedata.normalize(form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING_WS.sub("\n", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def drop_reason(text: str, min_chars: int) -> str:
    """'' when the cleaned document is kept, else the one reason it is dropped."""
    if not text:
        return DROP_EMPTY
    if len(text) < min_chars:
        return DROP_TOO_SHORT
    return ""


def content_hash(text: str) -> str:
    """Stable 128-bit hex digest of the cleaned text: the exact-dedup key and the split key."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def in_val_split(doc_hash: str, val_fraction: float) -> bool:
    """Deterministic train/val assignment by document hash: the same document always lands on the same side."""
    return int(doc_hash[:8], 16) / 0xFFFFFFFF < val_fraction
