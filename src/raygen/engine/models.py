"""raygen's own forward pass for the supported Hugging Face families, over a packed batch of tokens.

Weights, norms, activations and rotary tables come from the loaded transformers model, so numerics
follow it; only the projections are re-laid (Llama's q/k/v and gate/up fused into one matmul each) and
attention goes through the paged K/V pool. Supported: GPT-2 (`gpt2`) and the Llama family (`llama`,
`qwen2`, `mistral`: RMSNorm, rotary, grouped-query attention, gated MLP, optional biases, sliding window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raygen.engine.attention import KVPool, StepMetadata
from raygen.errors import UnsupportedModelError

LLAMA_LIKE = ("llama", "qwen2", "mistral")
SUPPORTED = ("gpt2", *LLAMA_LIKE)


@dataclass
class Shape:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden: int
    vocab: int
    max_len: int


def shape_of(config) -> Shape:
    if config.model_type == "gpt2":
        return Shape(config.n_layer, config.n_head, config.n_head, config.n_embd // config.n_head, config.n_embd,
                     config.vocab_size, config.n_positions)
    if config.model_type in LLAMA_LIKE:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return Shape(config.num_hidden_layers, heads, getattr(config, "num_key_value_heads", None) or heads,
                     head_dim, config.hidden_size, config.vocab_size, config.max_position_embeddings)
    raise UnsupportedModelError(
        f"model_type {config.model_type!r} is not supported by the raygen engine (supported: "
        f"{', '.join(SUPPORTED)}); serve it with a supported architecture or add its forward to "
        "raygen/engine/models.py")


def build_forward(hf_model) -> Gpt2Forward | LlamaForward:
    cfg = hf_model.config
    shape_of(cfg)  # raises for unsupported families
    return Gpt2Forward(hf_model) if cfg.model_type == "gpt2" else LlamaForward(hf_model)


def _cat(*tensors: torch.Tensor | None, like: list[torch.Tensor]) -> torch.Tensor | None:
    """Concatenate biases along the output dim; a missing one counts as zeros; None when all are missing."""
    if all(t is None for t in tensors):
        return None
    return torch.cat([t if t is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                      for t, w in zip(tensors, like, strict=True)])


class Gpt2Forward:
    def __init__(self, hf_model):
        cfg, t = hf_model.config, hf_model.transformer
        if cfg.reorder_and_upcast_attn:
            raise UnsupportedModelError("GPT-2 with reorder_and_upcast_attn=True is not supported by the engine")
        self.shape = shape_of(cfg)
        self.wte, self.wpe, self.ln_f = t.wte.weight, t.wpe.weight, t.ln_f
        self.lm_head = hf_model.lm_head.weight  # (V, hidden); tied to wte by default
        d = self.shape.head_dim
        self.layers = []
        # GPT-2's "gelu_new" is the tanh GELU written out in five elementwise ops; torch's fused kernel
        # computes the same function in one pass (3 ms of a 78 ms decode step at 128 sequences, bf16).
        act = (lambda x: F.gelu(x, approximate="tanh")) if cfg.activation_function in ("gelu_new", "gelu_pytorch_tanh") \
            else None
        for i, blk in enumerate(t.h):
            scale = (d ** -0.5 if cfg.scale_attn_weights else 1.0) / ((i + 1) if cfg.scale_attn_by_inverse_layer_idx else 1)
            # Conv1D keeps weights as (in, out) and computes addmm(bias, x, W): same here, same numerics.
            self.layers.append((blk.ln_1, blk.attn.c_attn.weight, blk.attn.c_attn.bias, blk.attn.c_proj.weight,
                                blk.attn.c_proj.bias, blk.ln_2, blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, act or blk.mlp.act,
                                blk.mlp.c_proj.weight, blk.mlp.c_proj.bias, scale))

    def __call__(self, token_ids: torch.Tensor, positions: torch.Tensor, pool: KVPool,
                 meta: StepMetadata) -> torch.Tensor:
        """token_ids, positions (T,) → final hidden states (T, hidden)."""
        s = self.shape
        h = self.wte[token_ids] + self.wpe[positions]  # (T, hidden)
        t = h.shape[0]
        for i, (ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_fc, b_fc, act, w_pr, b_pr, scale) in enumerate(self.layers):
            qkv = torch.addmm(b_qkv, ln1(h), w_qkv)  # (T, 3*hidden)
            q, k, v = qkv.view(t, 3, s.num_heads, s.head_dim).unbind(1)
            h = h + torch.addmm(b_o, pool.attention(i, q, k, v, meta, scale), w_o)
            h = h + torch.addmm(b_pr, act(torch.addmm(b_fc, ln2(h), w_fc)), w_pr)
        return self.ln_f(h)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaForward:
    def __init__(self, hf_model):
        cfg, m = hf_model.config, hf_model.model
        self.shape = shape_of(cfg)
        self.embed, self.norm, self.rotary = m.embed_tokens.weight, m.norm, m.rotary_emb
        self.lm_head = hf_model.lm_head.weight
        types = getattr(cfg, "layer_types", None)
        window = getattr(cfg, "sliding_window", None)
        if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
            window = None
        self.layers = []
        for i, blk in enumerate(m.layers):
            a, mlp = blk.self_attn, blk.mlp
            win = window if (types is None or types[i] == "sliding_attention") else None
            w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            w_gu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            self.layers.append((
                blk.input_layernorm, w_qkv,
                _cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias, like=[a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                a.o_proj.weight, a.o_proj.bias, blk.post_attention_layernorm, w_gu,
                _cat(mlp.gate_proj.bias, mlp.up_proj.bias, like=[mlp.gate_proj.weight, mlp.up_proj.weight]),
                mlp.act_fn, mlp.down_proj.weight, mlp.down_proj.bias, win))
        self.scale = self.shape.head_dim ** -0.5

    def __call__(self, token_ids: torch.Tensor, positions: torch.Tensor, pool: KVPool,
                 meta: StepMetadata) -> torch.Tensor:
        s = self.shape
        h = self.embed[token_ids]  # (T, hidden)
        t = h.shape[0]
        cos, sin = self.rotary(h, positions[None])  # (1, T, D), in the model's dtype
        cos, sin = cos[0, :, None, :], sin[0, :, None, :]  # (T, 1, D)
        nq, nkv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        for i, (ln1, w_qkv, b_qkv, w_o, b_o, ln2, w_gu, b_gu, act, w_down, b_down, win) in enumerate(self.layers):
            q, k, v = F.linear(ln1(h), w_qkv, b_qkv).split([nq, nkv, nkv], dim=-1)
            q = q.view(t, s.num_heads, s.head_dim)
            k = k.view(t, s.num_kv_heads, s.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            h = h + F.linear(pool.attention(i, q, k, v.view(t, s.num_kv_heads, s.head_dim), meta, self.scale, win),
                             w_o, b_o)
            gate, up = F.linear(ln2(h), w_gu, b_gu).chunk(2, dim=-1)
            h = h + F.linear(act(gate) * up, w_down, b_down)
        return self.norm(h)
