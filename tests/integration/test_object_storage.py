"""The whole lifecycle on object storage: S3 (moto's server on 127.0.0.1), nothing shared on local disk.
Data from s3:// curated into s3://, a training run whose Ray Train storage is s3:// resumes after a worker
is killed, and its export lands in a registry on s3:// (the serving side is covered by test_resilience.py,
whose replicas load their model from an S3 registry)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import pytest

from tests.integration.conftest import plant

pytestmark = pytest.mark.integration


def _cfg(tiny_config, **sections):
    from raygen.config import validate_config

    raw = tiny_config.model_dump()
    for key, value in sections.items():
        section, name = key.split("__")
        raw[section][name] = value
    return validate_config(raw, "test")


def _kill_a_worker_after_two_checkpoints(run_dir, killed: list[int]) -> None:
    from ray.util.state import list_actors

    deadline = time.time() + 300
    while time.time() < deadline and sum(p.name.startswith("checkpoint_step") for p in run_dir.iterdir()) < 2:
        time.sleep(0.2)
    workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)
               if "RayTrainWorker" in (a.class_name or "")]
    if workers:
        os.kill(workers[0].pid, signal.SIGKILL)
        killed.append(workers[0].pid)


def test_data_training_and_registry_in_s3_with_a_killed_worker(trained, tiny_config, s3, tmp_path):
    from transformers import AutoModelForCausalLM

    from raygen.data.pipeline import load_stats, prepare_data
    from raygen.registry import Registry
    from raygen.storage import Location
    from raygen.train.trainer import train
    from raygen.workflow import register

    local_stats = trained[0]
    base = Location(f"{s3}/lifecycle-{uuid.uuid4().hex[:8]}")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    plant(corpus)
    (base / "corpus").upload(corpus)
    cfg = _cfg(tiny_config, data__paths=[str(base / "corpus")], data__output_dir=str(base / "data"),
               train__storage_path=str(base / "runs"), registry__root=str(base / "models"),
               train__max_steps=30, train__eval_every=5, train__log_every=1, train__run_name="s3run",
               train__max_failures=2, train__precision="fp32")

    # Data: the same documents as the local run of the same corpus, everything written to S3.
    stats = prepare_data(cfg)
    assert stats.num_documents == local_stats.num_documents and stats.dropped == local_stats.dropped
    assert stats.features_dir.startswith(str(base / "data" / "features"))
    written = {rel.split("/")[0] for rel, _ in (base / "data").files()}
    assert {"docs", "manifest", "quarantine", "features", "stats.json", "runs.json", "card.json",
            "card.md", "card_lengths.png"} <= written, written
    assert load_stats(str(base / "data")).dataset_version == stats.dataset_version

    # Training: checkpoints in S3; a killed worker's replacement restores the last one from there.
    killed: list[int] = []
    t = threading.Thread(target=_kill_a_worker_after_two_checkpoints, args=(base / "runs" / "s3run", killed),
                         daemon=True)
    t.start()
    outcome = train(cfg)
    t.join(timeout=10)
    assert killed, "no training worker was found to kill"
    assert outcome.restarts >= 1 and outcome.metrics["step"] == 30
    steps = [h["step"] for h in outcome.history if "loss" in h]
    assert steps == list(range(1, 31)), steps
    resumed_at = outcome.resumed_from[0]
    assert resumed_at % 5 == 0 and 5 <= resumed_at < 30
    assert (base / "runs" / "s3run" / "raygen_run.json").is_file()

    # Registry: the version lives in S3 and loads, through the cache, with plain transformers.
    version = register(cfg, outcome)
    reg = Registry(cfg.registry.root)
    assert reg.versions(cfg.registry.name) == [version] and reg.aliases(cfg.registry.name) == {"latest": version}
    card = reg.card(cfg.registry.name)
    assert card["dataset_version"] == stats.dataset_version and card["restarts"] == outcome.restarts
    model = AutoModelForCausalLM.from_pretrained(reg.local_dir(cfg.registry.name, "latest"))
    assert model.config.n_layer == cfg.model.n_layer
    assert json.loads((base / "models" / cfg.registry.name / version / "raygen.json").read_text())["version"] \
        == version
