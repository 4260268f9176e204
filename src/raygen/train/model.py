"""Build a Hugging Face causal LM from raygen's model config: a named preset, explicit sizes, a config
file, or a local pretrained directory to fine-tune. Everything here runs on the driver too (no Ray), so a
bad shape or a tokenizer that does not fit the model fails before any worker starts.

Presets are plain dicts (torchtitan's habit): the family plus the fields that differ from its defaults.
Fields set explicitly in the config (`model.n_layer=6`) win over the preset's.
"""

from __future__ import annotations

import json

from raygen.train.config import ModelConfig
from raygen.errors import ConfigError

# name -> family and sizes. Parameter counts are for a 32k vocabulary with tied embeddings (GPT-2) or
# untied ones (Llama), so the biggest of each family is ~0.8-1.2B.
PRESETS: dict[str, dict] = {
    "gpt2-tiny": {"family": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 2},
    "gpt2-mini": {"family": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4},
    "gpt2-bench": {"family": "gpt2", "n_layer": 6, "n_embd": 512, "n_head": 8},  # train_bench.py's model
    "gpt2-small": {"family": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12},  # 124M with GPT-2's vocab
    "gpt2-medium": {"family": "gpt2", "n_layer": 24, "n_embd": 1024, "n_head": 16},
    "gpt2-large": {"family": "gpt2", "n_layer": 36, "n_embd": 1280, "n_head": 20},  # ~0.8B
    "llama-tiny": {"family": "llama", "n_layer": 2, "n_embd": 128, "n_head": 4, "n_kv_head": 2},
    "llama-mini": {"family": "llama", "n_layer": 4, "n_embd": 256, "n_head": 8, "n_kv_head": 4},
    "llama-160m": {"family": "llama", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_kv_head": 4},
    "llama-400m": {"family": "llama", "n_layer": 24, "n_embd": 1024, "n_head": 16, "n_kv_head": 8},
    "llama-1b": {"family": "llama", "n_layer": 16, "n_embd": 2048, "n_head": 32, "n_kv_head": 8,
                 "intermediate_size": 8192},  # Llama 3.2 1B's shape
}
_SIZE_FIELDS = ("family", "n_layer", "n_embd", "n_head", "n_kv_head", "intermediate_size")


def resolved_sizes(cfg: ModelConfig) -> dict:
    """The preset's fields overlaid by the ones set explicitly in the config."""
    if cfg.preset is None:
        return {f: getattr(cfg, f) for f in _SIZE_FIELDS}
    if cfg.preset not in PRESETS:
        raise ConfigError(f"model.preset {cfg.preset!r} is unknown; presets: {', '.join(PRESETS)}")
    out = {f: getattr(cfg, f) for f in _SIZE_FIELDS} | PRESETS[cfg.preset]
    return out | {f: getattr(cfg, f) for f in _SIZE_FIELDS if f in cfg.model_fields_set}


def build_hf_config(cfg: ModelConfig, vocab_size: int, context_length: int, eos_id: int, pad_id: int):
    """A transformers config for training from scratch (or the pretrained/config file's own, checked)."""
    from transformers import AutoConfig, GPT2Config, LlamaConfig

    if cfg.pretrained or cfg.config_file:
        src = cfg.pretrained or cfg.config_file
        try:
            hf = AutoConfig.from_pretrained(src)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.{'pretrained' if cfg.pretrained else 'config_file'} {src}: not a "
                              f"Hugging Face config ({exc})") from exc
        if hf.vocab_size < vocab_size:
            raise ConfigError(f"the tokenizer has {vocab_size} tokens but the model at {src} only {hf.vocab_size} "
                              "embeddings: use the model's own tokenizer (features.tokenizer: "
                              f"{src}) and re-run the data stage")
        limit = getattr(hf, "n_positions", None) or getattr(hf, "max_position_embeddings", None)
        if limit is not None and limit < context_length:
            raise ConfigError(f"features.block_size {context_length} exceeds the model's context of {limit}")
        if not cfg.pretrained:  # a config file trains from scratch: the tokenizer's specials win
            hf.eos_token_id, hf.bos_token_id, hf.pad_token_id = eos_id, eos_id, pad_id
        return hf
    s = resolved_sizes(cfg)
    if s["n_embd"] % s["n_head"]:
        raise ConfigError(f"model n_head ({s['n_head']}) must divide n_embd ({s['n_embd']})")
    if s["family"] == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=context_length, n_embd=s["n_embd"], n_layer=s["n_layer"],
            n_head=s["n_head"], n_inner=s["intermediate_size"], resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    kv = s["n_kv_head"] or s["n_head"]
    if s["n_head"] % kv:
        raise ConfigError(f"model n_kv_head ({kv}) must divide n_head ({s['n_head']})")
    # Llama's MLP width: 8/3 of the hidden size rounded up to a multiple of 64 unless given.
    inter = s["intermediate_size"] or -(-8 * s["n_embd"] // 3 // 64) * 64
    return LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=context_length, hidden_size=s["n_embd"],
        intermediate_size=inter, num_hidden_layers=s["n_layer"], num_attention_heads=s["n_head"],
        num_key_value_heads=kv, rope_theta=cfg.rope_theta, attention_dropout=cfg.dropout,
        tie_word_embeddings=False, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id)


def model_from(hf_config: dict, pretrained: str | None = None):
    """The model a training run starts from: the pretrained weights to fine-tune, or a random init of the
    transformers config (seed torch first). The one builder: the workers and the tests use it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if pretrained:
        return AutoModelForCausalLM.from_pretrained(pretrained, dtype="float32")
    hf = dict(hf_config)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(hf_config) -> str:
    """One line for logs: family, layers, hidden size, heads."""
    d = hf_config.to_dict()
    layers = d.get("n_layer") or d.get("num_hidden_layers")
    hidden = d.get("n_embd") or d.get("hidden_size")
    heads = d.get("n_head") or d.get("num_attention_heads")
    kv = d.get("num_key_value_heads")
    return f"{hf_config.model_type} {layers}L×{hidden} {heads}h" + (f"/{kv}kv" if kv and kv != heads else "")


def config_fingerprint(hf_config) -> str:
    """What must match for a checkpoint to load: the architecture's shape fields, as sorted JSON."""
    d = hf_config.to_dict()
    keep = ("model_type", "vocab_size", "n_layer", "n_embd", "n_head", "n_inner", "num_hidden_layers",
            "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    return json.dumps({k: d.get(k) for k in keep if k in d}, sort_keys=True)

