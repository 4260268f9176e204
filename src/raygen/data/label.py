"""Document labels for curation: language, quality, domain, toxicity and any local Hugging Face classifier.

No Ray in here, and torch only inside ModelLabeler. A labeler reads a batch (column name -> list or
numpy array, with a "text" column) and returns new columns, one value per row:

    kind        class              columns                  how
    language    LanguageLabeler    lang, lang_score         py3langid on a prefix (raygen.data.langid)
    quality     QualityLabeler     quality                  raygen.data.quality.quality_score, in [0, 1]
    domain      DomainLabeler      domain                   keyword taxonomy, hits per 1000 words
    toxicity    ToxicityLabeler    toxicity, toxic          share of words on a word list; toxic at a threshold
    model       ModelLabeler       <name>, <name>_score     a local HF sequence classifier: top label, probability

`labeler.label(batch)` returns the new columns; `labeler(batch)` returns the batch with them added, so a
labeler is also a Ray Data batch function. ModelLabeler is meant to be passed as a class, so each actor
loads the model once:

    ds.map_batches(ModelLabeler, fn_constructor_kwargs={"path": ..., "name": "topic"},
                   batch_format="numpy", batch_size=64, concurrency=2)

The rule labelers are cheap and run together in one task through `apply_labelers`. `build_labelers`
turns config dicts ({"kind": "domain", "taxonomy": {...}}) into labelers.
"""

from __future__ import annotations

import inspect
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from raygen.data.langid import MAX_CHARS, UNDETERMINED, detect_language
from raygen.data.quality import quality_score
from raygen.errors import ConfigError, DataError

TEXT = "text"
Batch = Mapping[str, Sequence]  # column name -> one value per row (list or numpy array)

# Lower-cased words: letters and digits, apostrophes inside ("don't"); "_" and punctuation split words.
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")


def _texts(batch: Batch) -> list[str]:
    if TEXT not in batch:
        raise DataError(f"labelers need a {TEXT!r} column; the batch has {sorted(batch)}")
    return ["" if t is None else str(t) for t in batch[TEXT]]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Labeler:
    """Base class: `label(batch)` returns the new columns; calling the labeler adds them to the batch."""

    columns: tuple[str, ...] = ()  # the columns label() returns

    def label(self, batch: Batch) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __call__(self, batch: Batch) -> dict:
        return {**batch, **self.label(batch)}


# ------------------------------------------------------------------------------------------- language


class LanguageLabeler(Labeler):
    """lang: ISO 639-1 code ("und" for empty text or a confidence under min_score); lang_score: confidence."""

    columns = ("lang", "lang_score")

    def __init__(self, max_chars: int = MAX_CHARS, min_score: float = 0.0):
        self.max_chars = max_chars  # characters of each document the model reads
        self.min_score = min_score  # below it the language is "und"

    def label(self, batch: Batch) -> dict[str, np.ndarray]:
        found = [detect_language(t, self.max_chars) for t in _texts(batch)]
        langs = [lang if score >= self.min_score else UNDETERMINED for lang, score in found]
        return {"lang": np.array(langs, dtype=object),
                "lang_score": np.array([score for _, score in found], dtype=np.float32)}


# -------------------------------------------------------------------------------------------- quality


class QualityLabeler(Labeler):
    """quality: `raygen.data.quality.quality_score`, in [0, 1] (length, letters, prose, originality)."""

    columns = ("quality",)

    def label(self, batch: Batch) -> dict[str, np.ndarray]:
        return {"quality": np.array([quality_score(t) for t in _texts(batch)], dtype=np.float32)}


# ----------------------------------------------------------------------------------- keyword counting


class _Keywords:
    """Keyword hits per group in one pass per phrase length. Keywords match whole lower-cased words;
    a phrase ("supreme court") matches consecutive words; a keyword listed under two groups counts for both."""

    def __init__(self, groups: Mapping[str, Iterable[str]], what: str):
        self.single: dict[str, tuple[str, ...]] = {}  # word -> its groups
        self.phrases: dict[int, dict[tuple[str, ...], tuple[str, ...]]] = {}  # n -> n words -> groups
        for group, keywords in groups.items():
            if isinstance(keywords, str):
                raise ConfigError(f"{what} {group!r}: give a list of keywords, not the string {keywords!r}")
            for kw in keywords:
                key = tuple(_words(kw))
                if not key:
                    raise ConfigError(f"{what} {group!r}: keyword {kw!r} has no letters or digits")
                table = self.single if len(key) == 1 else self.phrases.setdefault(len(key), {})
                k = key[0] if len(key) == 1 else key
                if group not in table.get(k, ()):
                    table[k] = (*table.get(k, ()), group)

    def count(self, words: list[str]) -> Counter[str]:
        hits: Counter[str] = Counter()
        for groups in filter(None, map(self.single.get, words)):
            hits.update(groups)
        for n, table in self.phrases.items():
            for groups in filter(None, map(table.get, zip(*(words[i:] for i in range(n)), strict=False))):
                hits.update(groups)
        return hits


# --------------------------------------------------------------------------------------------- domain

# Words that mostly occur in one kind of text. Inflections are listed: matching is on whole words.
DEFAULT_TAXONOMY: dict[str, list[str]] = {
    "code": [
        "python", "javascript", "java", "rust", "function", "functions", "def", "class", "classes", "import",
        "return", "returns", "variable", "variables", "compiler", "runtime", "api", "method", "methods",
        "exception", "exceptions", "module", "modules", "syntax", "interpreter", "debug", "debugger",
        "source code", "library", "libraries", "integer", "boolean", "string", "strings", "array", "arrays",
        "argument", "arguments", "parameter", "parameters", "lambda", "iterator", "stdout", "bytes", "github",
        "programming", "software", "algorithm", "algorithms", "expression", "expressions", "tuple", "tuples",
        "dictionary", "operator", "operators", "literal", "literals", "attribute", "attributes", "loop", "loops",
    ],
    "science": [
        "research", "researchers", "hypothesis", "experiment", "experiments", "experimental", "physics",
        "chemistry", "biology", "molecule", "molecules", "protein", "proteins", "quantum", "particle",
        "particles", "laboratory", "scientists", "scientific", "species", "evolution", "genome", "dna",
        "cell", "cells", "electron", "electrons", "astronomy", "galaxy", "peer review", "theory",
    ],
    "law": [
        "court", "courts", "judge", "judges", "jury", "plaintiff", "plaintiffs", "defendant", "defendants",
        "statute", "statutes", "lawsuit", "attorney", "attorneys", "lawyer", "lawyers", "legal",
        "legislation", "contract", "contracts", "liability", "verdict", "constitution", "constitutional",
        "tribunal", "litigation", "prosecutor", "prosecution", "appeal", "supreme court",
    ],
    "medicine": [
        "patient", "patients", "clinical", "disease", "diseases", "diagnosis", "treatment", "therapy",
        "symptoms", "doctor", "doctors", "physician", "hospital", "medical", "medication", "drug", "drugs",
        "dose", "vaccine", "infection", "cancer", "surgery", "chronic", "nurse", "pharmaceutical", "diabetes",
    ],
    "finance": [
        "market", "markets", "stock", "stocks", "shares", "investor", "investors", "investment", "bank",
        "banks", "banking", "inflation", "revenue", "profit", "profits", "earnings", "dividend", "portfolio",
        "bond", "bonds", "equity", "fund", "funds", "loan", "loans", "debt", "trading", "currency", "fiscal",
        "quarterly", "interest rates",
    ],
    "sports": [
        "team", "teams", "player", "players", "coach", "season", "league", "match", "tournament",
        "championship", "goal", "goals", "scored", "football", "soccer", "basketball", "baseball", "tennis",
        "olympic", "olympics", "athlete", "athletes", "stadium", "playoffs", "referee", "striker",
    ],
    "news": [
        "reported", "officials", "spokesperson", "spokesman", "spokeswoman", "government", "minister",
        "president", "election", "elections", "announced", "police", "journalist", "journalists",
        "reporters", "correspondent", "protest", "protesters", "press conference", "according to",
    ],
}


class DomainLabeler(Labeler):
    """domain: the taxonomy domain with the most keyword hits, or `fallback` when the best has fewer than
    `min_hits` hits or fewer than `min_rate` hits per 1000 words. Ties go to the domain listed first."""

    columns = ("domain",)

    def __init__(self, taxonomy: Mapping[str, Iterable[str]] | None = None, min_rate: float = 5.0,
                 min_hits: int = 2, fallback: str = "other"):
        taxonomy = DEFAULT_TAXONOMY if taxonomy is None else taxonomy
        if not isinstance(taxonomy, Mapping) or not taxonomy:
            raise ConfigError(f"domain taxonomy must be a non-empty mapping of domain -> keywords; got {taxonomy!r}")
        self.order = {d: i for i, d in enumerate(taxonomy)}
        self.keywords = _Keywords(taxonomy, "domain")
        self.min_rate = min_rate  # hits per 1000 words
        self.min_hits = min_hits  # one stray keyword in a short note is no evidence
        self.fallback = fallback

    def domain(self, text: str) -> str:
        words = _words(text)
        hits = self.keywords.count(words)
        if not hits:
            return self.fallback
        best = min(hits, key=lambda d: (-hits[d], self.order[d]))
        if hits[best] < self.min_hits or hits[best] * 1000 / len(words) < self.min_rate:
            return self.fallback
        return best

    def label(self, batch: Batch) -> dict[str, np.ndarray]:
        return {"domain": np.array([self.domain(t) for t in _texts(batch)], dtype=object)}


# ------------------------------------------------------------------------------------------- toxicity

# A small placeholder list of profanity and insults; production lists (hundreds of entries, per language)
# come in through `words` or `words_file`.
DEFAULT_TOXIC_WORDS = (
    "fuck", "fucking", "fucked", "fucker", "motherfucker", "shit", "shitty", "bullshit", "bitch", "bitches",
    "bastard", "asshole", "assholes", "dickhead", "cunt", "whore", "slut", "idiot", "idiots", "moron",
    "morons", "dumbass", "retard", "retarded", "scumbag", "stfu", "kys", "kill yourself", "go to hell",
)


class ToxicityLabeler(Labeler):
    """toxicity: hits of the word list per word of the document, in [0, 1] (a phrase counts once);
    toxic: toxicity >= threshold (the default 0.01 flags one hit per 100 words)."""

    columns = ("toxicity", "toxic")

    def __init__(self, words: Iterable[str] | None = None, words_file: str | None = None,
                 threshold: float = 0.01):
        if words is None and words_file is None:
            words = DEFAULT_TOXIC_WORDS
        listed = list(words or [])
        if words_file is not None:
            try:
                with open(words_file, encoding="utf-8") as f:  # one word or phrase a line; '#' comments
                    listed += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
            except OSError as exc:
                raise ConfigError(f"toxicity words_file {words_file}: {exc.strerror}") from exc
        if not listed:
            raise ConfigError("toxicity labeler has an empty word list")
        self.keywords = _Keywords({"toxic": listed}, "toxicity list")
        self.threshold = threshold

    def toxicity(self, text: str) -> float:
        words = _words(text)
        return min(1.0, self.keywords.count(words)["toxic"] / len(words)) if words else 0.0

    def label(self, batch: Batch) -> dict[str, np.ndarray]:
        scores = np.array([self.toxicity(t) for t in _texts(batch)], dtype=np.float32)
        return {"toxicity": scores, "toxic": scores >= self.threshold}


# ---------------------------------------------------------------------------------------------- model


class ModelLabeler(Labeler):
    """<name>: top label of a local Hugging Face sequence classifier (config.id2label); <name>_score: its
    probability (softmax, or sigmoid for multi-label models). Loads once in the constructor; inference
    runs in minibatches of `batch_size` texts of similar length, truncated to `max_length` tokens."""

    def __init__(self, path: str, name: str = "label", batch_size: int = 32, max_length: int = 512,
                 device: str = "cpu", num_threads: int | None = None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not os.path.isdir(path):  # a missing directory would otherwise be looked up on the Hub
            raise ConfigError(f"model labeler {name!r}: {path} is not a local model directory")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"model labeler {name!r}: cannot load a sequence classifier from {path}: {exc}") from exc
        self.model.to(device).eval()
        cfg = self.model.config
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # GPT-style classifiers ship without one
            if cfg.pad_token_id is None:
                cfg.pad_token_id = self.tokenizer.pad_token_id
        self.id2label = [cfg.id2label.get(i, f"LABEL_{i}") for i in range(cfg.num_labels)]
        self.multi_label = cfg.problem_type == "multi_label_classification"
        self.max_length = min(max_length, self.tokenizer.model_max_length,
                              getattr(cfg, "max_position_embeddings", None) or max_length)
        self.name, self.batch_size, self.device = name, batch_size, device
        self.columns = (name, f"{name}_score")

    def classify(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """(top label per text, its probability as float32), in the order of texts."""
        import torch

        labels: list[str] = [""] * len(texts)
        scores = np.zeros(len(texts), dtype=np.float32)
        # Tokens are rarely over 10 characters: a longer prefix would be tokenized only to be truncated.
        texts = [t[: self.max_length * 10] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                logits = self.model(**enc).logits.float()  # (b, num_labels)
            probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)
            top_p, top_i = probs.max(-1)
            for i, p, k in zip(idx, top_p.tolist(), top_i.tolist(), strict=True):
                labels[i], scores[i] = self.id2label[k], p
        return labels, scores

    def label(self, batch: Batch) -> dict[str, np.ndarray]:
        labels, scores = self.classify(_texts(batch))
        return {self.name: np.array(labels, dtype=object), f"{self.name}_score": scores}


class HumanLabeler(Labeler):
    """Annotations made in Label Studio, imported by doc_id (see label_studio.py): column `name`, '' for
    documents nobody annotated. How human labels become columns like any other."""

    def __init__(self, path: str, name: str = "human_label", from_name: str | None = "label"):
        from raygen.data.label_studio import import_label_studio

        self.name, self.columns = name, (name,)
        self.labels = {str(k): v if isinstance(v, str) else "|".join(map(str, v))
                       for k, v in import_label_studio(path, from_name).items()}

    def label(self, batch: Batch) -> dict[str, np.ndarray]:
        if "doc_id" not in batch:
            raise DataError(f"human labels are keyed by doc_id; the batch has {sorted(batch)}")
        return {self.name: np.array([self.labels.get(str(d), "") for d in batch["doc_id"]], dtype=object)}


# ------------------------------------------------------------------------------------- running, config


def apply_labelers(batch: Batch, labelers: Sequence[Labeler]) -> dict:
    """The batch with every labeler's columns added (each reads the original columns)."""
    out = dict(batch)
    for labeler in labelers:
        out.update(labeler.label(batch))
    return out


KINDS: dict[str, type[Labeler]] = {
    "language": LanguageLabeler,
    "quality": QualityLabeler,
    "domain": DomainLabeler,
    "toxicity": ToxicityLabeler,
    "model": ModelLabeler,
    "human": HumanLabeler,
}


def build_labelers(specs: Sequence[Mapping]) -> list[Labeler]:
    """Labelers from config dicts: {"kind": one of KINDS, **constructor arguments}. A "model" spec loads
    its model here; to run it in Ray actors instead, pass the spec without "kind" as fn_constructor_kwargs."""
    labelers: list[Labeler] = []
    seen: dict[str, int] = {}  # column -> spec index that writes it
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or "kind" not in spec:
            raise ConfigError(f"labeler #{i}: expected a mapping with a 'kind' ({', '.join(KINDS)}); got {spec!r}")
        kwargs = dict(spec)
        kind = kwargs.pop("kind")
        cls = KINDS.get(kind)
        if cls is None:
            raise ConfigError(f"labeler #{i}: unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
        params = inspect.signature(cls).parameters
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(f"labeler #{i} ({kind}): unknown option(s) {unknown}; it takes {list(params)}")
        missing = [p for p, v in params.items() if v.default is inspect.Parameter.empty and p not in kwargs]
        if missing:
            raise ConfigError(f"labeler #{i} ({kind}): missing option(s) {missing}")
        labeler = cls(**kwargs)
        for col in labeler.columns:
            if col in seen:
                raise ConfigError(f"labeler #{i} ({kind}) writes column {col!r}, as labeler #{seen[col]} does; "
                                  "give a model labeler another name")
            seen[col] = i
        labelers.append(labeler)
    return labelers
