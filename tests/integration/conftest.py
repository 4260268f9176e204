"""Integration tests share one local Ray: a `ray start --head` cluster (so `ray job submit` has a target),
joined by the test process. Started on first use, stopped at the end of the session."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# `ray start` turns on token auth (token in ~/.ray/auth_token); clients must say so, and Ray reads this
# once at import, so it is set before any test module imports ray.
os.environ["RAY_AUTH_MODE"] = "token"

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def chat_page(url: str):
    """The server's chat page in headless chromium (skips the test where chromium is not installed; CI installs
    it), its model list loaded; yields playwright's page."""
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        pytest.skip("no chromium here: install Debian's `chromium` (CI installs it) to run the UI test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            yield page
        finally:
            browser.close()


def send_and_wait(page) -> str:
    """Click Send and wait for the reply to end; the status line it ended with."""
    page.click("#send")
    page.wait_for_function("/^(finish|error)/.test(document.querySelector('#status').textContent)", timeout=60_000)
    return page.text_content("#status")


def registered_checkpoint(run_dir) -> str | None:
    """The latest checkpoint Ray Train's controller has registered (what a restart resumes from), read from the
    snapshot it writes into the run directory (a path or URI) on every registration. A checkpoint directory is
    not enough: the controller collects reports when it polls the workers (every 2 s), so a worker killed after
    writing checkpoints but before a poll restarts from scratch (what CI once saw: killed at step 20, no resume)."""
    from raygen.errors import StorageError
    from raygen.storage import Location

    try:
        snapshot = json.loads((Location(run_dir) / "checkpoint_manager_snapshot.json").read_text())
    except (StorageError, OSError, ValueError):  # not written yet, or caught mid-write on a local disk
        return None
    return (snapshot.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")


@pytest.fixture(scope="session")
def s3():
    """s3://raygen on an S3-compatible server on 127.0.0.1 (moto), up before Ray so that every Ray worker
    finds it through the AWS_* environment."""
    from tests.s3server import s3_server

    with s3_server("raygen"):
        yield "s3://raygen"


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, s3):
    """{'address', 'dashboard'}: a 2-CPU head node on loopback, shared by every integration test."""
    import ray

    port, dash = free_port(), free_port()
    from raygen.cluster import serve_env

    env = serve_env({**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{port}"
    # A machine that never ran Ray has no token: create ~/.ray/auth_token (only if none exists), as Ray says to.
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], check=True, env=env, capture_output=True,
                   timeout=60)
    # RAY_ADDRESS in the nodes' environment: their processes find this cluster, not the latest one on the host
    # (Ray's helpers, e.g. Train's placement group cleaner, look the cluster up; test_multinode runs a second
    # cluster for a while).
    subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus=2", f"--port={port}",
                    "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dash}", "--disable-usage-stats"],
                   check=True, env={**env, "RAY_ADDRESS": address}, capture_output=True, timeout=180)
    # This process too: Ray's state API (list_actors...) looks the cluster up by RAY_ADDRESS, else takes the
    # host's latest one, which may be another cluster's.
    os.environ["RAY_ADDRESS"] = address
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


DOC = ("A user document about Ray Serve deployments explains how replicas scale with the traffic they see. "
       "When the queue of ongoing requests grows, the autoscaler adds replicas, and when the load falls it "
       "removes them again after a delay. Each replica holds one copy of the model in memory, so the number "
       "of replicas is bounded by the memory of the cluster and by the budget of the team that runs it.")
NOTES = ("# Notes on training\n\nDeepSpeed shards the optimizer state across the workers with ZeRO stage two, "
         "and the gradients too. The learning rate warms up over the first steps and then decays along a "
         "cosine curve. We log the loss of every step and evaluate on the held-out split at the end of an "
         "epoch, which tells us whether the model is still improving or has begun to overfit the data.\n")
GZ = ("Compressed files are read as they are stored and opened by their suffix, so a gzip archive of lines "
      "costs no more than the plain file. Each line holds one record with a text field, and every record keeps "
      "the line it came from, which makes the quarantine file useful when a line cannot be parsed at all.")
PAGE = ("<html><head><title>Guide</title><script>var tracking = 1;</script></head><body><nav>Home | About</nav>"
        "<p>The guide describes how a data pipeline reads files from many sources and writes clean shards. "
        "Every document keeps its source and its offset, so that any line of the output can be traced back "
        "to the file it came from, and the counts of every stage add up to the number of records read.</p>"
        "<footer>Copyright 2026. All rights reserved.</footer></body></html>")


def plant(extra: Path) -> dict[str, int]:
    """The planted corpus: good documents in every format, plus one bad record of each kind; returns the
    drop reasons the data stage must book for it."""
    import gzip

    near = DOC.replace("budget", "money")  # shingle Jaccard ~0.85
    (extra / "docs.jsonl").write_text("\n".join([
        json.dumps({"text": DOC}), json.dumps({"text": DOC}),  # an exact duplicate
        json.dumps({"text": near}),  # a near duplicate
        "{broken", '{"body": "x"}', '{"text": "tiny"}']) + "\n")
    (extra / "notes.md").write_text(NOTES)
    (extra / "page.html").write_text(PAGE)
    (extra / "more.jsonl.gz").write_bytes(gzip.compress(json.dumps({"text": GZ}).encode()))
    (extra / "table.csv").write_text('id,body\n1,"' + NOTES.replace("Notes", "More notes") + '"\n')
    (extra / "bad.txt").write_bytes(b"\xff\xfe\x00 not utf-8 \x81\x82")
    (extra / "empty.txt").write_text("")
    return {"bad_json": 1, "no_text_field": 2, "too_short": 1, "duplicate": 1, "near_duplicate": 1,
            "undecodable": 1, "empty_file": 1}  # at least these


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory):
    from raygen.config import load_config

    home = tmp_path_factory.mktemp("raygen_home")
    extra = home / "extra"
    extra.mkdir()
    plant(extra)
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
