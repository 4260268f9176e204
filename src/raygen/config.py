"""One config tree for every component. YAML in, validated, with errors that name the key and the file.

The same file feeds the CLI (`raygen demo --config F`), the Ray jobs (`pipelines/*.py --config F`) and
`serve run` (cluster/config.yaml passes `config:` to `raygen.serve.app:build_app`). Defaults are the demo:
they run on a 2-core laptop; scale out by changing numbers, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raygen import paths, pii
from raygen.engine.config import EngineConfig
from raygen.errors import ConfigError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Model):
    path: str = Field(description="File, directory, glob or URI (s3://, gs://, https://) of .txt/.md/.html/"
                                  ".jsonl/.json/.csv/.parquet, optionally .gz/.zst.")
    text_key: str = Field("text", description="Field (jsonl/json) or column (csv/parquet) holding the text.")
    license: str | None = Field(None, description="License tag recorded with every document of this source.")
    weight: float = Field(1.0, gt=0, le=100, description="Mixing weight: documents repeat ~weight times in the "
                                                        "packed training data (fractions by document hash).")
    max_docs: int | None = Field(None, ge=1, description="Keep at most this many records of this source.")


class NearDedupConfig(_Model):
    shingle: int = Field(5, ge=1, description="Words per shingle.")
    bands: int = Field(24, ge=1, description="LSH bands; with rows, sets the curve's midpoint ~(1/b)^(1/r) "
                                             "(24x5: 0.53, below the threshold: see raygen/data/minhash.py).")
    rows: int = Field(5, ge=1, description="Minhash values per band.")
    threshold: float = Field(0.8, gt=0, le=1, description="Candidate pairs below this estimated Jaccard are not "
                                                          "duplicates.")


DEFAULT_STAGES = ["normalize", "html", "boilerplate", "quality", "language", "pii", "exact_dedup", "near_dedup"]


class DataConfig(_Model):
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
    labelers: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"kind": "quality"}, {"kind": "domain"}, {"kind": "toxicity"}],
        description="Labelers run after dedup (raygen/data/label.py); language comes from its stage.")
    label_filter: dict[str, list[Any]] = Field(default_factory=dict, description="Keep documents whose label "
                                                                                 "column has one of these values.")
    label_weights: dict[str, dict[str, float]] = Field(default_factory=dict, description="Multiply a document's "
                                                                                         "weight per label value.")
    incremental: bool = Field(True, description="Skip documents already in the output's manifest; add new ones.")
    reserve_operator_memory: bool = Field(False, description="Ray Data's per-operator object-store reservation. "
                                                             "Off: with a store smaller than the corpus it stalled "
                                                             "read → map here (tests/test_data_scale.py).")
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
        return self

    def all_sources(self) -> list[SourceConfig]:
        return self.sources + [SourceConfig(path=p, text_key=self.jsonl_text_key) for p in self.paths]


class FeaturesConfig(_Model):
    vocab_size: int = Field(4096, ge=300, le=262144, description="Byte-level BPE vocabulary size.")
    block_size: int = Field(128, ge=8, description="Tokens per packed training sequence.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of documents (by hash) held out.")
    pack_batch_docs: int = Field(64, ge=1, description="Documents packed together; leftovers are dropped.")
    tokenizer: str | None = Field(None, description="Reuse this Hugging Face tokenizer directory instead of "
                                                    "training one (its vocabulary size wins).")
    tokenizer_sample_mb: int = Field(256, ge=1, description="Train the tokenizer on at most this much text (MiB), "
                                                            "a hash-chosen sample of the documents.")
    chat_template: str | None = Field(None, description="Jinja chat template saved with a trained tokenizer.")


class ModelConfig(_Model):
    """The architecture (raygen/train/model.py): a preset, explicit sizes, a config file, or a pretrained
    directory to fine-tune. Sizes set here override the preset's."""

    preset: str | None = Field(None, description="Named size: gpt2-tiny/-mini/-bench/-small/-medium/-large, "
                                                 "llama-tiny/-mini/-160m/-400m/-1b (see raygen/train/model.py).")
    family: Literal["gpt2", "llama"] = Field("gpt2", description="transformers architecture family.")
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_embd: int = Field(256, ge=8, description="Hidden size.")
    n_head: int = Field(4, ge=1, description="Attention heads; must divide n_embd.")
    n_kv_head: int | None = Field(None, ge=1, description="Llama: key/value heads (grouped-query); unset: n_head.")
    intermediate_size: int | None = Field(None, ge=1, description="MLP width; unset: 4x (GPT-2), ~8/3x (Llama).")
    rope_theta: float = Field(10000.0, gt=0, description="Llama: rotary base.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on attention, residual and embeddings.")
    config_file: str | None = Field(None, description="A Hugging Face config.json (or its directory) to train "
                                                      "from scratch; replaces the sizes above.")
    pretrained: str | None = Field(None, description="A local Hugging Face model directory to fine-tune.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.pretrained and self.config_file:
            raise ValueError("set model.pretrained (fine-tune) or model.config_file (from scratch), not both")
        if self.preset is None and self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        return self


class TrainConfig(_Model):
    run_name: str = Field("demo", description="Ray Train run name; checkpoints go to storage_path/run_name. "
                                              "Re-running a name resumes it from its latest checkpoint.")
    resume: bool = Field(True, description="Resume a run of the same name; false: a fresh, timestamped run.")
    storage_path: str = Field("runs", description="Ray Train storage (a local path or a URI).")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each; one GPU each on GPUs).")
    cpus_per_worker: float = Field(
        0.5, gt=0, description="CPUs each worker reserves; leave some free for Ray Data's read tasks.")
    torch_threads: int = Field(0, ge=0, description="torch threads per worker; 0: the node's cores ÷ workers.")
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them.")
    zero_stage: int = Field(2, description="DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3.")
    offload_optimizer: bool = Field(False, description="ZeRO-1/2/3: optimizer state and step on the CPU.")
    precision: Literal["auto", "fp32", "bf16", "bf16-autocast"] = Field(
        "auto", description="bf16: DeepSpeed's bf16 (bf16 weights, activations, gradients and communication; "
                            "fp32 master weights and optimizer state). bf16-autocast: torch autocast over fp32 "
                            "weights (fp32 gradients and communication). fp32. auto: bf16 on GPUs that support "
                            "it; on CPU, bf16 only when a measured bf16 matmul beats fp32 by 1.3x.")
    micro_batch_size: int = Field(16, ge=1, description="Sequences per worker per forward/backward.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step (ignored when "
                                                       "global_batch_size is set).")
    global_batch_size: int | None = Field(None, ge=1, description="Sequences per optimizer step; must be a "
                                                                  "multiple of num_workers × micro_batch_size.")
    max_steps: int = Field(150, ge=1, description="Optimizer steps.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine schedule floor as a share of lr.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only; not biases, norms).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clipping; 0 disables it.")
    seed: int = Field(0, description="Seeds model init, dropout and data order.")
    log_every: int = Field(10, ge=1, description="Print a progress line every N steps (rank 0).")
    eval_every: int = Field(50, ge=1, description="Val loss and perplexity every N steps (and at the end).")
    checkpoint_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (a multiple of "
                                                                 "eval_every; unset: at every eval).")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the best K checkpoints by val loss (the latest "
                                                       "is kept too, for resuming).")
    max_failures: int = Field(2, ge=0, description="Worker failures to recover from (from the last checkpoint).")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage {self.zero_stage} does not exist; DeepSpeed ZeRO has stages 0, 1, 2 "
                             "and 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.global_batch_size is not None and self.global_batch_size % (self.num_workers * self.micro_batch_size):
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of num_workers × "
                             f"micro_batch_size = {self.num_workers} × {self.micro_batch_size}; pick a multiple "
                             f"of {self.num_workers * self.micro_batch_size}")
        if self.checkpoint_every is not None and self.checkpoint_every % self.eval_every:
            raise ValueError(f"checkpoint_every {self.checkpoint_every} must be a multiple of eval_every "
                             f"{self.eval_every}: checkpoints are ranked by val loss")
        return self

    @property
    def accum_steps(self) -> int:
        """Micro-batches per optimizer step on each worker."""
        if self.global_batch_size is None:
            return self.grad_accum_steps
        return self.global_batch_size // (self.num_workers * self.micro_batch_size)


class AshaSettings(_Model):
    enabled: bool = Field(True, description="Stop trials early by val loss (asynchronous successive halving).")
    grace_evals: int = Field(1, ge=1, description="Evals (of train.eval_every steps) every trial gets first.")
    reduction_factor: int = Field(2, ge=2, description="Keep the best 1/factor of trials at each rung.")


class TuneSettings(_Model):
    """Ray Tune over train/model fields (raygen/train/tune.py). Each trial is a full training run."""

    name: str = Field("tune", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Experiment name (a "
                                                                                    "timestamp is appended).")
    space: dict[str, Any] = Field(default_factory=dict, description="field -> value or {uniform|loguniform|"
                                  "randint: [lo, hi]} | {choice|grid: [...]}, fields as train.lr, model.preset.")
    search: Literal["random", "grid", "optuna", "auto"] = Field(
        "random", description="random (grid entries still expand), grid (every combination), optuna (needs "
                              "`pip install optuna`), auto (optuna when installed, else random).")
    num_samples: int = Field(4, ge=1, description="Samples (per grid point, for random search).")
    max_concurrent_trials: int = Field(0, ge=0, description="0: as many as the cluster fits (each trial takes "
                                                           "train.num_workers × cpus_per_worker CPUs, one CPU "
                                                           "kept for Ray Data; or num_workers GPUs).")
    asha: AshaSettings = Field(default_factory=AshaSettings)
    export_best: bool = Field(True, description="Register the best finished trial's model.")
    seed: int = Field(0, description="Seeds the search's sampling.")


class RegistryConfig(_Model):
    root: str = Field("models", description="Registry directory: <root>/<name>/<version>/.")
    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Model name.")


class ApiKeyEntry(_Model):
    name: str = Field(description="Who holds the key; the name (never the key) appears in logs.")
    key: str | None = Field(None, description="The key in clear (hashed on load); prefer key_sha256 in files.")
    key_sha256: str | None = Field(None, description="sha256 hex digest of the key.")
    models: list[str] | None = Field(None, description="Models this key may use; unset: all.")
    admin: bool = Field(False, description="May call admin endpoints (cache invalidation).")
    max_concurrent: int | None = Field(None, ge=1, description="Requests this key may have generating at once "
                                       "(overrides serve.rate_limit.max_concurrent_per_key).")


class AuthSettings(_Model):
    keys: list[ApiKeyEntry] = Field(default_factory=list, description="API keys; none (and no env/file): auth off.")
    keys_file: str | None = Field(None, description="File of name:key[:model1|model2][:admin] lines.")


class RateLimitSettings(_Model):
    enabled: bool = Field(True, description="Per-key limits (shared by all ingress replicas).")
    requests_per_minute: int = Field(600, ge=1, description="Requests per key per minute.")
    tokens_per_minute: int = Field(200_000, ge=1, description="Prompt + completion tokens per key per minute.")
    max_concurrent_per_key: int | None = Field(None, ge=1, description="Requests (streaming or not) one key may "
                                               "have generating at once; past it 429. Unset: no cap.")
    on_gateway_failure: Literal["open", "closed"] = Field(
        "open", description="While the Gateway (limiter and cache) is down or being replaced: open admits requests "
                            "without limits; closed refuses them with 503 + Retry-After. The cache always fails open.")
    gateway_timeout_s: float = Field(2.0, gt=0, description="A Gateway call slower than this counts as a failure.")


class CacheSettings(_Model):
    enabled: bool = Field(True, description="Exact-match cache of deterministic responses (temperature 0 or seed).")
    ttl_s: float = Field(600, gt=0, description="Seconds an entry lives.")
    max_entries: int = Field(4096, ge=1, description="Entries kept (LRU beyond).")
    max_mib: int = Field(64, ge=1, description="Bytes kept, in MiB (LRU beyond).")
    near_ttl_s: float = Field(1.0, ge=0, description="Each ingress replica also keeps recent hits this long "
                                                    "(skips a hop; may outlive an invalidation by as much); 0: off.")


class SafetySettings(_Model):
    blocklist: list[str] = Field(default_factory=list, description="Phrases refused in prompts and cut from outputs.")
    patterns: list[str] = Field(default_factory=list, description="Regexes treated like blocklist phrases.")
    redact_pii: bool = Field(True, description="Replace PII in outputs with its kind's placeholder (<EMAIL>, ...).")
    pii_kinds: list[pii.Kind] = Field(default_factory=lambda: list(pii.KINDS),
                                      description="PII kinds redact_pii replaces (raygen.pii, as in data curation).")
    classifier: str | None = Field(None, description="Local HF sequence-classifier directory (optional).")
    classifier_labels: list[str] = Field(default_factory=list, description="Classifier labels that block.")
    classifier_threshold: float = Field(0.5, gt=0, le=1, description="Probability at which a label blocks.")


class AutoscalingSettings(_Model):
    min_replicas: int = Field(1, ge=0, description="Model replicas at least.")
    max_replicas: int = Field(1, ge=1, description="Model replicas at most.")
    target_ongoing_requests: float = Field(16, gt=0, description="Ongoing requests per replica to aim for.")


class ServeConfig(_Model):
    host: str = Field("127.0.0.1", description="HTTP bind address of Serve's proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of Serve's proxy.")
    version: str = Field("latest", description="Registry version (v3) or alias (latest, production).")
    max_tokens_default: int = Field(64, ge=1, description="max_tokens when a request gives none.")
    max_tokens_limit: int = Field(512, ge=1, description="Largest max_tokens a request may ask for.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    max_prompt_tokens: int | None = Field(None, ge=1, description="Longer prompts get 413; unset: the context "
                                                                 "window is the only limit (400 beyond it).")
    ingress_replicas: int = Field(1, ge=1, description="HTTP ingress replicas (they share one Gateway).")
    split_processing: bool = Field(False, description="Pre/Postprocessor as deployments of their own (else inside "
                                                      "each ingress: fewer hops); on when a classifier is set.")
    router_chunk_tokens: int = Field(16, ge=1, description="Prefix granularity of the prefix-aware router.")
    router_load_margin: int = Field(4, ge=0, description="A replica holding the prefix is preferred unless its "
                                                         "load exceeds the least-loaded one's by more than this.")
    llm_replicas: int = Field(1, ge=1, description="Model replicas.")
    llm_num_cpus: float = Field(1, gt=0, description="CPUs each model replica reserves.")
    llm_max_ongoing_requests: int = Field(192, ge=1, description="Requests one model replica holds at once "
                                          "(running + waiting in its engine); more queue in Serve's router.")
    llm_max_queued_requests: int = Field(64, ge=1, description="Requests each caller (ingress replica) queues for "
                                         "the model replicas beyond that; past it 503 with Retry-After at once.")
    ingress_max_ongoing_requests: int = Field(512, ge=1, description="HTTP requests one ingress replica handles at "
                                              "once; beyond them Serve's proxy queues, then answers 503 itself.")
    ingress_max_queued_requests: int = Field(1024, ge=1, description="Requests Serve's proxy queues per ingress "
                                             "deployment beyond the ongoing ones.")
    ingress_max_inflight: int | None = Field(None, ge=1, description="Generation requests one ingress replica "
                                             "takes at once; past it 503 with Retry-After before any work (fast "
                                             "under any pile-up). Unset: the model replicas' capacity, replicas (max "
                                             "when autoscaling) x llm_max_ongoing_requests + llm_max_queued_requests.")
    retry_after_s: int = Field(1, ge=1, description="Retry-After of the 503s the server sends when overloaded.")
    torch_threads: int = Field(0, ge=0, description="torch threads per model replica; 0: all cores.")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="Each model replica's engine "
                                 "(raygen.engine.config; `model` comes from the registry).")
    system_prompt: str | None = Field(None, description="Prepended to chat conversations that have none.")
    truncation: Literal["error", "left"] = Field(
        "error", description="A prompt longer than the context: refuse it (400), or keep its last tokens.")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    autoscaling: AutoscalingSettings | None = Field(None, description="Autoscale model replicas (replaces "
                                                                      "llm_replicas).")

    @model_validator(mode="after")
    def _model_from_the_registry(self) -> ServeConfig:
        if self.engine.model:
            raise ValueError("engine.model: the served model is registry.name at serve.version; leave it unset")
        return self


class AlertSettings(_Model):
    enabled: bool = Field(False, description="Run the alert evaluator actor (raygen/observability/alert_actor.py).")
    rules_file: str | None = Field(None, description="YAML list of rules; unset: raygen's default rules.")
    webhooks: list[str] = Field(default_factory=list, description="URLs that get firing/resolved JSON POSTs.")
    metrics_urls: list[str] = Field(default_factory=list, description="Prometheus endpoints to scrape; empty: "
                                                                      "Ray's endpoint on every node.")
    interval_s: float = Field(15, gt=0, description="Seconds between evaluations.")
    retries: int = Field(3, ge=0, description="Webhook retries (exponential backoff) before giving up.")


class ObservabilitySettings(_Model):
    tracing: Literal["off", "none", "console", "otlp", "memory"] = Field(
        "none", description="Span exporter: otlp (needs `pip install -e .[otlp]`), console (JSON lines in the worker "
                            "log), memory (tests), none (spans made, so trace ids reach headers and logs, but not "
                            "exported) or off (no spans, no trace ids).")
    otlp_endpoint: str | None = Field(None, description="OTLP/HTTP traces endpoint; unset: the exporter's default.")
    metrics: bool = Field(True, description="Record raygen's metrics in Ray's metrics system (Prometheus, dashboard).")
    json_logs: bool = Field(True, description="raygen's loggers write JSON lines with request and trace ids.")
    access_log: bool = Field(True, description="One JSON access-log line per request (logger raygen.access).")
    log_text: bool = Field(False, description="Privacy flag: put prompt and completion text in access logs.")
    alerts: AlertSettings = Field(default_factory=AlertSettings)


class RaygenConfig(_Model):
    data: DataConfig = Field(default_factory=DataConfig)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tune: TuneSettings = Field(default_factory=TuneSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    def resolved(self) -> RaygenConfig:
        """A copy whose local paths are absolute (Ray workers run in other directories)."""
        out = self.model_copy(deep=True)
        out.data.paths = [str(paths.resolve(p)) for p in self.data.paths]
        out.data.output_dir = str(paths.resolve(self.data.output_dir))
        if "://" not in self.train.storage_path:
            out.train.storage_path = str(paths.resolve(self.train.storage_path))
        out.registry.root = str(paths.resolve(self.registry.root))
        return out


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check the spelling; see raygen/config.py for the fields)")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.max_steps=20")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RaygenConfig:
    """Read YAML (or the defaults), apply `section.key=value` overrides, validate, resolve paths."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return validate_config(raw, source)


def validate_config(raw: dict[str, Any], source: str = "config") -> RaygenConfig:
    try:
        return RaygenConfig.model_validate(raw).resolved()
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc
