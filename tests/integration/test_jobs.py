"""Ray jobs and data-stage errors on the shared local Ray. Runs after test_integration.py has shut its
Serve app down, so the 2 CPUs are free for Ray Data tasks."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.integration.conftest import BIN, REPO

pytestmark = pytest.mark.integration


def test_ray_job_submit_prepare_data(ray_cluster, tmp_path):
    cfg = tmp_path / "job.yaml"
    # What is tested is the job (working dir, runtime env, the pipeline script on the cluster), not the
    # stages: the dedup stages (a minute of Ray Data shuffles on the built-in corpus; tested with the
    # session's data run) are left out.
    cfg.write_text("data:\n  output_dir: jobdata\n  stages: [normalize, html, boilerplate, quality, language, pii]\n"
                   "features:\n  vocab_size: 400\n  block_size: 32\n")
    env_json = json.dumps({"env_vars": {"RAYGEN_HOME": str(tmp_path)}})
    out = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", ray_cluster["dashboard"],
         "--working-dir", str(REPO), "--runtime-env-json", env_json, "--",
         "python", "pipelines/prepare_data.py", "--config", str(cfg)],
        capture_output=True, text=True, timeout=600, env=ray_cluster["env"], cwd=REPO)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in out.stdout
    stats = json.loads((tmp_path / "jobdata" / "stats.json").read_text())
    assert stats["num_documents"] > 50 and stats["block_size"] == 32


def test_empty_corpus_is_a_clear_error(ray_cluster, tmp_path):
    from raygen.config import load_config
    from raygen.data.pipeline import prepare_data
    from raygen.errors import DataError

    (tmp_path / "short.txt").write_text("too short")
    cfg = load_config(None, ["data.builtin=false", f"data.paths=[{tmp_path}]", f"data.output_dir={tmp_path}/out"])
    with pytest.raises(DataError, match="empty after curation.*too_short"):
        prepare_data(cfg)


def test_demo_command_end_to_end(ray_cluster, tmp_path):
    """`raygen demo --smoke` as a user runs it, joining the shared cluster through RAY_ADDRESS."""
    from tests.integration.conftest import TINY, free_port

    env = {**ray_cluster["env"], "RAY_ADDRESS": ray_cluster["address"], "RAYGEN_HOME": str(tmp_path)}
    cmd = [str(BIN / "raygen"), "demo", "--smoke", "--port", str(free_port())]
    # Without the dedup stages (a minute of Ray Data shuffles on the built-in corpus; the session's data run
    # tests them): this is about the command, its seven stages and its quiet output.
    stages = "data.stages=[normalize,html,boilerplate,quality,language,pii]"
    for item in TINY + ["train.max_steps=10", stages]:
        cmd += ["--set", item]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    for stage in ("1-3/7", "4/7", "5/7", "6/7", "7/7"):
        assert f"=== {stage}" in log
    assert "[raygen] completion:" in log and "'completion_tokens'" in log
    assert (tmp_path / "models" / "demo" / "latest" / "model.safetensors").is_file()
    # Quiet: raygen's lines only; Ray's own logs and the full config went to files the last line names.
    [run_dir] = (tmp_path / "runs").glob("demo-*")
    assert len(log.splitlines()) < 80, log
    assert "(RayTrainWorker" not in log and "[raygen train] step 10/10" in log  # workers' progress, unprefixed
    assert f"Ray's logs: {run_dir / 'ray.log'}" in log and (run_dir / "ray.log").stat().st_size > 1000
    from raygen.config import load_config

    assert load_config(run_dir / "config.yaml").train.max_steps == 10


def test_cli_reports_bad_input_without_traceback(tmp_path):
    raygen = str(BIN / "raygen")
    env = {"RAYGEN_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    bad = subprocess.run([raygen, "demo", "--set", "train.zero_stage=5"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert bad.returncode == 2 and "train.zero_stage" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run([raygen, "serve", "--set", "serve.version=v9"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode == 2 and "no model named 'demo'" in missing.stderr
