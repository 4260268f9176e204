"""Training's pure parts, no Ray: presets and shapes, config errors, FLOPs, the Tune space, the model card."""

from __future__ import annotations

import pytest

from raygen.config import load_config
from raygen.errors import ConfigError, DataError


def _params(hf_config) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: a 1B model costs no memory
        model = AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset,lo,hi", [("gpt2-small", 100e6, 130e6), ("gpt2-large", 0.7e9, 0.9e9),
                                          ("llama-tiny", 1e6, 12e6), ("llama-1b", 1.0e9, 1.4e9)])
def test_presets_build_their_family_at_their_size(preset, lo, hi):
    from raygen.train.model import build_hf_config

    cfg = load_config(None, [f"model.preset={preset}"])
    hf = build_hf_config(cfg.model, 32000, 1024, 0, 1)
    assert hf.model_type == preset.split("-")[0]
    assert lo < _params(hf) < hi


def test_explicit_sizes_win_over_the_preset_and_shapes_are_checked():
    from raygen.train.model import build_hf_config, resolved_sizes

    cfg = load_config(None, ["model.preset=llama-160m", "model.n_layer=3"])
    assert resolved_sizes(cfg.model) | {} == {"family": "llama", "n_layer": 3, "n_embd": 768, "n_head": 12,
                                              "n_kv_head": 4, "intermediate_size": None}
    hf = build_hf_config(cfg.model, 1000, 256, 0, 1)
    assert (hf.num_hidden_layers, hf.num_key_value_heads, hf.intermediate_size) == (3, 4, 2048)
    with pytest.raises(ConfigError, match="n_kv_head \\(5\\) must divide n_head \\(12\\)"):
        build_hf_config(load_config(None, ["model.preset=llama-160m", "model.n_kv_head=5"]).model, 1000, 256, 0, 1)
    with pytest.raises(ConfigError, match="preset 'gpt5' is unknown; presets: gpt2-tiny"):
        build_hf_config(load_config(None, ["model.preset=gpt5"]).model, 1000, 256, 0, 1)


@pytest.mark.parametrize("override,message", [
    ("train.zero_stage=5", "zero_stage 5 does not exist; DeepSpeed ZeRO has stages 0, 1, 2 and 3"),
    ("train.global_batch_size=20", "global_batch_size 20 is not a multiple of num_workers × micro_batch_size = 2 × 16"),
    ("train.checkpoint_every=30", "checkpoint_every 30 must be a multiple of eval_every 50"),
    ("train.offload_optimizer=true", "offload_optimizer needs zero_stage 1, 2 or 3"),
])
def test_bad_train_config_is_refused_with_the_reason(override, message):
    extra = ["train.zero_stage=0"] if "offload" in override else []
    with pytest.raises(ConfigError, match=message.replace("(", "\\(").replace(")", "\\)")):
        load_config(None, [override, *extra])


def test_global_batch_sets_accumulation():
    tc = load_config(None, ["train.global_batch_size=96", "train.micro_batch_size=8", "train.num_workers=2"]).train
    assert tc.accum_steps == 6
    assert load_config(None, ["train.grad_accum_steps=3"]).train.accum_steps == 3


def test_pretrained_model_must_cover_the_tokenizer(tmp_path):
    from transformers import GPT2Config

    from raygen.train.model import build_hf_config

    GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path)
    cfg = load_config(None, [f"model.pretrained={tmp_path}"])
    with pytest.raises(ConfigError, match="the tokenizer has 512 tokens but the model at .* only 64 embeddings"):
        build_hf_config(cfg.model, 512, 32, 0, 1)
    with pytest.raises(ConfigError, match="block_size 64 exceeds the model's context of 32"):
        build_hf_config(cfg.model, 64, 64, 0, 1)
    assert build_hf_config(cfg.model, 60, 32, 0, 1).vocab_size == 64


def test_flops_per_token_counts_matmul_params_and_attention():
    from transformers import AutoModelForCausalLM, GPT2Config

    from raygen.train.flops import flops_per_token, measure_matmul_peak

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    n = sum(p.numel() for p in model.parameters())  # tied lm_head counted once already
    no_pos = n - 16 * 32
    assert flops_per_token(model, 16) == 6 * no_pos + 12 * 2 * 32 * 16
    import torch

    assert measure_matmul_peak(torch.float32, "cpu", size=256, reps=1) > 1e8


def test_tune_space_is_checked_before_ray():
    from raygen.train.tune import apply, base_config, parse_space

    ok = parse_space({"train.lr": {"loguniform": [1e-4, 1e-2]}, "model.preset": {"grid": ["gpt2-tiny", "llama-tiny"]},
                      "train.zero_stage": 3}, "random")
    assert ok == {"train.lr": ("loguniform", [1e-4, 1e-2]), "model.preset": ("grid", ["gpt2-tiny", "llama-tiny"]),
                  "train.zero_stage": ("fixed", 3)}
    assert parse_space({"train.lr": {"choice": [1e-3, 2e-3]}}, "grid") == {"train.lr": ("grid", [1e-3, 2e-3])}
    for space, search, message in [
        ({"train.lrate": {"choice": [1]}}, "random", "train has no field 'lrate'"),
        ({"features.block_size": {"choice": [64]}}, "random", "data and features need a new data run"),
        ({"train.lr": {"normal": [0, 1]}}, "random", "must be a value or one of"),
        ({"train.lr": {"uniform": [1e-2, 1e-4]}}, "random", "low < high"),
        ({"train.lr": {"loguniform": [0, 1]}}, "random", "loguniform needs low > 0"),
        ({"train.lr": {"uniform": [1e-4, 1e-2]}}, "grid", "search 'grid' takes only grid/choice"),
        ({"model.preset": {"grid": ["a"]}}, "optuna", "optuna does not take grid"),
        ({"train.lr": 0.001}, "random", "nothing to search"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_space(space, search)
    base = base_config(load_config(None, ["model.n_layer=3"]))
    trial = apply(base, {"model.preset": "llama-tiny", "train.lr": 0.01})
    assert (trial.model.preset, trial.model.n_layer, trial.train.lr) == ("llama-tiny", 4, 0.01)  # preset unmasked


def test_tune_values_that_make_invalid_trials_fail_up_front():
    from raygen.train.tune import check_values, parse_space

    cfg = load_config(None)
    with pytest.raises(ConfigError, match="tune.space train.zero_stage = 4 makes an invalid trial"):
        check_values(cfg, parse_space({"train.zero_stage": {"choice": [2, 4]}}, "random"))
    with pytest.raises(ConfigError, match="model.preset = 'huge' makes an invalid trial"):
        check_values(cfg, parse_space({"model.preset": {"grid": ["gpt2-tiny", "huge"]}}, "random"))


def test_model_card_and_loss_curve():
    from raygen.train.report import hardware, loss_curve_png, model_card_md

    history = [{"step": s, "loss": 5 - s / 10} for s in range(1, 11)] + [{"step": 10, "val_loss": 4.2}]
    png = loss_curve_png(history, "m")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = model_card_md({"name": "m", "version": "v2", "architecture": "gpt2 2L×64 2h", "dataset_version": "abc",
                        "hardware": hardware(), "wall_seconds": 12.5, "metrics": {"val_loss": 4.2, "step": 10}})
    assert "# m v2" in md and "| dataset version | abc |" in md and "| val loss | 4.2 |" in md
    assert "CPUs" in hardware()


def test_train_stream_holds_the_epochs_a_run_needs_in_seeded_shard_orders():
    from raygen.train.trainer import MAX_EPOCHS_PER_STREAM, epochs_per_stream, shard_reads

    # 40 steps × 16 sequences over 359 blocks: 640 rows = 2 epochs, plus one for the dropped tails.
    assert epochs_per_stream(40, 16, 359) == 3
    assert epochs_per_stream(1, 16, 10_000) == 2  # a large split: one epoch and the spare
    assert epochs_per_stream(10**6, 16, 359) == MAX_EPOCHS_PER_STREAM  # the loop starts another stream after
    with pytest.raises(DataError, match="no blocks"):
        epochs_per_stream(10, 16, 0)

    files = [f"s{i}.parquet" for i in range(5)]
    reads = shard_reads(files, 3, seed=0)
    epochs = [[r["path"] for r in reads[i:i + 5]] for i in range(0, 15, 5)]
    assert all(sorted(e) == files for e in epochs)  # every shard once per epoch
    assert len({tuple(e) for e in epochs}) > 1  # not the same order every epoch
    assert len({r["seed"] for r in reads}) == 15  # every read orders its shard's rows its own way
    assert shard_reads(files, 3, seed=0) == reads and shard_reads(files, 3, seed=1) != reads


def test_a_shard_read_returns_every_row_once_in_its_seeds_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raygen.train.trainer import _read_shards

    pq.write_table(pa.table({"input_ids": [[i, i] for i in range(50)]}), tmp_path / "a.parquet")
    batch = pa.table({"path": [str(tmp_path / "a.parquet")], "seed": [7]})
    rows = [r[0] for r in _read_shards(batch).column("input_ids").to_pylist()]
    assert sorted(rows) == list(range(50)) and rows != list(range(50))
    assert rows == [r[0] for r in _read_shards(batch).column("input_ids").to_pylist()]
