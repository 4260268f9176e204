"""Model development's config: the model to build, the training run, the hyperparameter search, and what
each Ray Train worker receives (`model:`, `train:`, `tune:` in YAML)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from raygen._config_base import ConfigModel


class ModelConfig(ConfigModel):
    """The architecture (raygen/train/model.py): a preset, explicit sizes, a config file, or a pretrained
    directory to fine-tune. Sizes set here override the preset's."""

    preset: str | None = Field(None, description="Named size: gpt2-tiny/-mini/-bench/-small/-medium/-large, "
                                                 "llama-tiny/-mini/-160m/-400m/-1b (see raygen/train/model.py).")
    family: Literal["gpt2", "llama"] = Field("gpt2", description="transformers architecture family.")
    n_layer: int = Field(4, ge=1, description="Transformer blocks.")
    n_embd: int = Field(256, ge=8, description="Hidden size.")
    n_head: int = Field(4, ge=1, description="Attention heads; must divide n_embd.")
    n_kv_head: int | None = Field(None, ge=1, description="Llama: key/value heads (grouped-query); unset: n_head.")
    intermediate_size: int | None = Field(None, ge=1, description="MLP width; unset: 4x (GPT-2), ~8/3x (Llama).")
    rope_theta: float = Field(10000.0, gt=0, description="Llama: rotary base.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on attention, residual and embeddings.")
    config_file: str | None = Field(None, description="A Hugging Face config.json (or its directory) to train "
                                                      "from scratch; replaces the sizes above.")
    pretrained: str | None = Field(None, description="A local Hugging Face model directory to fine-tune.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.pretrained and self.config_file:
            raise ValueError("set model.pretrained (fine-tune) or model.config_file (from scratch), not both")
        if self.preset is None and self.n_embd % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide n_embd ({self.n_embd})")
        return self


class TrainConfig(ConfigModel):
    run_name: str = Field("demo", description="Ray Train run name; checkpoints go to storage_path/run_name. "
                                              "Re-running a name resumes it from its latest checkpoint.")
    resume: bool = Field(True, description="Resume a run of the same name; false: a fresh, timestamped run.")
    storage_path: str = Field("runs", description="Ray Train storage (a local path or a URI).")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (one process each; one GPU each on GPUs).")
    cpus_per_worker: float = Field(
        0.5, gt=0, description="CPUs each worker reserves; leave some free for Ray Data's read tasks.")
    torch_threads: int = Field(0, ge=0, description="torch threads per worker; 0: the node's cores ÷ workers.")
    use_gpu: bool | None = Field(None, description="None: use GPUs when the cluster has them.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How the workers' placement group spreads over nodes (Ray's strategies): "
                            "STRICT_SPREAD puts each worker on its own node.")
    label_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the workers need "
                                           "(`ray start --labels`), e.g. {raygen.io/pool: gpu}.")
    zero_stage: int = Field(2, description="DeepSpeed ZeRO stage: 0 (plain data parallel), 1, 2 or 3.")
    offload_optimizer: bool = Field(False, description="ZeRO-1/2/3: optimizer state and step on the CPU.")
    precision: Literal["auto", "fp32", "bf16", "bf16-autocast"] = Field(
        "auto", description="bf16: DeepSpeed's bf16 (bf16 weights, activations, gradients and communication; "
                            "fp32 master weights and optimizer state). bf16-autocast: torch autocast over fp32 "
                            "weights (fp32 gradients and communication). fp32. auto: bf16 on GPUs that support "
                            "it; on CPU, bf16 only when a measured bf16 matmul beats fp32 by 1.3x.")
    micro_batch_size: int = Field(16, ge=1, description="Sequences per worker per forward/backward.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step (ignored when "
                                                       "global_batch_size is set).")
    global_batch_size: int | None = Field(None, ge=1, description="Sequences per optimizer step; must be a "
                                                                  "multiple of num_workers × micro_batch_size.")
    max_steps: int = Field(150, ge=1, description="Optimizer steps.")
    lr: float = Field(2e-3, gt=0, description="Peak learning rate (AdamW).")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine schedule floor as a share of lr.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only; not biases, norms).")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient-norm clipping; 0 disables it.")
    seed: int = Field(0, description="Seeds model init, dropout and data order.")
    log_every: int = Field(10, ge=1, description="Print a progress line every N steps (rank 0).")
    eval_every: int = Field(50, ge=1, description="Val loss and perplexity every N steps (and at the end).")
    checkpoint_every: int | None = Field(None, ge=1, description="Checkpoint every N steps (a multiple of "
                                                                 "eval_every; unset: at every eval).")
    keep_checkpoints: int = Field(2, ge=1, description="Keep the best K checkpoints by val loss (the latest "
                                                       "is kept too, for resuming).")
    max_failures: int = Field(2, ge=0, description="Worker failures to recover from (from the last checkpoint).")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage {self.zero_stage} does not exist; DeepSpeed ZeRO has stages 0, 1, 2 "
                             "and 3")
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if self.global_batch_size is not None and self.global_batch_size % (self.num_workers * self.micro_batch_size):
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of num_workers × "
                             f"micro_batch_size = {self.num_workers} × {self.micro_batch_size}; pick a multiple "
                             f"of {self.num_workers * self.micro_batch_size}")
        if self.checkpoint_every is not None and self.checkpoint_every % self.eval_every:
            raise ValueError(f"checkpoint_every {self.checkpoint_every} must be a multiple of eval_every "
                             f"{self.eval_every}: checkpoints are ranked by val loss")
        return self

    @property
    def accum_steps(self) -> int:
        """Micro-batches per optimizer step on each worker."""
        if self.global_batch_size is None:
            return self.grad_accum_steps
        return self.global_batch_size // (self.num_workers * self.micro_batch_size)


class AshaSettings(ConfigModel):
    enabled: bool = Field(True, description="Stop trials early by val loss (asynchronous successive halving).")
    grace_evals: int = Field(1, ge=1, description="Evals (of train.eval_every steps) every trial gets first.")
    reduction_factor: int = Field(2, ge=2, description="Keep the best 1/factor of trials at each rung.")


class TuneSettings(ConfigModel):
    """Ray Tune over train/model fields (raygen/train/tune.py). Each trial is a full training run."""

    name: str = Field("tune", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Experiment name (a "
                                                                                    "timestamp is appended).")
    space: dict[str, Any] = Field(default_factory=dict, description="field -> value or {uniform|loguniform|"
                                  "randint: [lo, hi]} | {choice|grid: [...]}, fields as train.lr, model.preset.")
    search: Literal["random", "grid", "optuna", "auto"] = Field(
        "random", description="random (grid entries still expand), grid (every combination), optuna (needs "
                              "`pip install optuna`), auto (optuna when installed, else random).")
    num_samples: int = Field(4, ge=1, description="Samples (per grid point, for random search).")
    max_concurrent_trials: int = Field(0, ge=0, description="0: as many as the cluster fits (each trial takes "
                                                           "train.num_workers × cpus_per_worker CPUs, one CPU "
                                                           "kept for Ray Data; or num_workers GPUs).")
    asha: AshaSettings = Field(default_factory=AshaSettings)
    export_best: bool = Field(True, description="Register the best finished trial's model.")
    seed: int = Field(0, description="Seeds the search's sampling.")


class WorkerConfig(ConfigModel):
    """What every Ray Train worker receives (as its validated dict, re-validated on arrival)."""

    train: TrainConfig = Field(description="The run's settings.")
    hf_config: dict[str, Any] = Field(description="The transformers config to build (its to_dict()).")
    pretrained: str | None = Field(description="A local model directory to fine-tune instead of a random init.")
    use_gpu: bool = Field(description="Train on the workers' GPUs (resolved on the driver from the cluster).")
    block_size: int = Field(ge=1, description="Tokens per packed training sequence (the data's).")
