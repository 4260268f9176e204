"""Driver side of training: check everything before a worker starts, then run a Ray Train TorchTrainer."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import ray

from raygen.config import RaygenConfig
from raygen.data.pipeline import DataStats, load_stats
from raygen.errors import TrainingError


@dataclass
class TrainOutcome:
    metrics: dict  # rank 0's last report: loss, first_loss, val_loss, val_ppl, step, ...
    checkpoint_dir: str  # Ray Train checkpoint: deepspeed/ (sharded state) and hf/ (consolidated model)
    hf_dir: str
    tokenizer_dir: str
    data: DataStats
    seconds: float


def _check(cfg: RaygenConfig, stats: DataStats) -> None:
    tc = cfg.train  # model shape checks live in ModelConfig's validator
    min_train = tc.num_workers * tc.micro_batch_size
    if stats.num_train_blocks < min_train:
        raise TrainingError(f"{stats.num_train_blocks} train blocks cannot fill one step of {tc.num_workers} "
                            f"workers × micro_batch_size {tc.micro_batch_size}; add data or lower them")
    if stats.num_val_blocks < tc.num_workers:
        raise TrainingError(f"{stats.num_val_blocks} val blocks for {tc.num_workers} workers: every worker needs "
                            "one; raise features.val_fraction or add data")
    for split in ("train", "val"):
        if not any(Path(stats.output_dir, split).glob("*.parquet")):
            raise TrainingError(f"no Parquet shards in {Path(stats.output_dir, split)}: re-run the data stage")
    tok = Path(stats.output_dir, "tokenizer", "tokenizer.json")
    if not tok.is_file():
        raise TrainingError(f"tokenizer missing at {tok.parent}: re-run the data stage")


def train(cfg: RaygenConfig) -> TrainOutcome:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from transformers import AutoTokenizer

    from raygen.train.loop import train_loop_per_worker

    t0 = time.time()
    stats = load_stats(cfg.data.output_dir)
    _check(cfg, stats)
    tok_dir = str(Path(stats.output_dir, "tokenizer"))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= cfg.train.num_workers
    loop_config = {
        "train": cfg.train.model_dump(), "model": cfg.model.model_dump(), "use_gpu": use_gpu,
        "vocab_size": len(tok), "block_size": stats.block_size,
        "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
    }
    ray.data.DataContext.get_current().enable_progress_bars = False  # rank 0 prints a progress line
    datasets = {split: ray.data.read_parquet(str(Path(stats.output_dir, split))) for split in ("train", "val")}
    # A fresh run name each time: re-using one means resuming it, which the training issue adds.
    run_name = f"{cfg.train.run_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.train.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=RunConfig(name=run_name, storage_path=cfg.train.storage_path),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        datasets=datasets,
    )
    print(f"[raygen train] run {run_name}: {cfg.train.num_workers} workers, ZeRO-{cfg.train.zero_stage}, "
          f"{cfg.train.max_steps} steps, data {stats.dataset_version}", flush=True)
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; keep the cause, say where to look
        raise TrainingError(f"training run {run_name} failed: {exc}") from exc
    if result.checkpoint is None:
        raise TrainingError(f"training run {run_name} finished without a checkpoint")
    ckpt = result.checkpoint.path
    return TrainOutcome(metrics=dict(result.metrics), checkpoint_dir=ckpt, hf_dir=str(Path(ckpt, "hf")),
                        tokenizer_dir=tok_dir, data=stats, seconds=time.time() - t0)
