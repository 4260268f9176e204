"""The per-worker training loop: DeepSpeed ZeRO over a Ray Train worker group, data from Ray Data shards.

Runs inside `TorchTrainer`; Ray Train has already set up torch.distributed (gloo on CPU, nccl on GPU),
which DeepSpeed adopts. A torch AdamW is handed to DeepSpeed so no fused CUDA/CPU Adam op is built.

One optimizer step = accum_steps micro-batches on every worker. Every log_every steps rank 0 prints a
progress line (loss, lr, grad norm, tokens/s, MFU); every eval_every steps (and at the end) all ranks
compute the val loss and report it to Ray Train, with a DeepSpeed checkpoint every checkpoint_every steps.
Reports are a barrier through the controller (~1 s here), so they happen only at evals. A checkpoint holds
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
from pathlib import Path

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


def _val_loss(engine, shard, batch_size: int, device, autocast) -> float:
    """Token-weighted mean loss over the val split (each worker its shard), reduced across workers."""
    import torch
    import torch.distributed as dist

    engine.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of loss × predictions, predictions)
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.long, device=device):
            ids = batch["input_ids"]  # (B, T)
            n = ids.shape[0] * (ids.shape[1] - 1)  # HF shifts labels: T-1 predictions per row
            with autocast():
                total[0] += engine(input_ids=ids, labels=ids).loss.double() * n
            total[1] += n
    dist.all_reduce(total)
    engine.train()
    return (total[0] / total[1]).item() if total[1] > 0 else float("nan")


def _build(config: dict):
    from transformers import AutoConfig, AutoModelForCausalLM

    if config["pretrained"]:
        return AutoModelForCausalLM.from_pretrained(config["pretrained"], dtype="float32")
    hf = dict(config["hf_config"])
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(hf.pop("model_type"), **hf))


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


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import torch

    from raygen.config import TrainConfig
    from raygen.observability.metrics import record
    from raygen.train.flops import flops_per_token, measure_matmul_peak
    from raygen.train.model import num_params
    from raygen.train.schedule import lr_factor

    tc = TrainConfig.model_validate(config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
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
    model = _build(config)
    block = config["block_size"]

    # Precision and the measured peak: every rank measures with its own threads at the same time (as they
    # will train), the decision and the peak are reduced so that all ranks agree.
    precision = tc.precision
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        else:
            fp32, bf16 = _all_reduce([measure_matmul_peak(torch.float32, device, 1024),
                                      measure_matmul_peak(torch.bfloat16, device, 1024)], device)
            precision = "bf16" if bf16 >= 1.3 * fp32 else "fp32"
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    peak = _all_reduce([measure_matmul_peak(dtype, device)], device, op="sum")[0]  # FLOP/s of all workers
    fpt = flops_per_token(model, block)
    n_params = num_params(model)  # before ZeRO-3 partitions the parameters away

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16-autocast" else nullcontext()

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
    accum = tc.accum_steps
    ds_config = {
        "train_micro_batch_size_per_gpu": tc.micro_batch_size,
        "gradient_accumulation_steps": accum,
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

    step, history, resumed_from = 0, [], []  # resumed_from: the step of every resume
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            _, client = engine.load_checkpoint(os.path.join(d, "deepspeed"))
            step = int(client["step"])
            meta = json.loads(Path(d, "history.json").read_text())
            history, resumed_from = meta["history"], meta["resumed_from"] + [step]
        if rank == 0:
            _say(f"resumed from the checkpoint of step {step} (resume {len(resumed_from)})")
    torch.manual_seed(tc.seed + 1009 * rank + step)  # dropout: different per rank, reproducible per step

    tokens_per_step = tc.micro_batch_size * accum * block * world
    if rank == 0:
        _say(f"{n_params / 1e6:.2f}M params, ZeRO-{tc.zero_stage}"
             f"{' + optimizer offload' if tc.offload_optimizer else ''}, {precision}, {world} workers × "
             f"{tc.micro_batch_size} × {accum} accum × {block} tokens = {tokens_per_step} tokens/step, device "
             f"{device} ({torch.get_num_threads()} torch threads"
             f"{', OMP_WAIT_POLICY=' + os.environ['OMP_WAIT_POLICY'] if 'OMP_WAIT_POLICY' in os.environ else ''}); MFU against a measured {dtype} matmul peak of {peak / 1e9:.1f} GFLOP/s "
             f"(all workers), {fpt / 1e6:.1f} MFLOP/token")

    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    every = tc.checkpoint_every or tc.eval_every
    t_start = time.time()
    mark = (step, time.time())  # (step, time) of the last progress line: throughput between lines
    loss_sum = torch.zeros((), device=device)  # this rank's micro-batch losses since the last line
    micro, streams = 0, 0
    norm_from_grads = tc.zero_stage == 0 and precision != "bf16"  # no ZeRO or bf16 optimizer to keep the norm

    def finish_step(metrics: dict) -> None:
        """Eval, report and checkpoint at this step as the schedule says (all ranks together)."""
        last = step >= tc.max_steps
        metrics["val_loss"] = _val_loss(engine, val_shard, tc.micro_batch_size, device, autocast)
        metrics["val_ppl"] = math.exp(metrics["val_loss"]) if metrics["val_loss"] < 50 else float("inf")
        history.append({"step": step, "val_loss": metrics["val_loss"]})
        if rank == 0:
            _say(f"step {step}/{tc.max_steps} val loss {metrics['val_loss']:.4f} "
                 f"(perplexity {metrics['val_ppl']:.1f})")
        if not (last or step % every == 0):
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            engine.save_checkpoint(os.path.join(tmp, "deepspeed"), tag=f"step{step}",
                                   client_state={"step": step})  # collective; each rank writes its shards
            # Consolidated Hugging Face weights at the end, in fp32 (collectives: ZeRO-3 and bf16 gather them).
            state = None
            if last and precision == "bf16":
                state = _fp32_state_dict(engine, tc.zero_stage, rank)
            elif last and tc.zero_stage == 3:
                state = engine._zero3_consolidated_16bit_state_dict()
            if rank == 0:
                Path(tmp, "history.json").write_text(json.dumps({"history": history, "resumed_from": resumed_from}))
                if last:
                    engine.module.save_pretrained(Path(tmp, "hf"), state_dict=state, safe_serialization=True)
                    if precision == "bf16":  # save_pretrained records the bf16 model's dtype; the weights are fp32
                        engine.module.config.dtype = "float32"
                        engine.module.config.save_pretrained(Path(tmp, "hf"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{step:06d}")

    metrics: dict = {"step": step}
    while step < tc.max_steps:
        batches = train_shard.iter_torch_batches(
            batch_size=tc.micro_batch_size, dtypes=torch.long, device=device, drop_last=True,
            # Seeded per rank: Ray Data hands whole blocks to the workers, and a shard can come to two
            # workers in one stream (as two of its epochs); the same seed would give them the same batches.
            local_shuffle_buffer_size=256, local_shuffle_seed=tc.seed + 7919 * step + 104729 * rank + streams)
        streams += 1
        got_batch = False
        for batch in batches:
            got_batch = True
            ids = batch["input_ids"]  # (B, T)
            with autocast():
                loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            grad_norm = _grad_norm(engine, True) if boundary and norm_from_grads else None
            engine.step()
            loss_sum += loss.detach()
            micro += 1
            if not boundary:
                continue
            step += 1
            last = step >= tc.max_steps
            if step % tc.log_every and step % tc.eval_every and not last and step != 1:
                continue
            if grad_norm is None:
                grad_norm = _grad_norm(engine, False)
            loss_value = _all_reduce([loss_sum.item() / micro], device)[0]
            loss_sum.zero_()
            micro = 0
            if not math.isfinite(loss_value):
                raise TrainingError(f"training loss is {loss_value} at step {step}; lower train.lr "
                                         "(or raise warmup_steps)")
            now = time.time()
            tok_s = tokens_per_step * (step - mark[0]) / max(now - mark[1], 1e-9)
            mark = (step, now)
            first_loss = next((h["loss"] for h in history if "loss" in h), loss_value)
            metrics = {"step": step, "loss": loss_value, "first_loss": first_loss, "lr": scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm,
                       "tokens_per_s": tok_s, "mfu": tok_s * fpt / peak, "precision": precision,
                       "restarts": len(resumed_from)}
            history.append({k: metrics[k] for k in ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu")})
            if rank == 0:  # also to Ray's metrics (Prometheus endpoint, dashboard) between the Train reports
                run = ctx.get_experiment_name()
                record("raygen_train_loss", loss_value, run=run)
                record("raygen_train_loss_min", min(h["loss"] for h in history if "loss" in h), run=run)
                record("raygen_train_tokens_per_second", tok_s, run=run)
                record("raygen_train_mfu_ratio", metrics["mfu"], run=run)
                eta = (tc.max_steps - step) * tokens_per_step / max(tok_s, 1e-9)
                _say(f"step {step}/{tc.max_steps} loss {loss_value:.4f} lr {metrics['lr']:.2e} "
                     f"gnorm {grad_norm:.3f} {tok_s:,.0f} tok/s MFU {100 * metrics['mfu']:.1f}% eta {eta:.0f}s")
            if last or step % tc.eval_every == 0:
                finish_step(metrics)
            if last:
                break
        if not got_batch:
            raise TrainingError("the train shard yielded no full batch: lower train.micro_batch_size")
    if not history or history[-1].get("step") != step or "val_loss" not in history[-1]:
        finish_step(metrics)  # resumed at or past max_steps: evaluate and export again
    if rank == 0:
        _say(f"done at step {step} in {time.time() - t_start:.0f}s: val loss {history[-1]['val_loss']:.4f}")
