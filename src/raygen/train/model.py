"""Build a Hugging Face causal LM from raygen's model config (random init, any size)."""

from __future__ import annotations

from raygen.config import ModelConfig


def build_hf_config(cfg: ModelConfig, vocab_size: int, context_length: int, eos_id: int, pad_id: int):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size, n_positions=context_length, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )


def build_model(cfg: ModelConfig, vocab_size: int, context_length: int, eos_id: int, pad_id: int):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(build_hf_config(cfg, vocab_size, context_length, eos_id, pad_id))


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
