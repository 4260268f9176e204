"""The per-worker training loop: DeepSpeed ZeRO over a Ray Train worker group, data from Ray Data shards.

Runs inside `TorchTrainer`; Ray Train has already set up torch.distributed (gloo on CPU, nccl on GPU),
which DeepSpeed adopts. A torch AdamW is handed to DeepSpeed so no fused CUDA/CPU Adam op is built, and on
CPU DeepSpeed's shared-memory all-reduce op (inference only) is not built either.

One optimizer step = accum_steps micro-batches on every worker. Every log_every steps rank 0 prints a
progress line (loss, lr, grad norm, tokens/s, MFU); every eval_every steps (and at the end) all ranks
compute the val loss (their val shard read once, then kept when small) and report it to Ray Train, with a
DeepSpeed checkpoint every checkpoint_every steps.
Reports are a barrier through Ray Train's controller, so they happen only at evals. A checkpoint holds
the sharded DeepSpeed state (deepspeed/), the step history (history.json) and, at the end, the consolidated
Hugging Face model (hf/). A restarted worker group resumes from the latest checkpoint: weights, optimizer,
lr schedule, step and history; the data order of the resumed stream is re-seeded by the step. The train
split arrives as one stream of several epochs (trainer.epochs_per_stream); when it runs dry the loop starts
another.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raygen.errors import TrainingError


def _say(msg: str) -> None:
    # Not print(): Ray Train V2 patches print to tee into its logger, so every line would show twice.
    sys.stdout.write(f"[raygen train] {msg}\n")
    sys.stdout.flush()


def _all_reduce(values: list[float], device, op: str = "mean") -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size() if op == "mean" else t).tolist()


VAL_CACHE_BYTES = 64 * 2**20  # per worker: the val shard is kept in memory after the first eval up to this


def _val_loss(run: _Run, batch_size: int) -> float:
    """Token-weighted mean loss over the val split (each worker its shard), reduced across workers.

    The first eval reads the shard through Ray Data; when every worker's shard fits in VAL_CACHE_BYTES the
    workers keep it, and later evals reuse it: each new pass over a Ray Data shard is a new execution of
    its read (5-10 s on 2 busy cores, for a split of a few hundred KB). Agreed across workers, since a pass
    over a streaming split waits for every worker."""
    import torch
    import torch.distributed as dist

    engine, device = run.engine, run.device
    engine.eval()
    # (sum of loss × predictions, predictions, workers whose shard did not fit)
    total = torch.zeros(3, dtype=torch.float64, device=device)
    if run.val_cache is not None:
        batches, keep = iter(run.val_cache), None
    else:
        batches = (b["input_ids"] for b in run.val_shard.iter_torch_batches(
            batch_size=batch_size, dtypes=torch.long, device=device))
        keep = [] if run.val_cacheable else None
    kept_bytes = 0
    with torch.no_grad():
        for ids in batches:  # (B, T)
            n = ids.shape[0] * (ids.shape[1] - 1)  # HF shifts labels: T-1 predictions per row
            with run.autocast():
                total[0] += engine(input_ids=ids, labels=ids).loss.double() * n
            total[1] += n
            if keep is not None:
                keep.append(ids)
                kept_bytes += ids.numel() * ids.element_size()
                if kept_bytes > VAL_CACHE_BYTES:
                    keep, total[2] = None, 1
    dist.all_reduce(total)
    if run.val_cache is None and run.val_cacheable:
        run.val_cache, run.val_cacheable = (keep, True) if total[2] == 0 else (None, False)
    engine.train()
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


def _grad_norm(engine, from_grads: bool) -> float:
    """The global gradient norm of the step just taken (before clipping). from_grads: DeepSpeed keeps none
    (plain data parallel in fp32), so it is taken from the all-reduced grads, before the step clears them."""
    import torch

    if from_grads:
        grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads)) if grads else float("nan")
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


def _fp32_state_dict(engine, zero_stage: int, rank: int) -> dict | None:
    """Under DeepSpeed bf16: the consolidated fp32 master weights for the export, on rank 0 (a collective:
    every rank calls it). The bf16 copies the model computes with would lose the low bits of every weight."""
    from deepspeed.utils import safe_get_full_fp32_param

    if zero_stage == 0:  # DeepSpeed's unfused bf16 optimizer keeps a whole fp32 copy of every parameter
        opt = engine.optimizer
        master = {id(lp): hp for lps, hps in zip(opt.fp16_groups, opt.fp32_groups, strict=True)
                  for lp, hp in zip(lps, hps, strict=True)}
        full = lambda p: master[id(p)]  # noqa: E731
    else:  # ZeRO-1/2/3: each rank holds a partition; gathered parameter by parameter
        full = safe_get_full_fp32_param
    by_id = {id(p): full(p).detach().cpu() for p in engine.module.parameters()}  # same order on all ranks
    if rank != 0:
        return None
    # Tied names (lm_head = wte) map to the same tensor, so save_pretrained still sees them as tied.
    state = {n: by_id[id(p)] for n, p in engine.module.named_parameters(remove_duplicate=False)}
    return state | {k: v for k, v in engine.module.state_dict().items() if k not in state}  # buffers


@dataclass
class _Run:
    """What the steps of one worker's run share: settings, the DeepSpeed engine, and the progress."""

    tc: Any  # TrainConfig
    ctx: Any  # ray.train's context
    device: Any
    precision: str  # fp32 | bf16 | bf16-autocast
    engine: Any = None
    scheduler: Any = None
    peak: float = 0.0  # measured matmul FLOP/s of all workers
    fpt: float = 0.0  # FLOPs per token
    tokens_per_step: int = 0
    step: int = 0
    history: list = field(default_factory=list)
    resumed_from: list = field(default_factory=list)  # the step of every resume
    val_shard: Any = None
    val_cache: list | None = None  # the val shard's batches, once read (see _val_loss)
    val_cacheable: bool = True  # false once a worker's shard did not fit in VAL_CACHE_BYTES
    mark: tuple[int, float] = (0, 0.0)  # (step, time) of the last progress line: throughput between lines
    loss_sum: Any = None  # this rank's micro-batch losses since the last progress line (a tensor)
    micro: int = 0  # micro-batches in loss_sum

    @property
    def rank(self) -> int:
        return self.ctx.get_world_rank()

    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16-autocast" \
            else nullcontext()


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's per-worker function: config is a WorkerConfig's dict (re-validated here)."""
    import ray.train

    from raygen.train.config import WorkerConfig

    w, t_start = WorkerConfig.model_validate(config), time.time()
    run = _setup(w, ray.train.get_context())
    _resume(run)
    run.val_shard = ray.train.get_dataset_shard("val")
    run.mark = (run.step, time.time())
    metrics: dict = {"step": run.step}
    streams = 0
    while run.step < w.train.max_steps:
        metrics = _train_stream(run, ray.train.get_dataset_shard("train"), streams, metrics)
        streams += 1
    if not run.history or run.history[-1].get("step") != run.step or "val_loss" not in run.history[-1]:
        _evaluate_and_report(run, metrics)  # resumed at or past max_steps: evaluate and export again
    if run.rank == 0:
        _say(f"done at step {run.step} in {time.time() - t_start:.0f}s: val loss {run.history[-1]['val_loss']:.4f}")


def _setup(w, ctx) -> _Run:
    """Device and threads, the model, the precision and the measured peak, the DeepSpeed engine."""
    import torch

    from raygen.train.flops import flops_per_token
    from raygen.train.model import model_from, num_params

    tc = w.train
    use_gpu = torch.cuda.is_available() and w.use_gpu
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before DeepSpeed is imported: it picks it at import
    # DeepSpeed's ZeRO calls a torch.distributed collective that warns on every step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    import ray.train.torch

    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    # Ray sets OMP threads from the (fractional) CPU reservation; size torch's pool to the real cores.
    torch.set_num_threads(tc.torch_threads or max(1, (os.cpu_count() or 1) // ctx.get_local_world_size()))
    torch.manual_seed(tc.seed)  # same init on every rank
    model = model_from(w.hf_config, w.pretrained)
    run = _Run(tc, ctx, device, _precision(tc.precision, device))
    dtype = torch.float32 if run.precision == "fp32" else torch.bfloat16
    run.peak = _all_reduce([_matmul_peak(dtype, device)], device, op="sum")[0]  # FLOP/s of all workers
    run.fpt, n_params = flops_per_token(model, w.block_size), num_params(model)  # before ZeRO-3 partitions it
    run.tokens_per_step = tc.micro_batch_size * tc.accum_steps * w.block_size * ctx.get_world_size()
    run.engine, run.scheduler = _deepspeed(model, tc, run.precision, use_gpu)
    if run.rank == 0:
        _say(f"{n_params / 1e6:.2f}M params, ZeRO-{tc.zero_stage}"
             f"{' + optimizer offload' if tc.offload_optimizer else ''}, {run.precision}, {ctx.get_world_size()} "
             f"workers × {tc.micro_batch_size} × {tc.accum_steps} accum × {w.block_size} tokens = "
             f"{run.tokens_per_step} tokens/step, device {device} ({torch.get_num_threads()} torch threads"
             f"{', OMP_WAIT_POLICY=' + os.environ['OMP_WAIT_POLICY'] if 'OMP_WAIT_POLICY' in os.environ else ''}); "
             f"MFU against a measured {dtype} matmul peak of {run.peak / 1e9:.1f} GFLOP/s (all workers), "
             f"{run.fpt / 1e6:.1f} MFLOP/token")
    return run


def _precision(asked: str, device) -> str:
    """auto: bf16 on CUDA when supported; on CPU bf16 when its measured matmul peak beats fp32 by 1.3x. Every
    rank measures with its own threads at the same time (as they will train); the reduction makes all agree."""
    import torch

    if asked != "auto":
        return asked
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    fp32, bf16 = _all_reduce([_matmul_peak(torch.float32, device, 1024),
                              _matmul_peak(torch.bfloat16, device, 1024)], device)
    return "bf16" if bf16 >= 1.3 * fp32 else "fp32"


def _matmul_peak(dtype, device, max_size: int = 2048, budget_s: float = 1.0) -> float:
    """The measured matmul peak (flops.measure_matmul_peak), at the largest square size up to max_size whose
    one matmul the previous size predicts to take at most budget_s: 256, then doubling. A CPU without native
    bf16 (no AVX512-BF16 or AMX) multiplies bf16 at ~1 GFLOP/s a core, 50x slower than fp32; a fixed 2048
    (4 matmuls of 17 GFLOP) held every bf16 run on 2 busy cores in setup for 7-8 minutes. Fast devices
    still reach max_size."""
    from raygen.train.flops import measure_matmul_peak

    size, peak = 256, measure_matmul_peak(dtype, device, 256)
    while size < max_size and 2.0 * (2 * size) ** 3 / peak <= budget_s:
        size *= 2
        peak = max(peak, measure_matmul_peak(dtype, device, size))
    return peak


def _deepspeed(model, tc, precision: str, use_gpu: bool):
    """(DeepSpeed engine, lr scheduler): a torch AdamW (no fused op to build), decay on matrices only."""
    import deepspeed
    import deepspeed.ops
    import torch

    from raygen.train.schedule import lr_factor

    if not use_gpu:
        # DeepSpeed's CPU comm backend JIT-builds its shared-memory all-reduce op (deepspeed_shm_comm: C++
        # through ninja, cached in ~/.cache/torch_extensions) in initialize: 1-2 minutes on 2 cores on a fresh
        # node, and again whenever the last build was by another ninja (pip's and the system's hash command
        # lines differently). Only inference_all_reduce (tensor-parallel inference) uses it; training reduces
        # through torch.distributed (gloo). DeepSpeed builds it only when its table of compatible ops says so.
        compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
        if isinstance(compatible, dict):
            compatible["deepspeed_shm_comm"] = False

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases and norm gains
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr, betas=tuple(tc.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio))
    zero: dict = {"stage": tc.zero_stage}
    if tc.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    ds_config = {
        "train_micro_batch_size_per_gpu": tc.micro_batch_size,
        "gradient_accumulation_steps": tc.accum_steps,
        "gradient_clipping": tc.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,  # torch AdamW: avoids JIT-building DeepSpeed's FusedAdam
        "zero_force_ds_cpu_optimizer": False,  # offload with the torch optimizer (no DeepSpeedCPUAdam build)
        # DeepSpeed's bf16: bf16 weights and gradients (half the casts, memory traffic and communication of
        # autocast), fp32 master weights in the optimizer. bf16-autocast runs fp32 DeepSpeed under autocast.
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine, scheduler


def _resume(run: _Run) -> None:
    """From the latest checkpoint, when Ray Train has one: weights, optimizer, schedule, step and history."""
    import ray.train
    import torch

    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            _, client = run.engine.load_checkpoint(os.path.join(d, "deepspeed"))
            run.step = int(client["step"])
            meta = json.loads(Path(d, "history.json").read_text())
            run.history, run.resumed_from = meta["history"], meta["resumed_from"] + [run.step]
        if run.rank == 0:
            _say(f"resumed from the checkpoint of step {run.step} (resume {len(run.resumed_from)})")
    torch.manual_seed(run.tc.seed + 1009 * run.rank + run.step)  # dropout: different per rank, reproducible


def _train_stream(run: _Run, shard, stream: int, metrics: dict) -> dict:
    """Optimizer steps over one pass of the train stream (several epochs), until it runs dry or the run
    ends; returns the latest metrics."""
    import torch

    tc, engine = run.tc, run.engine
    batches = shard.iter_torch_batches(
        batch_size=tc.micro_batch_size, dtypes=torch.long, device=run.device, drop_last=True,
        # Seeded per rank: Ray Data hands whole blocks to the workers, and a shard can come to two workers in
        # one stream (as two of its epochs); the same seed would give them the same batches.
        local_shuffle_buffer_size=256, local_shuffle_seed=tc.seed + 7919 * run.step + 104729 * run.rank + stream)
    norm_from_grads = tc.zero_stage == 0 and run.precision != "bf16"  # no ZeRO or bf16 optimizer keeps the norm
    if run.loss_sum is None:
        run.loss_sum = torch.zeros((), device=run.device)
    got_batch = False
    for batch in batches:
        got_batch = True
        ids = batch["input_ids"]  # (B, T)
        with run.autocast():
            loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        boundary = engine.is_gradient_accumulation_boundary()
        grad_norm = _grad_norm(engine, True) if boundary and norm_from_grads else None
        engine.step()
        run.loss_sum += loss.detach()
        run.micro += 1
        if not boundary:
            continue
        run.step += 1
        last = run.step >= tc.max_steps
        if run.step % tc.log_every and run.step % tc.eval_every and not last and run.step != 1:
            continue
        loss_value = _all_reduce([run.loss_sum.item() / run.micro], run.device)[0]
        run.loss_sum.zero_()
        run.micro = 0
        metrics = _log_step(run, loss_value, grad_norm)
        if last or run.step % tc.eval_every == 0:
            _evaluate_and_report(run, metrics)
        if last:
            break
    if not got_batch:
        raise TrainingError("the train shard yielded no full batch: lower train.micro_batch_size")
    return metrics


def _log_step(run: _Run, loss_value: float, grad_norm: float | None) -> dict:
    """The step's metrics (history, Ray metrics, a progress line on rank 0)."""
    from raygen.observability.metrics import record

    tc = run.tc
    if not math.isfinite(loss_value):
        raise TrainingError(f"training loss is {loss_value} at step {run.step}; lower train.lr "
                            "(or raise warmup_steps)")
    if grad_norm is None:
        grad_norm = _grad_norm(run.engine, False)
    now = time.time()
    tok_s = run.tokens_per_step * (run.step - run.mark[0]) / max(now - run.mark[1], 1e-9)
    run.mark = (run.step, now)
    first_loss = next((h["loss"] for h in run.history if "loss" in h), loss_value)
    metrics = {"step": run.step, "loss": loss_value, "first_loss": first_loss, "lr": run.scheduler.get_last_lr()[0],
               "grad_norm": grad_norm, "tokens_per_s": tok_s, "mfu": tok_s * run.fpt / run.peak,
               "precision": run.precision, "restarts": len(run.resumed_from)}
    run.history.append({k: metrics[k] for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu")})
    if run.rank == 0:  # also to Ray's metrics (Prometheus endpoint, dashboard) between the Train reports
        name = run.ctx.get_experiment_name()
        record("raygen_train_loss", loss_value, run=name)
        record("raygen_train_loss_min", min(h["loss"] for h in run.history if "loss" in h), run=name)
        record("raygen_train_tokens_per_second", tok_s, run=name)
        record("raygen_train_mfu_ratio", metrics["mfu"], run=name)
        eta = (tc.max_steps - run.step) * run.tokens_per_step / max(tok_s, 1e-9)
        _say(f"step {run.step}/{tc.max_steps} loss {loss_value:.4f} lr {metrics['lr']:.2e} gnorm {grad_norm:.3f} "
             f"{tok_s:,.0f} tok/s MFU {100 * metrics['mfu']:.1f}% eta {eta:.0f}s")
    return metrics


def _evaluate_and_report(run: _Run, metrics: dict) -> None:
    """Val loss, then a report to Ray Train, with a checkpoint when the schedule says (all ranks together)."""
    import ray.train

    tc, step = run.tc, run.step
    metrics["val_loss"] = _val_loss(run, tc.micro_batch_size)
    metrics["val_ppl"] = math.exp(metrics["val_loss"]) if metrics["val_loss"] < 50 else float("inf")
    run.history.append({"step": step, "val_loss": metrics["val_loss"]})
    if run.rank == 0:
        _say(f"step {step}/{tc.max_steps} val loss {metrics['val_loss']:.4f} (perplexity {metrics['val_ppl']:.1f})")
    last = step >= tc.max_steps
    if not (last or step % (tc.checkpoint_every or tc.eval_every) == 0):
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        _write_checkpoint(run, tmp, last)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_step{step:06d}")


def _write_checkpoint(run: _Run, tmp: str, last: bool) -> None:
    """The sharded DeepSpeed state and the history; at the end also the Hugging Face model in fp32 (the
    gathers are collectives: every rank calls them)."""
    engine = run.engine
    engine.save_checkpoint(os.path.join(tmp, "deepspeed"), tag=f"step{run.step}", client_state={"step": run.step})
    state = None
    if last and run.precision == "bf16":
        state = _fp32_state_dict(engine, run.tc.zero_stage, run.rank)
    elif last and run.tc.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    if run.rank != 0:
        return
    Path(tmp, "history.json").write_text(json.dumps({"history": run.history, "resumed_from": run.resumed_from}))
    if last:
        engine.module.save_pretrained(Path(tmp, "hf"), state_dict=state, safe_serialization=True)
        if run.precision == "bf16":  # save_pretrained records the bf16 model's dtype; the weights are fp32
            engine.module.config.dtype = "float32"
            engine.module.config.save_pretrained(Path(tmp, "hf"))
