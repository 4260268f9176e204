"""ModelRunner: loads a Hugging Face causal LM, owns the K/V pool, runs one packed forward per step.

The only part of the engine that touches the model's tensors. A step's input is the scheduler's
decision (which sequences run how many tokens) plus their block tables; its output is one row of logits
per sequence that samples this step, nothing for tokens that only fill the cache.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from raygen.engine.attention import DecodeGroup, KVPool, Prefill, StepMetadata
from raygen.engine.models import build_forward
from raygen.engine.scheduler import SchedulerOutput
from raygen.errors import EngineSetupError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_CPU_KV_BYTES = 512 * 2**20
# SDPA backends on CUDA: not cuDNN's, which builds an execution plan for every new shape, and a serving
# step's shapes change every step (batch size, padded context length, each prompt chunk's length). On an
# H200, gpt2-small at 146 sequences, that made a decode step 77 ms, 2.8 ms per attention call
# (benchmarks/results/gpu_check/cuda/profile_cudnn.txt); flash (no mask: prefill) and memory-efficient
# attention (a mask: padded decode groups) build nothing.
CUDA_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineSetupError(f"device {device!r} was asked for but torch sees no CUDA device; use 'cpu' or 'auto'")
    return torch.device(device)


def resolve_dtype(dtype: str, config, device: torch.device) -> torch.dtype:
    if dtype == "auto":  # the checkpoint's dtype; fp32 checkpoints run in bf16 on GPUs that support it
        saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        saved = DTYPES.get(saved, saved) if isinstance(saved, str) else saved
        if device.type == "cuda" and saved == torch.float32 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return saved
    if dtype not in DTYPES:
        raise EngineSetupError(f"dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class StepInputs:
    token_ids: torch.Tensor  # (T,) long, the packed batch
    positions: torch.Tensor  # (T,) long
    meta: StepMetadata
    sample_index: torch.Tensor  # (S,) long: packed index of each sampling sequence's last token
    # Prompt logprobs: packed indices whose logits are also wanted, and per sequence (req_id, position of
    # its first such token, how many), in that order
    prompt_index: torch.Tensor | None = None
    prompt_spans: list[tuple[str, int, int]] | None = None


class ModelRunner:
    def __init__(self, model_dir: str | Path, *, dtype: str = "auto", device: str = "auto", block_size: int = 16,
                 kv_cache_bytes: int | None = None, kv_cache_fraction: float = 0.9):
        from transformers import AutoConfig, AutoModelForCausalLM

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise EngineSetupError(f"{path} is not a Hugging Face model directory (no config.json); pass a "
                                   "directory written by save_pretrained, e.g. models/demo/latest")
        self.device = resolve_device(device)
        config = AutoConfig.from_pretrained(path)
        self.dtype = resolve_dtype(dtype, config, self.device)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        model.requires_grad_(False)
        self.config = model.config
        self.forward = build_forward(model)
        self.shape = self.forward.shape
        self.block_size = block_size
        per_block = KVPool.bytes_per_block(self.shape.num_layers, block_size, self.shape.num_kv_heads,
                                           self.shape.head_dim, self.dtype)
        if kv_cache_bytes is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                kv_cache_bytes = int(free * kv_cache_fraction)
            else:
                kv_cache_bytes = DEFAULT_CPU_KV_BYTES
        self.num_blocks = kv_cache_bytes // per_block
        if self.num_blocks < 1:
            raise EngineSetupError(f"a KV budget of {kv_cache_bytes} bytes holds no block of {per_block} bytes "
                                   f"({block_size} tokens × {self.shape.num_layers} layers); raise kv_cache_bytes")
        self.pool = KVPool(self.shape.num_layers, self.num_blocks, block_size, self.shape.num_kv_heads,
                           self.shape.head_dim, self.dtype, self.device, self.shape.num_heads)
        self.eos_token_ids = self._eos_ids(model)
        log.info("runner: %s (%s) on %s in %s; KV pool %d blocks × %d tokens = %.1f MiB",
                 path, self.config.model_type, self.device, self.dtype, self.num_blocks, block_size,
                 self.pool.nbytes / 2**20)

    @staticmethod
    def _eos_ids(model) -> frozenset[int]:
        ids = set()
        for cfg in (model.config, getattr(model, "generation_config", None)):
            eos = getattr(cfg, "eos_token_id", None)
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        return frozenset(ids)

    # -- one step -------------------------------------------------------------------------------------
    def prepare(self, out: SchedulerOutput) -> StepInputs:
        """The step's packed batch from the scheduler's output alone: decodes first, grouped by length, then
        prefill chunks."""
        bs = self.block_size
        decodes = sorted((s for s in out.scheduled if len(s.token_ids) == 1), key=lambda s: s.start)
        prefills = [s for s in out.scheduled if len(s.token_ids) > 1]
        token_ids, positions, slots, last_index = [], [], [], {}
        groups, cur = [], []

        def close_group():
            if cur:
                nb = max(len(t) for _, t in cur)
                tables = [t + [0] * (nb - len(t)) for _, t in cur]
                groups.append(DecodeGroup(len(token_ids) - len(cur),
                                          torch.tensor(tables, dtype=torch.long, device=self.device),
                                          torch.tensor([c for c, _ in cur], dtype=torch.long, device=self.device)))
                cur.clear()

        real = 0
        for s in decodes:
            pos, table = s.start, s.block_table
            # Sorted by length, so a new member is the longest: start a new group when padding to its
            # length would waste more than a quarter of the gathered blocks.
            # (The CPU kernel reads only each sequence's own blocks: one group, no padding to care about.)
            if cur and not self.pool.use_kernel and len(cur) >= 4 \
                    and (len(cur) + 1) * len(table) > 1.25 * (real + len(table)):
                close_group()
                real = 0
            token_ids.append(s.token_ids[0])
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            last_index[s.req_id] = len(token_ids) - 1
            cur.append((pos + 1, table))
            real += len(table)
        close_group()
        pre, prompt_rows, spans = [], [], []
        for s in prefills:
            c, n, table = s.start, len(s.token_ids), s.block_table
            if s.prompt_logits:
                prompt_rows.extend(range(len(token_ids), len(token_ids) + n))
                spans.append((s.req_id, c, n))
            pre.append(Prefill(len(token_ids), n, c, torch.tensor(table, dtype=torch.long, device=self.device)))
            token_ids.extend(s.token_ids)
            positions.extend(range(c, c + n))
            slots.extend(table[p // bs] * bs + p % bs for p in range(c, c + n))
            last_index[s.req_id] = len(token_ids) - 1
        as_tensor = lambda xs: torch.tensor(xs, dtype=torch.long, device=self.device)  # noqa: E731
        return StepInputs(as_tensor(token_ids), as_tensor(positions), StepMetadata(as_tensor(slots), groups, pre),
                          as_tensor([last_index[r] for r in out.sample_req_ids]),
                          as_tensor(prompt_rows) if spans else None, spans or None)

    @torch.inference_mode()
    def execute(self, inputs: StepInputs) -> torch.Tensor:
        """One forward over the packed batch → logits (S + P, V) float32: one row per sampling sequence, then
        one per prompt token whose logits were asked for (inputs.prompt_index)."""
        with sdpa_kernel(CUDA_SDPA_BACKENDS) if self.device.type == "cuda" else contextlib.nullcontext():
            hidden = self.forward(inputs.token_ids, inputs.positions, self.pool, inputs.meta)
        rows = inputs.sample_index if inputs.prompt_index is None else torch.cat([inputs.sample_index,
                                                                                   inputs.prompt_index])
        return F.linear(hidden[rows], self.forward.lm_head).float()

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        for src, dst in pairs:
            self.pool.copy_block(src, dst)
