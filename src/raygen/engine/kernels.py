"""CPU paged-decode attention kernel (csrc/paged_decode.c), compiled on first use and called via ctypes.

Why a kernel: in plain torch a decode step must first gather every sequence's scattered blocks into a
padded batch for SDPA, a copy that costs about as much as the attention itself on CPU (RESULTS.md,
"Design measurements"). The kernel reads K/V in place from the pool. It builds with the system C compiler in about a
second (no torch headers), is cached under ~/.cache/raygen/kernels keyed by source, compiler and CPU
flags, and is optional: without a compiler, or with RAYGEN_NO_KERNELS=1, the torch path runs instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from raygen.errors import EngineSetupError

log = logging.getLogger(__name__)
SRC = Path(__file__).with_name("csrc") / "paged_decode.c"
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_flags() -> str:
    try:
        return next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return ""


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None when it cannot be built here (logged once)."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("RAYGEN_NO_KERNELS"):
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler found: paged decode attention uses the slower torch path (install gcc)")
        return None
    flags = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.blake2b(SRC.read_bytes() + " ".join([cc, *flags, _cpu_flags()]).encode(), digest_size=8).hexdigest()
    cache = Path(os.environ.get("RAYGEN_CACHE", Path.home() / ".cache" / "raygen")) / "kernels"
    so = cache / f"paged_decode-{key}.so"
    try:
        if not so.exists():
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:  # build aside, rename: safe across processes
                out = Path(tmp) / so.name
                subprocess.run([cc, *flags, str(SRC), "-o", str(out), "-lm"], check=True, capture_output=True,
                               text=True, timeout=120)
                out.replace(so)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        log.warning("building the paged decode kernel failed, using the torch path: %s", detail)
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for fn in (lib.paged_decode_f32, lib.paged_decode_bf16):
        fn.argtypes = [p, i64, p, p, p, p, i64, i64, i64, i64, i64, i64, ctypes.c_float, i64, p, i64, ctypes.c_int]
        fn.restype = ctypes.c_int
    _lib = lib
    return lib


def supports(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and load() is not None


def paged_decode(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: torch.Tensor,
                 context_lens: torch.Tensor, scale: float, window: int | None, out: torch.Tensor) -> None:
    """q (B, H, D) rows may be strided; k/v_cache (num_blocks, bs, Hkv, D) contiguous; tables (B, nb) and
    context_lens (B,) int64 contiguous; out (B, H, D) with contiguous heads. Writes out in place."""
    lib = load()
    b, h, d = q.shape
    nb, bs, hkv, _ = k_cache.shape
    assert q.stride(2) == 1 and q.stride(1) == d and out.stride(2) == 1 and out.stride(1) == d
    assert k_cache.is_contiguous() and v_cache.is_contiguous() and tables.is_contiguous()
    fn = lib.paged_decode_f32 if q.dtype == torch.float32 else lib.paged_decode_bf16
    rc = fn(q.data_ptr(), q.stride(0), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(),
            context_lens.data_ptr(), b, tables.shape[1], bs, h, hkv, d, scale, window or 0, out.data_ptr(),
            out.stride(0), torch.get_num_threads())
    if rc != 0:
        raise EngineSetupError(f"paged decode kernel: unsupported shape (heads {h} ≤ 64, heads × head_dim {h * d} ≤ "
                         f"8192, block size {bs} ≤ 128)")
