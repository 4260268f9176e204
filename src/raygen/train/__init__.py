"""Model development: build a causal LM, train it with Ray Train + DeepSpeed ZeRO, tune it, export it.

Names are imported on first use.
"""

from raygen._lazy import exports

__all__, __getattr__, __dir__ = exports(__name__, {
    "ModelConfig": "raygen.train.config",
    "TrainConfig": "raygen.train.config",
    "TuneSettings": "raygen.train.config",
    "TrainOutcome": "raygen.train.trainer",
    "train": "raygen.train.trainer",
    "tune_run": "raygen.train.tune",
    "build_hf_config": "raygen.train.model",
    "describe": "raygen.train.model",
    "flops_per_token": "raygen.train.flops",
    "measure_matmul_peak": "raygen.train.flops",
    "hardware": "raygen.train.report",
    "loss_curve_png": "raygen.train.report",
    "model_card_md": "raygen.train.report",
    "lr_factor": "raygen.train.schedule",
    "TrainingError": "raygen.errors",
})
