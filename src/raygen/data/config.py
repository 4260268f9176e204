"""Data curation's config: sources, stages, filters, labelers and features (`data:`, `features:` in YAML).
Labelers are a union discriminated by `kind`, so a wrong option fails at load, before any data is read."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from raygen import pii
from raygen._config_base import ConfigModel
from raygen.errors import ConfigError


class SourceConfig(ConfigModel):
    path: str = Field(description="File, directory, glob or URI (s3://, gs://, https://) of .txt/.md/.html/"
                                  ".jsonl/.json/.csv/.parquet, optionally .gz/.zst.")
    text_key: str = Field("text", description="Field (jsonl/json) or column (csv/parquet) holding the text.")
    license: str | None = Field(None, description="License tag recorded with every document of this source.")
    weight: float = Field(1.0, gt=0, le=100, description="Mixing weight: documents repeat ~weight times in the "
                                                        "packed training data (fractions by document hash).")
    max_docs: int | None = Field(None, ge=1, description="Keep at most this many records of this source.")


class NearDedupConfig(ConfigModel):
    shingle: int = Field(5, ge=1, description="Words per shingle.")
    bands: int = Field(24, ge=1, description="LSH bands; with rows, sets the curve's midpoint ~(1/b)^(1/r) "
                                             "(24x5: 0.53, below the threshold: see raygen/data/minhash.py).")
    rows: int = Field(5, ge=1, description="Minhash values per band.")
    threshold: float = Field(0.8, gt=0, le=1, description="Candidate pairs below this estimated Jaccard are not "
                                                          "duplicates.")


DEFAULT_STAGES = ["normalize", "html", "boilerplate", "quality", "language", "pii", "exact_dedup", "near_dedup"]


# -- labelers (raygen/data/label.py; tests check these defaults against the labelers' own) ----------------
class LanguageLabelerSpec(ConfigModel):
    kind: Literal["language"]
    max_chars: int = Field(2000, ge=1, description="Characters of each document the language model reads.")
    min_score: float = Field(0.0, ge=0, le=1, description="Below it the language is 'und'.")

    def columns(self) -> tuple[str, ...]:
        return ("lang", "lang_score")


class QualityLabelerSpec(ConfigModel):
    kind: Literal["quality"]

    def columns(self) -> tuple[str, ...]:
        return ("quality",)


class DomainLabelerSpec(ConfigModel):
    kind: Literal["domain"]
    taxonomy: dict[str, list[str]] | None = Field(None, description="domain -> keywords; unset: the built-in one.")
    min_rate: float = Field(5.0, ge=0, description="Keyword hits per 1000 words a domain needs.")
    min_hits: int = Field(2, ge=0, description="Keyword hits a domain needs.")
    fallback: str = Field("other", description="The domain of documents that reach no threshold.")

    def columns(self) -> tuple[str, ...]:
        return ("domain",)


class ToxicityLabelerSpec(ConfigModel):
    kind: Literal["toxicity"]
    words: list[str] | None = Field(None, description="The word list; unset (and no words_file): the built-in one.")
    words_file: str | None = Field(None, description="A file of words, one per line.")
    threshold: float = Field(0.01, ge=0, le=1, description="Share of listed words at which a document is toxic.")

    def columns(self) -> tuple[str, ...]:
        return ("toxicity", "toxic")


class ModelLabelerSpec(ConfigModel):
    kind: Literal["model"]
    path: str = Field(description="A local Hugging Face sequence-classifier directory.")
    name: str = Field("label", description="Column of the top label (and <name>_score its probability).")
    batch_size: int = Field(32, ge=1, description="Documents per forward pass.")
    max_length: int = Field(512, ge=1, description="Tokens of each document the classifier reads.")
    device: str = Field("cpu", description="cpu | cuda | cuda:N.")
    num_threads: int | None = Field(None, ge=1, description="torch threads; unset: torch's default.")
    concurrency: int = Field(1, ge=1, description="Ray actors running this labeler (each loads the model once).")

    def columns(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}_score")


class HumanLabelerSpec(ConfigModel):
    kind: Literal["human"]
    path: str = Field(description="A Label Studio export (JSON) to join by document id.")
    name: str = Field("human_label", description="Column of the human label.")
    from_name: str | None = Field("label", description="The Label Studio control whose choice is the label.")

    def columns(self) -> tuple[str, ...]:
        return (self.name,)


LabelerSpec = Annotated[LanguageLabelerSpec | QualityLabelerSpec | DomainLabelerSpec | ToxicityLabelerSpec
                        | ModelLabelerSpec | HumanLabelerSpec, Field(discriminator="kind")]


class DataConfig(ConfigModel):
    builtin: bool = Field(True, description="Include the built-in corpus: CPython's documentation topics.")
    sources: list[SourceConfig] = Field(default_factory=list, description="Data sources with provenance settings.")
    paths: list[str] = Field(default_factory=list, description="Shorthand: sources with default settings.")
    jsonl_text_key: str = Field("text", description="text_key for the sources given as `paths`.")
    stages: list[str] = Field(default_factory=lambda: list(DEFAULT_STAGES),
                              description="Curation stages, in order (see raygen/data/stages.py).")
    normalization: Literal["NFC", "NFKC"] = Field("NFKC", description="Unicode normalization form.")
    min_chars: int = Field(200, ge=1, description="Documents shorter than this after cleaning are dropped.")
    quality: dict[str, Any] = Field(default_factory=dict, description="Overrides of raygen.data.quality."
                                                                      "QualityRules fields (None turns a rule off).")
    languages: list[str] = Field(default_factory=list, description="Keep only these languages (ISO 639-1); "
                                                                   "empty: all (still labeled).")
    min_language_score: float = Field(0.0, ge=0, le=1, description="Drop documents whose language id is less sure.")
    pii_kinds: list[pii.Kind] = Field(default_factory=lambda: list(pii.KINDS),
                                      description="PII kinds to redact (raygen.pii; the serving filter's too).")
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    labelers: list[LabelerSpec] = Field(
        default_factory=lambda: [QualityLabelerSpec(kind="quality"), DomainLabelerSpec(kind="domain"),
                                 ToxicityLabelerSpec(kind="toxicity")],
        description="Labelers run after dedup (raygen/data/label.py), each a mapping with its `kind`; language "
                    "comes from its stage.")
    label_filter: dict[str, list[Any]] = Field(default_factory=dict, description="Keep documents whose label "
                                                                                 "column has one of these values.")
    label_weights: dict[str, dict[str, float]] = Field(default_factory=dict, description="Multiply a document's "
                                                                                         "weight per label value.")
    incremental: bool = Field(True, description="Skip documents already in the output's manifest; add new ones.")
    reserve_operator_memory: bool = Field(False, description="Ray Data's per-operator object-store reservation. "
                                                             "Off: with a store smaller than the corpus it stalled "
                                                             "read → map here (tests/integration/test_data_scale.py).")
    output_dir: str = Field("data/demo", description="Where tokenizer, Parquet shards, card and stats go.")

    @model_validator(mode="after")
    def _valid_stages_and_rules(self) -> DataConfig:
        from raygen.data import quality, stages

        stages.check_stages(self.stages)
        try:
            quality.QualityRules(**{k: tuple(tuple(x) for x in v) if isinstance(v, list) else v
                                    for k, v in self.quality.items()})
        except TypeError as exc:
            raise ValueError(f"data.quality: {exc}; fields are those of raygen.data.quality.QualityRules") from exc
        self._check_label_columns()
        return self

    def label_columns(self) -> dict[str, str]:
        """Every label column the configured stages and labelers write -> what writes it."""
        cols = {c: "the language stage" for c in ("lang", "lang_score") if "language" in self.stages}
        for i, spec in enumerate(self.labelers):
            for c in spec.columns():
                if c in cols:
                    raise ConfigError(f"labelers[{i}] ({spec.kind}) writes column {c!r}, as {cols[c]} does; give a "
                                     "model or human labeler another name")
                cols[c] = f"labelers[{i}] ({spec.kind})"
        return cols

    def _check_label_columns(self) -> None:
        cols = self.label_columns()
        for field in ("label_filter", "label_weights"):
            for c in getattr(self, field):
                if c not in cols:
                    raise ConfigError(f"{field}: no stage or labeler writes a column {c!r}; label columns: "
                                     f"{', '.join(sorted(cols)) or 'none'}")

    def all_sources(self) -> list[SourceConfig]:
        return self.sources + [SourceConfig(path=p, text_key=self.jsonl_text_key) for p in self.paths]


class FeaturesConfig(ConfigModel):
    vocab_size: int = Field(4096, ge=300, le=262144, description="Byte-level BPE vocabulary size.")
    block_size: int = Field(128, ge=8, description="Tokens per packed training sequence.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of documents (by hash) held out.")
    pack_batch_docs: int = Field(64, ge=1, description="Documents packed together; leftovers are dropped.")
    tokenizer: str | None = Field(None, description="Reuse this Hugging Face tokenizer directory instead of "
                                                    "training one (its vocabulary size wins).")
    tokenizer_sample_mb: int = Field(256, ge=1, description="Train the tokenizer on at most this much text (MiB), "
                                                            "a hash-chosen sample of the documents.")
    chat_template: str | None = Field(None, description="Jinja chat template saved with a trained tokenizer.")
