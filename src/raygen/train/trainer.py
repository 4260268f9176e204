"""Driver side of training: check everything before a worker starts, then run a Ray Train TorchTrainer.

A run lives at <storage_path>/<run_name>. Ray Train V2 keeps a snapshot of the run's checkpoints there, so
running the same name again resumes from its latest checkpoint (`train.resume: false` starts a fresh,
timestamped run instead); raygen_run.json beside it records the model's shape and the dataset version, so a
resume with another architecture or vocabulary fails here with a clear message instead of in DeepSpeed's
load. Worker failures are retried from the latest checkpoint (FailureConfig(max_failures)); the best
`keep_checkpoints` by val loss are kept, and the latest always.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from raygen.config import RaygenConfig
from raygen.train.config import WorkerConfig
from raygen.data.pipeline import DataStats, load_stats
from raygen.errors import ConfigError, DataError, TrainingError
from raygen.observability.tracing import record_spans
from raygen.storage import Location


@dataclass
class TrainOutcome:
    metrics: dict  # rank 0's last report: step, loss, val_loss, val_ppl, tokens_per_s, mfu, ...
    checkpoint_dir: str  # Ray Train checkpoint: deepspeed/ (sharded state), history.json, hf/ (consolidated)
    hf_dir: str
    tokenizer_dir: str
    data: DataStats
    seconds: float
    run_name: str = ""
    history: list[dict] = field(default_factory=list)  # per logged step: loss, lr, grad_norm, ...; evals
    resumed_from: list[int] = field(default_factory=list)  # the checkpoint step of every resume

    @property
    def restarts(self) -> int:
        return len(self.resumed_from)


MAX_EPOCHS_PER_STREAM = 32  # beyond this the loop simply starts another stream


def epochs_per_stream(max_steps: int, sequences_per_step: int, train_blocks: int) -> int:
    """How many epochs of the train split one Ray Data stream should hold so that a run of max_steps rarely
    needs a second stream: the epochs the steps consume, plus one for the rows each worker drops at the end
    (drop_last, uneven splits), capped at MAX_EPOCHS_PER_STREAM."""
    if train_blocks <= 0:
        raise DataError("the train split has no blocks")
    need = -(-max_steps * sequences_per_step // train_blocks)  # ceil
    return max(1, min(need + 1, MAX_EPOCHS_PER_STREAM))


def shard_reads(files: list[str], epochs: int, seed: int) -> list[dict]:
    """The reads of one train stream: every shard once per epoch, each epoch in its own shard order, and each
    read with its own seed for the order of the shard's rows. Reproducible from the seed."""
    rng = random.Random(seed)
    return [{"path": path, "seed": rng.getrandbits(63)} for _ in range(epochs) for path in rng.sample(files, len(files))]


def _read_shards(batch):
    """Ray Data map_batches: (shard path, seed) rows in, that shard's rows out in the seed's order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    shuffled = []
    for path, seed in zip(batch["path"].to_pylist(), batch["seed"].to_pylist(), strict=True):
        table = pq.read_table(path)
        shuffled.append(table.take(np.random.default_rng(seed).permutation(table.num_rows)))
    return pa.concat_tables(shuffled)


def _train_stream(split_dir: str, epochs: int, seed: int):
    """The train split as one Ray Data stream of `epochs` passes over its shards (shard_reads).

    One read task per shard, so the split is never loaded whole. Ray Data hands whole blocks (here: shards) to
    the workers as they ask, so a shard's two epochs can go to two workers at once: each read shuffles its
    shard's rows with its own seed (and each worker's local shuffle buffer has its own), so they do not train
    on the same batches. The data stage writes blocks in corpus order; the shuffles keep a step's batch from
    being one stretch of the corpus. One stream instead of one per epoch: a new iteration of a stream restarts
    Ray Data's executor, ~5 s per epoch on a busy 2-core machine."""
    reads = shard_reads(_shards(split_dir), epochs, seed)
    return ray.data.from_items(reads, override_num_blocks=len(reads)).map_batches(
        _read_shards, batch_size=1, batch_format="pyarrow", num_cpus=0.25)


def _check(cfg: RaygenConfig, stats: DataStats) -> None:
    tc = cfg.train  # batch/ZeRO consistency lives in TrainConfig's validator, shapes in build_hf_config
    per_step = tc.num_workers * tc.micro_batch_size
    if stats.num_train_blocks < per_step:
        raise TrainingError(f"{stats.num_train_blocks} train blocks cannot fill one micro-batch of {tc.num_workers} "
                            f"workers × micro_batch_size {tc.micro_batch_size}; add data or lower them")
    if stats.num_val_blocks < tc.num_workers:
        raise TrainingError(f"{stats.num_val_blocks} val blocks for {tc.num_workers} workers: every worker needs "
                            "one; raise features.val_fraction or add data")
    for split in ("train", "val"):
        if not _shards(stats.split_dir(split)):
            raise TrainingError(f"no Parquet shards in {stats.split_dir(split)}: run the data stage first "
                                "(raygen data, or pipelines/prepare_data.py)")
    tok = stats.features / "tokenizer" / "tokenizer.json"
    if not tok.is_file():
        raise TrainingError(f"tokenizer missing at {tok}: re-run the data stage")


def _shards(split_dir: str) -> list[str]:
    """The Parquet files of a split (a directory or a URI), sorted."""
    where = Location(split_dir)
    return [str(where / rel) for rel, _ in where.files() if rel.endswith(".parquet")]


def _check_run(cfg: RaygenConfig, run_name: str, fingerprint: str, dataset_version: str) -> bool:
    """Write raygen_run.json for a new run; for an existing one check it can be resumed. True: resuming."""
    meta_path = Location(cfg.train.storage_path) / run_name / "raygen_run.json"
    meta = {"model": json.loads(fingerprint), "dataset_version": dataset_version}
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old["model"] != meta["model"]:
            raise ConfigError(f"train.run_name {run_name!r} exists in {cfg.train.storage_path} with another model "
                              f"({old['model']} vs now {meta['model']}): resuming it cannot load the checkpoint. "
                              "Pick a new train.run_name, or set train.resume=false for a fresh run")
        if old["dataset_version"] != dataset_version:
            print(f"[raygen train] note: resuming {run_name} on dataset {dataset_version} (it started on "
                  f"{old['dataset_version']})", flush=True)
        return True
    meta_path.write_text(json.dumps(meta, indent=1))
    return False


def prepare(cfg: RaygenConfig):
    """Everything that can fail before a worker starts: data, tokenizer, shapes, batch arithmetic.
    Returns (data stats, the transformers config, what each worker gets)."""
    from transformers import AutoTokenizer

    from raygen.train.model import build_hf_config

    stats = load_stats(cfg.data.output_dir)
    _check(cfg, stats)
    tok = AutoTokenizer.from_pretrained(stats.tokenizer_dir())
    hf = build_hf_config(cfg.model, len(tok), stats.block_size, tok.eos_token_id, tok.pad_token_id)
    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= cfg.train.num_workers
    worker = WorkerConfig(train=cfg.train, hf_config=hf.to_dict(), pretrained=cfg.model.pretrained,
                          use_gpu=use_gpu, block_size=stats.block_size)
    return stats, hf, worker


def train(cfg: RaygenConfig, callbacks: list | None = None, run_name: str | None = None) -> TrainOutcome:
    """Train (or resume) cfg.train.run_name; callbacks go to Ray Train (Tune's reporter, for one)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from raygen.train.loop import train_loop_per_worker
    from raygen.train.model import config_fingerprint, describe

    t0 = time.time()
    stats, hf_config, worker = prepare(cfg)
    tc = cfg.train
    run_name = run_name or (tc.run_name if tc.resume else f"{tc.run_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    resuming = _check_run(cfg, run_name, config_fingerprint(hf_config), stats.dataset_version)

    ray.data.DataContext.get_current().enable_progress_bars = False  # rank 0 prints a progress line
    # Reading packed token shards is light: a quarter CPU per read task keeps them schedulable beside the
    # workers' reservation (and beside a Tune trial's), where a whole CPU may not be free.
    epochs = epochs_per_stream(tc.max_steps, tc.num_workers * tc.micro_batch_size * tc.accum_steps,
                               stats.num_train_blocks)
    datasets = {"train": _train_stream(stats.split_dir("train"), epochs, tc.seed),
                "val": ray.data.read_parquet(stats.split_dir("val"), num_cpus=0.25)}
    use_gpu = worker.use_gpu
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=worker.model_dump(),  # re-validated as a WorkerConfig on arrival
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": tc.cpus_per_worker},
                                     placement_strategy=tc.placement_strategy,
                                     label_selector=tc.label_selector or None),
        run_config=RunConfig(
            name=run_name, storage_path=tc.storage_path, callbacks=callbacks,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=tc.keep_checkpoints, checkpoint_score_attribute="val_loss",
                                               checkpoint_score_order="min")),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        datasets=datasets,
    )
    print(f"[raygen train] {'resuming' if resuming else 'run'} {run_name}: {describe(hf_config)}"
          f"{' from ' + cfg.model.pretrained if cfg.model.pretrained else ''}, {tc.num_workers} workers"
          f"{' (GPU)' if use_gpu else ''}, ZeRO-{tc.zero_stage}, {tc.max_steps} steps, data {stats.dataset_version}",
          flush=True)
    t_fit = time.time()
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray wraps worker errors; keep the cause, say where to look
        raise TrainingError(f"training run {run_name} failed: {exc}") from exc
    if result.checkpoint is None:
        raise TrainingError(f"training run {run_name} finished without a checkpoint")
    ckpt = result.checkpoint.path
    if not Path(ckpt, "hf").is_dir():  # remote storage: bring the final checkpoint here
        ckpt = result.checkpoint.to_directory()
    meta = json.loads(Path(ckpt, "history.json").read_text())
    record_spans(cfg.observability, "raygen-train", "train.run", t0, time.time(), [("train.fit", t_fit, time.time())],
                 {"raygen.run": run_name, "raygen.zero_stage": tc.zero_stage, "raygen.workers": tc.num_workers,
                  "raygen.steps": tc.max_steps, "raygen.dataset_version": stats.dataset_version,
                  "raygen.val_loss": result.metrics.get("val_loss"), "raygen.restarts": len(meta["resumed_from"])})
    return TrainOutcome(metrics=dict(result.metrics), checkpoint_dir=ckpt, hf_dir=str(Path(ckpt, "hf")),
                        tokenizer_dir=str(stats.tokenizer_dir()), data=stats, seconds=time.time() - t0,
                        run_name=run_name, history=meta["history"], resumed_from=meta["resumed_from"])
