"""The engine's one config: what `LLMEngine` takes, and what `serve.engine` in a raygen YAML holds (the
model directory is filled in by the serving graph from the registry).

A standard-library dataclass, so the engine imports without pydantic (the GPU image may lack it); pydantic
validates it as a field of the raygen config all the same, reading `__pydantic_config__` (unknown keys are
refused) and the attribute docstrings (the descriptions)."""

from __future__ import annotations

from dataclasses import dataclass

from raygen.errors import EngineSetupError


@dataclass
class EngineConfig:
    __pydantic_config__ = {"extra": "forbid", "use_attribute_docstrings": True}

    model: str = ""
    """Local Hugging Face model directory (save_pretrained output); serving sets it from the registry."""
    dtype: str = "auto"
    """auto | float32 | bfloat16 | float16; auto: the checkpoint's (bf16 for fp32 checkpoints on GPU)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    block_size: int = 16
    """Tokens per KV-cache block."""
    kv_cache_mib: float | None = None
    """KV pool size in MiB; unset: kv_cache_fraction of free GPU memory, or 512 MiB on CPU."""
    kv_cache_fraction: float = 0.9
    """Share of free device memory (after loading the model) the KV pool takes when kv_cache_mib is unset (CUDA)."""
    max_num_seqs: int = 64
    """Sequences batched at once."""
    max_num_batched_tokens: int = 1024
    """Tokens per forward pass (prefill chunks + decodes)."""
    max_model_len: int | None = None
    """Prompt + max_tokens at most; unset: the model's context window."""
    max_num_waiting: int | None = 128
    """Requests queued for admission at most; past it add_request raises EngineOverloadedError (served: 503
    with Retry-After). Unset: no bound."""
    enable_prefix_caching: bool = True
    """Reuse KV blocks of identical prompt prefixes."""
    num_threads: int = 0
    """torch CPU threads; 0 leaves torch's default."""
    tokenizer: str | None = "auto"
    """Tokenizer directory; auto: the model directory's when it has one; null: token ids only (no text)."""
    stream_interval_ms: float = 200.0
    """Streams (AsyncLLMEngine, batched=True) while more than stream_coalesce_above are live: a stream's next
    chunk waits until this long after its previous one and carries every step made meanwhile (its first
    token is never held). Each chunk costs every process on its way to the client the same work whatever
    it carries, so fewer, larger chunks leave the CPU to the model; vLLM's stream_interval, in time. 0: off.
    On 2 CPU cores at 64 streams: 50 ms gave 1.27x the output tok/s of off, 250 ms 1.75x (RESULTS.md, Peers)."""
    stream_coalesce_above: int = 4
    """Live streams at most with no coalescing (one chunk per step: the smoothest stream when load is light)."""
    grammar_any_whitespace: bool = False
    """Structured JSON outputs may hold free whitespace (any indentation); off: compact JSON, the form every
    parser reads, and a weak model cannot spend max_tokens on spaces."""

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise EngineSetupError(f"EngineConfig.dtype={self.dtype!r}: use auto, float32, bfloat16 or float16")
        for name, ok in (("block_size", self.block_size >= 1), ("max_num_seqs", self.max_num_seqs >= 1),
                         ("max_num_waiting", self.max_num_waiting is None or self.max_num_waiting >= 1),
                         ("max_num_batched_tokens", self.max_num_batched_tokens >= 1),
                         ("kv_cache_mib", self.kv_cache_mib is None or self.kv_cache_mib > 0),
                         ("max_model_len", self.max_model_len is None or self.max_model_len >= 1),
                         ("num_threads", self.num_threads >= 0),
                         ("stream_interval_ms", self.stream_interval_ms >= 0),
                         ("stream_coalesce_above", self.stream_coalesce_above >= 0),
                         ("kv_cache_fraction", 0 < self.kv_cache_fraction <= 1)):
            if not ok:
                raise EngineSetupError(f"EngineConfig.{name}={getattr(self, name)!r} is out of range")

    @property
    def kv_cache_bytes(self) -> int | None:
        return None if self.kv_cache_mib is None else round(self.kv_cache_mib * 2**20)
