"""Paged attention over one preallocated K/V pool, in plain torch (CPU and CUDA).

The pool of a layer is (num_blocks, block_size, num_kv_heads, head_dim); a sequence's block table lists
the blocks holding its tokens in order. Each step the runner packs all scheduled tokens of all sequences
into one batch (T tokens) and describes it with a `StepMetadata`:

    decode groups   sequences that run one token; grouped by context length so that gathering their
                    blocks into a padded (B, L) batch wastes little; one SDPA call per group
    prefills        sequences that run a chunk of prompt; one SDPA call each with a causal mask that
                    starts after the tokens already in the cache

Decodes gather their blocks into a reused workspace and run one SDPA call per length group (the
fastest torch layout; the alternatives' timings are in benchmarks/RESULTS.md, "Design measurements").
On CPU they go through a small C kernel that reads the pool in place instead (kernels.py); the gather +
SDPA path remains for CUDA and as the fallback. Prefill chunks are compute-bound: SDPA, one call each.
Our own forward (models.py) rather than a transformers attention hook keeps the batch packed and
mask-free: transformers rebuilds masks and output objects on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from raygen.engine import kernels


@dataclass
class DecodeGroup:
    start: int  # first token of the group in the packed batch; its B tokens are contiguous
    tables: torch.Tensor  # (B, nb) long block ids, padded with block 0
    context_lens: torch.Tensor  # (B,) long tokens each query attends to, itself included
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)  # window -> (B, 1, 1, nb*bs) bool

    def mask(self, block_size: int, window: int | None) -> torch.Tensor:
        if window not in self.masks:
            keys = torch.arange(self.tables.shape[1] * block_size, device=self.tables.device)
            m = keys[None, :] < self.context_lens[:, None]
            if window is not None:  # the query sits at position context_len - 1
                m &= keys[None, :] > (self.context_lens[:, None] - 1 - window)
            self.masks[window] = m[:, None, None, :]
        return self.masks[window]


@dataclass
class Prefill:
    start: int  # first token of the chunk in the packed batch
    num_tokens: int  # chunk length
    num_computed: int  # tokens of this sequence already in the cache before the chunk
    block_ids: torch.Tensor  # (nb,) long blocks covering num_computed + num_tokens tokens


@dataclass
class StepMetadata:
    slot_mapping: torch.Tensor  # (T,) long: block_id * block_size + offset, where each token's K/V goes
    decode_groups: list[DecodeGroup]
    prefills: list[Prefill]


class KVPool:
    """K and V for every layer, plus a workspace that gathered blocks are copied into (reused, so large
    gathers do not page-fault a fresh buffer each step)."""

    def __init__(self, num_layers: int, num_blocks: int, block_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, num_heads: int | None = None, use_kernel: bool = True):
        shape = (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size, self.num_kv_heads, self.head_dim = block_size, num_kv_heads, head_dim
        self._work = torch.empty(0, dtype=dtype, device=device)
        heads = num_heads or num_kv_heads
        # Decodes read K/V in place through the CPU kernel when it is available (see kernels.py).
        self.use_kernel = (use_kernel and heads <= 64 and heads * head_dim <= 8192 and block_size <= 128
                           and kernels.supports(device, dtype))

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    @staticmethod
    def bytes_per_block(num_layers: int, block_size: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return num_layers * 2 * block_size * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()

    def copy_block(self, src: int, dst: int) -> None:
        self.kv[:, :, dst] = self.kv[:, :, src]

    def _gather(self, cache: torch.Tensor, block_ids: torch.Tensor, slot: int) -> torch.Tensor:
        """cache[block_ids] into workspace slot 0 (K) or 1 (V): (*block_ids.shape, bs, Hkv, D)."""
        per = block_ids.numel() * cache[0].numel()
        if self._work.numel() < 2 * per:
            self._work = torch.empty(int(2 * per * 1.25), dtype=cache.dtype, device=cache.device)
        out = self._work[slot * per:(slot + 1) * per].view(block_ids.numel(), *cache.shape[1:])
        torch.index_select(cache, 0, block_ids.reshape(-1), out=out)
        return out.view(*block_ids.shape, *cache.shape[1:])

    def attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: StepMetadata,
                  scale: float, window: int | None = None) -> torch.Tensor:
        """q (T, H, D), k/v (T, Hkv, D) for the packed batch → (T, H*D). Writes k/v into the pool first."""
        k_cache, v_cache = self.kv[layer, 0], self.kv[layer, 1]
        bs, hkv, d = self.block_size, self.num_kv_heads, self.head_dim
        k_cache.view(-1, hkv, d).index_copy_(0, meta.slot_mapping, k)
        v_cache.view(-1, hkv, d).index_copy_(0, meta.slot_mapping, v)
        t, h = q.shape[0], q.shape[1]
        group = h // hkv
        out = torch.empty(t, h, d, dtype=q.dtype, device=q.device)
        for g in meta.decode_groups:
            b, nb = g.tables.shape
            if self.use_kernel:
                kernels.paged_decode(q[g.start:g.start + b], k_cache, v_cache, g.tables, g.context_lens, scale,
                                     window, out[g.start:g.start + b])
                continue
            # GQA: a KV head's `group` query heads become its query length, so no K/V is repeated.
            qg = q[g.start:g.start + b].reshape(b, hkv, group, d)  # (B, Hkv, G, D)
            kg = self._gather(k_cache, g.tables, 0).view(b, nb * bs, hkv, d).transpose(1, 2)  # (B, Hkv, L, D)
            vg = self._gather(v_cache, g.tables, 1).view(b, nb * bs, hkv, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=g.mask(bs, window), scale=scale)
            out[g.start:g.start + b] = o.reshape(b, h, d)
        for p in meta.prefills:
            s, n, c = p.start, p.num_tokens, p.num_computed
            qp = q[s:s + n].transpose(0, 1)  # (H, n, D)
            if c == 0:  # nothing cached: the chunk's own K/V, no gather
                kp, vp = k[s:s + n].transpose(0, 1), v[s:s + n].transpose(0, 1)
            else:
                kp = self._gather(k_cache, p.block_ids, 0).view(-1, hkv, d)[:c + n].transpose(0, 1)
                vp = self._gather(v_cache, p.block_ids, 1).view(-1, hkv, d)[:c + n].transpose(0, 1)
            # A batch of one, (1, H, n, D): given 3-D inputs, CPU SDPA takes its math path, which makes the
            # (n, n) scores; 4-D takes the flash kernel, 3-6x faster at 1-2k tokens (Design measurements).
            qp, kp, vp = qp[None], kp[None], vp[None]
            if c == 0 and window is None:
                o = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True, scale=scale, enable_gqa=group > 1)
            else:
                qpos = torch.arange(c, c + n, device=q.device)[:, None]
                kpos = torch.arange(c + n, device=q.device)[None, :]
                mask = kpos <= qpos
                if window is not None:
                    mask &= kpos > qpos - window
                o = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=scale, enable_gqa=group > 1)
            out[s:s + n] = o[0].transpose(0, 1)
        return out.view(t, h * d)
