"""Ray Tune over raygen training runs on the shared local Ray: 4 tiny trials, ASHA stops the hopeless ones
early, the best finished trial lands in the registry with a results table and a val-loss plot."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_four_trials_asha_stops_one_early_and_the_best_is_exported(trained, tiny_config, tmp_path):
    from raygen.config import validate_config
    from raygen.registry import Registry
    from raygen.train.tune import tune_run

    raw = tiny_config.model_dump()
    # One worker a trial, one trial at a time: what is tested is Tune over training runs, not the runs' data
    # parallelism (test_train.py); half the processes to start per trial, and two concurrent trials on 2 cores
    # only slowed each other down.
    raw["train"] |= {"max_steps": 10, "eval_every": 5, "log_every": 5, "warmup_steps": 2, "precision": "fp32",
                     "num_workers": 1, "storage_path": str(tmp_path / "runs")}
    raw["registry"] |= {"root": str(tmp_path / "models"), "name": "tuned"}
    # Two learning rates that learn and two that barely move: at the one rung (step 5; ASHA's max_t is 10) a
    # slow one trails what has reported there, and ASHA (keep the best half) stops it.
    raw["tune"] = {"name": "t", "search": "grid", "space": {"train.lr": {"grid": [8e-3, 5e-3, 1e-5, 2e-5]}},
                   "asha": {"grace_evals": 1, "reduction_factor": 2}, "max_concurrent_trials": 1}
    cfg = validate_config(raw, "test")
    out = tune_run(cfg)
    rows = {r["train.lr"]: r for r in out["table"]}
    assert set(rows) == {8e-3, 5e-3, 1e-5, 2e-5}
    stopped = [lr for lr, r in rows.items() if r["status"] == "stopped early"]
    assert set(stopped) & {1e-5, 2e-5}, out["table"]  # a good one may stop at a later rung too
    assert out["best"]["train.lr"] in (8e-3, 5e-3) and out["best"]["status"] == "finished"
    assert out["best"]["val_loss"] == min(r["val_loss"] for r in out["table"] if r["status"] == "finished")
    # Table and plot on disk; the best model in the registry with its card.
    with open(Path(out["dir"], "results.csv")) as f:
        assert len(list(csv.DictReader(f))) == 4
    assert Path(out["dir"], "val_loss.png").read_bytes()[:4] == b"\x89PNG"
    reg = Registry(cfg.registry.root)
    assert out["version"] == "v1" and reg.versions("tuned") == ["v1"]
    card = json.loads((Path(cfg.registry.root, "tuned", "v1", "raygen.json")).read_text())
    assert card["train_config"]["lr"] == out["best"]["train.lr"]
    assert abs(card["metrics"]["val_loss"] - out["best"]["val_loss"]) < 1e-9
