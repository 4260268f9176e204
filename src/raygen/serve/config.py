"""Serving's config: the graph's deployments, limits, gateway, cache, safety and the engine each model
replica runs (`serve:` in YAML)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raygen import pii
from raygen._config_base import ConfigModel
from raygen.engine.config import EngineConfig


class ApiKeyEntry(ConfigModel):
    name: str = Field(description="Who holds the key; the name (never the key) appears in logs.")
    key: str | None = Field(None, description="The key in clear (hashed on load); prefer key_sha256 in files.")
    key_sha256: str | None = Field(None, description="sha256 hex digest of the key.")
    models: list[str] | None = Field(None, description="Models this key may use; unset: all.")
    admin: bool = Field(False, description="May call admin endpoints (cache invalidation).")
    max_concurrent: int | None = Field(None, ge=1, description="Requests this key may have generating at once "
                                       "(overrides serve.rate_limit.max_concurrent_per_key).")


class AuthSettings(ConfigModel):
    keys: list[ApiKeyEntry] = Field(default_factory=list, description="API keys; none (and no env/file): auth off.")
    keys_file: str | None = Field(None, description="File of name:key[:model1|model2][:admin] lines.")


class RateLimitSettings(ConfigModel):
    enabled: bool = Field(True, description="Per-key limits (shared by all ingress replicas).")
    requests_per_minute: int = Field(600, ge=1, description="Requests per key per minute.")
    tokens_per_minute: int = Field(200_000, ge=1, description="Prompt + completion tokens per key per minute.")
    max_concurrent_per_key: int | None = Field(None, ge=1, description="Requests (streaming or not) one key may "
                                               "have generating at once; past it 429. Unset: no cap.")
    on_gateway_failure: Literal["open", "closed"] = Field(
        "open", description="While the Gateway (limiter and cache) is down or being replaced: open admits requests "
                            "without limits; closed refuses them with 503 + Retry-After. The cache always fails open.")
    gateway_timeout_s: float = Field(2.0, gt=0, description="A Gateway call slower than this counts as a failure.")


class CacheSettings(ConfigModel):
    enabled: bool = Field(True, description="Exact-match cache of deterministic responses (temperature 0 or seed).")
    ttl_s: float = Field(600, gt=0, description="Seconds an entry lives.")
    max_entries: int = Field(4096, ge=1, description="Entries kept (LRU beyond).")
    max_mib: int = Field(64, ge=1, description="Bytes kept, in MiB (LRU beyond).")
    near_ttl_s: float = Field(1.0, ge=0, description="Each ingress replica also keeps recent hits this long "
                                                    "(skips a hop; may outlive an invalidation by as much); 0: off.")


class SafetySettings(ConfigModel):
    blocklist: list[str] = Field(default_factory=list, description="Phrases refused in prompts and cut from outputs.")
    patterns: list[str] = Field(default_factory=list, description="Regexes treated like blocklist phrases.")
    redact_pii: bool = Field(True, description="Replace PII in outputs with its kind's placeholder (<EMAIL>, ...).")
    pii_kinds: list[pii.Kind] = Field(default_factory=lambda: list(pii.KINDS),
                                      description="PII kinds redact_pii replaces (raygen.pii, as in data curation).")
    classifier: str | None = Field(None, description="Local HF sequence-classifier directory (optional).")
    classifier_labels: list[str] = Field(default_factory=list, description="Classifier labels that block.")
    classifier_threshold: float = Field(0.5, gt=0, le=1, description="Probability at which a label blocks.")


class AutoscalingSettings(ConfigModel):
    min_replicas: int = Field(1, ge=0, description="Model replicas at least.")
    max_replicas: int = Field(1, ge=1, description="Model replicas at most.")
    target_ongoing_requests: float = Field(16, gt=0, description="Ongoing requests per replica to aim for.")


class ServeConfig(ConfigModel):
    host: str = Field("127.0.0.1", description="HTTP bind address of Serve's proxy.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of Serve's proxy.")
    proxy_location: Literal["HeadOnly", "EveryNode", "Disabled"] = Field(
        "HeadOnly", description="Where Serve runs HTTP proxies: the head only, or every node with a replica "
                                "(behind your load balancer).")
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
    llm_max_replicas_per_node: int | None = Field(None, ge=1, description="At most this many model replicas on "
                                                  "one node (1: each on its own node, so a node's loss takes one).")
    llm_label_selector: dict[str, str] = Field(default_factory=dict, description="Node labels model replicas "
                                               "need (`ray start --labels`), e.g. {raygen.io/pool: gpu}.")
    http_label_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the HTTP side "
                                                "needs: ingress, gateway, pre/postprocessors.")
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
    tool_parser: Literal["auto", "hermes", "llama3_json"] = Field(
        "auto", description="How tool calls are read from the model's output under tool_choice auto: hermes "
        "(<tool_call>{json}</tool_call>: Qwen, Hermes, raygen's default template) or llama3_json (the output "
        "one JSON object); auto picks llama3_json for Llama-3 style chat templates, else hermes.")
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
