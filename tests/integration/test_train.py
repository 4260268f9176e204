"""Training at depth on the shared local Ray: ZeRO-2/3 against one worker, a killed worker resumed from its
checkpoint, the export reproducing the val loss, and bad configs refused before any worker starts.

The runs reuse the session's prepared data (the `trained` fixture) with a tiny GPT-2 (2 layers, 64 wide).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.integration.conftest import registered_checkpoint

pytestmark = pytest.mark.integration


def _cfg(tiny_config, tmp_path, *overrides):
    from raygen.config import validate_config

    raw = tiny_config.model_dump()
    for item in overrides:
        key, value = item.split("=", 1)
        section, name = key.split(".")
        import yaml

        raw[section][name] = yaml.safe_load(value)
    raw["train"]["storage_path"] = str(tmp_path / "runs")
    raw["registry"]["root"] = str(tmp_path / "models")
    return validate_config(raw, "test")


def _losses(outcome) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in outcome.history if "loss" in h}


def test_zero2_and_zero3_follow_the_single_worker_curve(trained, tiny_config, tmp_path):
    """Same global batch (16 sequences) and seed for 20 steps: 1 worker × 8 × 2 accumulation (plain data
    parallel, ZeRO-0) vs 2 workers × 8 under ZeRO-2 and ZeRO-3. The init is identical; the sequences in a
    step differ (Ray Data hands blocks to workers as they ask), so the curves match within data noise.
    Tolerance: each 5-step window's mean loss within 0.15 nats, the final val loss (same val set) within 0.08."""
    from raygen.train.trainer import train

    common = ["train.max_steps=20", "train.log_every=1", "train.eval_every=20", "train.global_batch_size=16",
              "train.micro_batch_size=8", "train.warmup_steps=2", "train.lr=0.003", "train.precision=fp32"]
    single = train(_cfg(tiny_config, tmp_path, *common, "train.num_workers=1", "train.zero_stage=0",
                        "train.cpus_per_worker=1", "train.run_name=single"))
    runs = {stage: train(_cfg(tiny_config, tmp_path, *common, "train.num_workers=2", f"train.zero_stage={stage}",
                              f"train.run_name=zero{stage}")) for stage in (2, 3)}
    ref = _losses(single)
    assert sorted(ref) == list(range(1, 21))
    assert ref[20] < ref[1] - 0.5  # it learned
    for stage, outcome in runs.items():
        got = _losses(outcome)
        assert sorted(got) == list(range(1, 21))
        assert abs(got[1] - ref[1]) < 0.05, (stage, got[1], ref[1])  # same init: step 1 differs only by data
        for lo in range(1, 21, 5):
            window = range(lo, lo + 5)
            mean_ref = sum(ref[s] for s in window) / 5
            mean_got = sum(got[s] for s in window) / 5
            assert abs(mean_got - mean_ref) < 0.15, (stage, lo, mean_got, mean_ref)
        assert abs(outcome.metrics["val_loss"] - single.metrics["val_loss"]) < 0.08, (stage, outcome.metrics)
        assert outcome.metrics["mfu"] > 0 and outcome.metrics["tokens_per_s"] > 0


def test_killed_worker_resumes_from_its_checkpoint_with_a_continuous_curve(trained, tiny_config, tmp_path):
    from ray.util.state import list_actors

    from raygen.train.trainer import train

    cfg = _cfg(tiny_config, tmp_path, "train.max_steps=60", "train.log_every=1", "train.eval_every=10",
               "train.run_name=faulty", "train.max_failures=2", "train.precision=fp32")
    run_dir = Path(cfg.train.storage_path, "faulty")
    killed: list[int] = []
    finished = threading.Event()

    def killer():
        # Kill once the controller has registered a checkpoint before the last; the steps run since it must
        # be redone.
        while registered_checkpoint(run_dir) in (None, "checkpoint_step000060"):
            if finished.wait(0.05):
                return
        workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
                   if "RayTrainWorker" in (a.class_name or "")]
        if workers:
            os.kill(workers[0].pid, signal.SIGKILL)
            killed.append(workers[0].pid)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        outcome = train(cfg)
    finally:
        finished.set()
    t.join(timeout=10)
    assert killed, "no training worker was killed: the run ended before a checkpoint was registered"
    assert outcome.restarts >= 1 and outcome.metrics["restarts"] >= 1
    assert outcome.metrics["step"] == 60
    losses = _losses(outcome)
    steps = [h["step"] for h in outcome.history if "loss" in h]
    assert steps == list(range(1, 61)), steps  # redone steps replace the lost ones; none twice
    resumed_at = outcome.resumed_from[0]
    assert resumed_at % 10 == 0 and 10 <= resumed_at < 60
    first, at_ckpt, after = losses[1], losses[resumed_at], losses[resumed_at + 1]
    assert at_ckpt < first - 0.5
    assert after < at_ckpt + 0.25 * (first - at_ckpt), (first, at_ckpt, after)  # no jump back to the start
    # Re-running the same name resumes the finished run: nothing left to train, the same final step.
    again = train(cfg)
    assert again.metrics["step"] == 60 and again.history[: len(outcome.history)] == outcome.history


def _exported_val_loss(model_dir, stats):
    """(the val split's loss, the dtype) of an exported model, loaded with plain transformers."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor(pq.read_table(stats.split_dir("val")).column("input_ids").to_pylist(), dtype=torch.long)
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()  # every row has T-1 predictions: mean = token mean
    return loss, model.dtype


def test_export_reproduces_the_training_val_loss_and_carries_its_card(trained, tiny_config):
    stats, outcome, version = trained
    d = Path(tiny_config.registry.root, tiny_config.registry.name, version)
    loss, _ = _exported_val_loss(d, stats)
    precision = outcome.metrics["precision"]
    # fp32: the same weights, summed in other batch shapes (the val split in micro-batches across workers vs. one
    # batch here), agree to ~2e-5 relative; a wrong export is off by 1e-2 or more. bf16 rounds the weights.
    tolerance = 1e-4 * outcome.metrics["val_loss"] if precision == "fp32" else 2e-2
    assert abs(loss - outcome.metrics["val_loss"]) < tolerance, (loss, outcome.metrics)
    card = json.loads((d / "raygen.json").read_text())
    assert card["dataset_version"] == stats.dataset_version
    assert card["metrics"]["val_loss"] == outcome.metrics["val_loss"] and card["wall_seconds"] > 0
    assert card["train_config"]["zero_stage"] == 2 and "CPUs" in card["hardware"]
    assert (d / "generation_config.json").is_file() and (d / "model.safetensors").is_file()
    assert (d / "loss_curve.png").read_bytes()[:4] == b"\x89PNG" and "dataset version" in (d / "README.md").read_text()


@pytest.mark.parametrize("stage", [0, 3])
def test_bf16_exports_the_fp32_master_weights(trained, tiny_config, tmp_path, stage):
    """DeepSpeed bf16 computes with bf16 copies; the export is the optimizer's fp32 masters (gathered from
    the ranks' partitions under ZeRO-3, from the unfused bf16 optimizer's copies under ZeRO-0): fp32 on
    disk and in the config, with bits a bf16 weight cannot hold, and it reproduces the bf16 val loss."""
    import torch
    from safetensors.torch import load_file

    from raygen.train.trainer import train

    stats = trained[0]
    outcome = train(_cfg(tiny_config, tmp_path, "train.max_steps=6", "train.log_every=2", "train.eval_every=6",
                         "train.precision=bf16", f"train.zero_stage={stage}", f"train.run_name=bf16z{stage}"))
    assert outcome.metrics["precision"] == "bf16"
    weights = load_file(Path(outcome.hf_dir, "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}
    matrices = [w for w in weights.values() if w.ndim == 2]
    assert all((w != w.bfloat16().float()).any() for w in matrices)  # not bf16 weights widened
    assert json.loads(Path(outcome.hf_dir, "config.json").read_text())["dtype"] == "float32"
    loss, dtype = _exported_val_loss(outcome.hf_dir, stats)
    assert dtype == torch.float32
    assert abs(loss - outcome.metrics["val_loss"]) < 2e-2, (loss, outcome.metrics)


def test_bad_configs_fail_before_any_worker_starts(trained, tiny_config, tmp_path):
    import shutil

    from transformers import GPT2Config

    from raygen.errors import ConfigError, TrainingError
    from raygen.train.trainer import train

    stats, _, _ = trained
    GPT2Config(vocab_size=64, n_positions=64, n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path / "small")
    no_shards = tmp_path / "no_shards"
    no_shards.mkdir()
    shutil.copy(Path(stats.output_dir, "stats.json"), no_shards)
    shutil.copytree(stats.tokenizer_dir(), no_shards / "tokenizer")
    raw = json.loads((no_shards / "stats.json").read_text())
    (no_shards / "stats.json").write_text(json.dumps(raw | {"output_dir": str(no_shards), "features_dir": ""}))
    cases = [
        ([f"model.pretrained={tmp_path / 'small'}"], ConfigError, "only 64 embeddings"),
        ([f"data.output_dir={no_shards}"], TrainingError, "no Parquet shards"),
        ([f"data.output_dir={tmp_path / 'nothing'}"], Exception, "run the data stage first"),
        (["train.micro_batch_size=100000"], TrainingError, "cannot fill one micro-batch"),
    ]
    for overrides, exc, message in cases:
        cfg = _cfg(tiny_config, tmp_path, *overrides, "train.run_name=bad")
        t = time.time()
        with pytest.raises(exc, match=message):
            train(cfg)
        assert time.time() - t < 20
        assert not Path(cfg.train.storage_path, "bad").exists()  # no run was started
