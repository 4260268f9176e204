"""The per-worker training loop: DeepSpeed ZeRO over a Ray Train worker group, data from Ray Data shards.

Runs inside `TorchTrainer`; Ray Train has already set up torch.distributed (gloo on CPU, nccl on GPU),
which DeepSpeed adopts. A torch AdamW is handed to DeepSpeed so no fused CUDA/CPU Adam op is built.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path


def _say(msg: str) -> None:
    # Not print(): Ray Train V2 patches print to tee into its logger, so every line would show twice.
    sys.stdout.write(f"[raygen train] {msg}\n")
    sys.stdout.flush()


def _mean_across_workers(value: float, device) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def _val_loss(engine, shard, batch_size: int, device) -> float:
    """Token-weighted mean loss over this worker's val shard, reduced across workers."""
    import torch
    import torch.distributed as dist

    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of loss × tokens, tokens)
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.long, device=device):
            ids = batch["input_ids"]
            n = ids.shape[0] * (ids.shape[1] - 1)  # HF shifts labels: T-1 predictions per row
            total[0] += engine(input_ids=ids, labels=ids).loss.double() * n
            total[1] += n
    dist.all_reduce(total)
    engine.train()
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch

    from raygen.config import ModelConfig, TrainConfig
    from raygen.train.model import build_model, num_params
    from raygen.train.schedule import lr_factor

    tc = TrainConfig.model_validate(config["train"])
    mc = ModelConfig.model_validate(config["model"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    use_gpu = torch.cuda.is_available() and bool(config["use_gpu"])
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # after DS_ACCELERATOR: it picks its accelerator at import

    # DeepSpeed's ZeRO calls a torch.distributed collective that warns on every step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")

    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    # Ray sets OMP threads from the (fractional) CPU reservation; size torch's pool to the real cores.
    torch.set_num_threads(tc.torch_threads or max(1, (os.cpu_count() or 1) // ctx.get_local_world_size()))
    torch.manual_seed(tc.seed)  # same init on every rank
    model = build_model(mc, config["vocab_size"], config["block_size"], config["eos_id"], config["pad_id"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases and LayerNorm gains
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr, betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio))
    ds_config = {
        "train_micro_batch_size_per_gpu": tc.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": tc.grad_clip,
        "zero_optimization": {"stage": tc.zero_stage},
        "zero_allow_untested_optimizer": True,  # torch AdamW: avoids JIT-building DeepSpeed's FusedAdam
        "bf16": {"enabled": False},
        "steps_per_print": 1 << 30,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    if rank == 0:
        _say(f"{num_params(model) / 1e6:.2f}M params, ZeRO-{tc.zero_stage}, "
              f"{ctx.get_world_size()} workers × {tc.micro_batch_size} × {config['block_size']} tokens/step, "
              f"device {device}")

    train_shard = ray.train.get_dataset_shard("train")
    tokens_per_step = tc.micro_batch_size * config["block_size"] * ctx.get_world_size()
    step, first_loss, t_start = 0, None, time.time()
    t_step = (0, t_start)  # (step, time) of the last report: throughput is measured between reports
    while step < tc.max_steps:
        epoch_batches = train_shard.iter_torch_batches(
            batch_size=tc.micro_batch_size, dtypes=torch.long, device=device, drop_last=True,
            local_shuffle_buffer_size=256, local_shuffle_seed=tc.seed + step)
        for batch in epoch_batches:
            ids = batch["input_ids"]  # (B, T)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            step += 1
            last = step >= tc.max_steps
            if step % tc.log_every and step != 1 and not last:
                continue
            # Every log_every steps: reduce the loss across workers and report. ray.train.report is a
            # barrier through the controller (~1 s here), so reporting every step would dominate.
            loss_value = _mean_across_workers(loss.item(), device)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss is {loss_value} at step {step}; lower train.lr")
            first_loss = loss_value if first_loss is None else first_loss
            now = time.time()
            metrics = {"step": step, "loss": loss_value, "first_loss": first_loss,
                       "lr": scheduler.get_last_lr()[0],
                       "tokens_per_s": tokens_per_step * (step - t_step[0]) / (now - t_step[1])}
            t_step = (step, now)
            if rank == 0:
                _say(f"step {step}/{tc.max_steps} loss {loss_value:.4f} lr {metrics['lr']:.2e} "
                      f"{metrics['tokens_per_s']:.0f} tok/s")
            if last:
                break
            ray.train.report(metrics)
    if step == 0:
        raise RuntimeError("the train shard yielded no full batch: lower train.micro_batch_size")

    val_loss = _val_loss(engine, ray.train.get_dataset_shard("val"), tc.micro_batch_size, device)
    metrics.update(val_loss=val_loss, val_ppl=math.exp(val_loss) if math.isfinite(val_loss) else float("nan"),
                   train_seconds=time.time() - t_start)
    if rank == 0:
        _say(f"done: loss {first_loss:.3f} → {metrics['loss']:.3f}, val loss {val_loss:.3f} "
              f"(perplexity {metrics['val_ppl']:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(os.path.join(tmp, "deepspeed"), tag=f"step{step}")  # collective
        # Consolidated Hugging Face weights: under ZeRO-3 parameters are gathered (collective).
        state = engine._zero3_consolidated_16bit_state_dict() if tc.zero_stage == 3 else None
        if rank == 0:
            engine.module.save_pretrained(Path(tmp, "hf"), state_dict=state, safe_serialization=True)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
