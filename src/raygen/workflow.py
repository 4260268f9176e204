"""The stages chained: data → train → register → serve → smoke. The demo and the tests run this."""

from __future__ import annotations

import json
import platform
import time
import urllib.request

from raygen.config import RaygenConfig
from raygen.registry import Registry
from raygen.train.trainer import TrainOutcome


def register(cfg: RaygenConfig, outcome: TrainOutcome) -> str:
    """Export the trained model (consolidated safetensors + tokenizer) as the next registry version."""
    m = outcome.metrics
    card = {
        "dataset_version": outcome.data.dataset_version,
        "checkpoint": outcome.checkpoint_dir,
        "metrics": {k: m.get(k) for k in ("step", "first_loss", "loss", "val_loss", "val_ppl")},
        "train_config": cfg.train.model_dump(), "model_config": cfg.model.model_dump(),
        "hardware": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "wall_seconds": round(outcome.seconds, 1),
    }
    version = Registry(cfg.registry.root).register(cfg.registry.name, outcome.hf_dir, outcome.tokenizer_dir, card)
    print(f"[raygen registry] {cfg.registry.name}/{version} → {cfg.registry.root}/{cfg.registry.name}/{version} "
          "(alias latest)", flush=True)
    return version


def complete(url: str, prompt: str, max_tokens: int = 32, timeout: float = 120, **params) -> dict:
    """POST /v1/completions with the standard library (no client needed)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, **params}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_ready(url: str, timeout: float = 120) -> None:
    """Until /ready says a model replica answers (no API key needed for it)."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=15) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.time() > deadline:
                raise
        time.sleep(0.5)


def curl_line(url: str, prompt: str) -> str:
    body = json.dumps({"prompt": prompt, "max_tokens": 48, "temperature": 0.8, "stream": True})
    return f"curl -N {url}/v1/completions -H 'Content-Type: application/json' -d '{body}'"
