"""Integration tests share one local Ray: a `ray start --head` cluster (so `ray job submit` has a target),
joined by the test process. Started on first use, stopped at the end of the session."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# `ray start` turns on token auth (token in ~/.ray/auth_token); clients must say so, and Ray reads this
# once at import, so it is set before any test module imports ray.
os.environ["RAY_AUTH_MODE"] = "token"

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """{'address', 'dashboard'}: a 2-CPU head node on loopback, shared by every integration test."""
    import ray

    port, dash = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus=2", f"--port={port}",
                    "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    address = f"127.0.0.1:{port}"
    try:
        ray.init(address=address)
        yield {"address": address, "dashboard": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:
            pass
        ray.shutdown()
        subprocess.run([str(BIN / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


TINY = [
    "features.vocab_size=512", "features.block_size=64", "features.val_fraction=0.2",
    "model.n_layer=2", "model.n_embd=64", "model.n_head=2",
    "train.max_steps=25", "train.micro_batch_size=8", "train.lr=0.005", "train.warmup_steps=3",
    "train.log_every=5", "serve.max_tokens_limit=48",
]


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from raygen.config import load_config

    home = tmp_path_factory.mktemp("raygen_home")
    extra = home / "extra"
    extra.mkdir()
    # Planted records: a bad JSON line, a row without text, a too-short doc and an exact duplicate.
    doc = "A user document about Ray Serve deployments and how replicas scale. " * 5
    (extra / "docs.jsonl").write_text(
        "\n".join([json.dumps({"text": doc}), json.dumps({"text": doc}), "{broken", '{"body": "x"}',
                   '{"text": "tiny"}']) + "\n")
    (extra / "notes.md").write_text("# Notes\n\n" + "Markdown notes on training with DeepSpeed. " * 10)
    return load_config(None, TINY + [f"data.output_dir={home}/data", f"data.paths=[{extra}]",
                                     f"train.storage_path={home}/runs", f"registry.root={home}/models",
                                     f"serve.port={free_port()}"])


@pytest.fixture(scope="session")
def trained(ray_cluster, tiny_config):
    """Data → train → registry once per session: (DataStats, TrainOutcome, version)."""
    from raygen.data.pipeline import prepare_data
    from raygen.train.trainer import train
    from raygen.workflow import register

    stats = prepare_data(tiny_config)
    outcome = train(tiny_config)
    version = register(tiny_config, outcome)
    return stats, outcome, version
