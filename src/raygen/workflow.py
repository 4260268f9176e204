"""The stages chained: data → train → register → serve → smoke. The demo and the tests run this."""

from __future__ import annotations

import json
import math
import time
import urllib.request
from pathlib import Path

from raygen.config import RaygenConfig
from raygen.registry import Registry
from raygen.train.trainer import TrainOutcome


def register(cfg: RaygenConfig, outcome: TrainOutcome, name: str | None = None) -> str:
    """Export the trained model (consolidated safetensors, tokenizer, generation config) as the next
    registry version, with its card (raygen.json and README.md) and loss curve."""
    from transformers import AutoConfig, GenerationConfig

    from raygen.train.model import describe
    from raygen.train.report import hardware, loss_curve_png, model_card_md

    name = name or cfg.registry.name
    m = outcome.metrics
    hf_config = AutoConfig.from_pretrained(outcome.hf_dir)
    if not Path(outcome.hf_dir, "generation_config.json").is_file():
        GenerationConfig.from_model_config(hf_config).save_pretrained(outcome.hf_dir)
    with open(Path(outcome.hf_dir, "model.safetensors"), "rb") as f:  # header only: parameter count
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    params = sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    card = {
        "architecture": describe(hf_config), "parameters": params,
        "dataset_version": outcome.data.dataset_version, "run_name": outcome.run_name,
        "checkpoint": outcome.checkpoint_dir,
        "metrics": {k: m.get(k) for k in ("step", "loss", "val_loss", "val_ppl", "tokens_per_s", "mfu",
                                          "precision")},
        "train_config": cfg.train.model_dump(), "model_config": cfg.model.model_dump(),
        "hardware": hardware(), "wall_seconds": round(outcome.seconds, 1), "restarts": outcome.restarts,
        "history": outcome.history,
    }
    extras = {"README.md": model_card_md({"name": name, **card}),
              "loss_curve.png": loss_curve_png(outcome.history, f"{name}: {card['architecture']}")}
    version = Registry(cfg.registry.root).register(name, outcome.hf_dir, outcome.tokenizer_dir, card, extras)
    print(f"[raygen registry] {name}/{version} → {cfg.registry.root}/{name}/{version} (alias latest)", flush=True)
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
