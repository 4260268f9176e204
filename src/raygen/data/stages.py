"""Document stages: the named, ordered, per-document part of curation. Pure (no Ray): the pipeline maps
`process_batch` over Ray Data batches and counts what each stage did from the columns it returns.

Stage names (`data.stages`, in the order given):
  normalize    Unicode form, newlines, control characters, blank runs; drops empty / too short
  html         markup to text, for records whose format is html
  boilerplate  line-level boilerplate removal (cookie/policy notices, nav lists, lorem ipsum)
  quality      Gopher-style document filters; the reason names the rule (quality.RULE_ORDER)
  language     language id (columns lang, lang_score); drops languages not allowed / low confidence
  pii          redacts emails, phones, IPs, cards (Luhn), secrets; counts per kind
exact_dedup and near_dedup are dataset-level stages (pipeline.py, dedup.py) and may appear in the list.
A document dropped by a stage keeps that stage's reason and skips the rest: every document ends kept or
under exactly one reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raygen import pii
from raygen.data import clean, quality
from raygen.errors import ConfigError

DOC_STAGES = ("normalize", "html", "boilerplate", "quality", "language", "pii")
DATASET_STAGES = ("exact_dedup", "near_dedup")
DROP_EMPTY_AFTER_BOILERPLATE = "boilerplate_empty"
DROP_LANGUAGE = "language_not_allowed"
DROP_LANGUAGE_CONFIDENCE = "language_low_confidence"
REASON_STAGE = {clean.DROP_EMPTY: "normalize", clean.DROP_TOO_SHORT: "normalize",
                DROP_EMPTY_AFTER_BOILERPLATE: "boilerplate", DROP_LANGUAGE: "language",
                DROP_LANGUAGE_CONFIDENCE: "language", **{r: "quality" for r in quality.RULE_ORDER}}


@dataclass
class StageSettings:
    """What the stages need from the config (DataConfig), as plain values that pickle to Ray workers."""

    normalization: str = "NFKC"
    min_chars: int = 200
    quality_rules: quality.QualityRules = field(default_factory=lambda: quality.DEFAULT_RULES)
    languages: tuple[str, ...] = ()  # keep only these ISO 639-1 codes; empty: every language
    min_language_score: float = 0.0
    pii_kinds: tuple[str, ...] = pii.KINDS


def check_stages(stages: list[str]) -> None:
    known = DOC_STAGES + DATASET_STAGES
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise ConfigError(f"unknown data stages {unknown}; known: {list(known)}")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"data.stages lists a stage twice: {stages}")
    doc = [s for s in stages if s in DOC_STAGES]
    if stages[:len(doc)] != doc:
        raise ConfigError(f"document stages {list(DOC_STAGES)} must come before exact_dedup/near_dedup: {stages}")


def process_doc(text: str, fmt: str, stages: list[str], s: StageSettings) -> dict:
    """One document through the document stages: {text, drop_reason, lang, lang_score, boilerplate_lines,
    pii_<kind>...}."""
    out = {"lang": "", "lang_score": 0.0, "boilerplate_lines": 0, **{f"pii_{k}": 0 for k in s.pii_kinds}}
    reason = ""
    for stage in stages:
        if stage == "normalize":
            text = clean.clean_text(text, s.normalization)
            reason = clean.drop_reason(text, s.min_chars)
        elif stage == "html" and fmt == "html":
            text = quality.html_to_text(text)
            reason = clean.DROP_EMPTY if not text.strip() else ""
        elif stage == "boilerplate":
            text, removed = quality.remove_boilerplate_lines(text)
            out["boilerplate_lines"] = removed
            reason = DROP_EMPTY_AFTER_BOILERPLATE if not text.strip() else ""
        elif stage == "quality":
            reason = quality.quality_reason(text, s.quality_rules)
        elif stage == "language":
            from raygen.data.langid import detect_language

            lang, score = detect_language(text)
            out["lang"], out["lang_score"] = lang, float(score)
            if s.languages and lang not in s.languages:
                reason = DROP_LANGUAGE
            elif score < s.min_language_score:
                reason = DROP_LANGUAGE_CONFIDENCE
        elif stage == "pii":
            text, counts = pii.redact_pii(text, s.pii_kinds)
            out.update({f"pii_{k}": v for k, v in counts.items()})
        if reason:
            break
    out["text"], out["drop_reason"] = text, reason
    return out


def process_batch(batch: dict, stages: list[str], settings: StageSettings) -> dict:
    """Ray Data batch (numpy format) in, the same rows with stage columns out. Rows already dropped at
    collection keep their reason and pass through untouched."""
    doc_stages = [s for s in stages if s in DOC_STAGES]
    rows = []
    for text, fmt, prior in zip(batch["text"], batch["format"], batch["drop_reason"], strict=True):
        if prior:
            rows.append({"text": text, "drop_reason": prior})
        else:
            rows.append(process_doc(text, fmt, doc_stages, settings))
    out = dict(batch)
    keys = ["lang", "lang_score", "boilerplate_lines", *(f"pii_{k}" for k in settings.pii_kinds)]
    defaults = {"lang": "", "lang_score": 0.0}
    out["text"] = np.array([r["text"] for r in rows], dtype=object)
    out["drop_reason"] = np.array([r["drop_reason"] for r in rows], dtype=object)
    for k in keys:
        vals = [r.get(k, defaults.get(k, 0)) for r in rows]
        out[k] = np.array(vals, dtype=object if k == "lang" else None)
    out["hash"] = np.array([clean.content_hash(t) for t in out["text"]], dtype=object)
    return out
