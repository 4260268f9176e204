"""Model FLOPs per token and a measured matmul peak, for MFU. torch only (no Ray).

MFU = achieved model FLOP/s ÷ peak FLOP/s. The model side counts what the architecture needs, not what the
kernels did (no recompute, no padding): per token, forward + backward ≈ 6 × N (N = parameters that take
part in matmuls: everything but the position embeddings; a tied input embedding counts once, as the output
projection) + 12 × n_layer × hidden × T for attention scores and values over a context of T (PaLM,
appendix B; nanoGPT's estimate_mfu). The device side is *measured*, not a spec-sheet number: the best of a
few square matmuls in the training dtype with the threads the worker uses, so an MFU of 0.5 means half of
what this machine's GEMM does, whatever the chip.
"""

from __future__ import annotations

import time


def flops_per_token(model, context_length: int) -> float:
    """Training FLOPs (forward + backward) per token of a transformers causal LM."""
    cfg = model.config
    n_layer = getattr(cfg, "n_layer", None) or cfg.num_hidden_layers
    hidden = getattr(cfg, "n_embd", None) or cfg.hidden_size
    seen, n = set(), 0
    for name, p in model.named_parameters():
        if id(p) in seen or name.endswith(("wpe.weight", "position_embeddings.weight")):
            continue
        seen.add(id(p))
        n += p.numel()
    return 6.0 * n + 12.0 * n_layer * hidden * context_length


def measure_matmul_peak(dtype, device, size: int = 2048, reps: int = 3) -> float:
    """Best FLOP/s of (size × size) @ (size × size) in dtype on device, with torch's current threads."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ b  # warm-up: kernels chosen, pages touched
    sync()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t)
    return 2.0 * size**3 / best
