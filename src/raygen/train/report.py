"""What a finished run leaves for people: the model card (JSON fields and a README), loss-curve PNGs,
the hardware line. No Ray, no torch (matplotlib for the plots)."""

from __future__ import annotations

import io
import math
import os
import platform


def hardware() -> str:
    """'x86_64, 2 CPUs (Intel ...)' plus GPUs when torch sees any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    out = f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu})"
    try:
        import torch

        if torch.cuda.is_available():
            out += f", {torch.cuda.device_count()}× {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return out


def _fig():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve_png(history: list[dict], title: str) -> bytes:
    """Train loss per logged step and val loss per eval, one PNG."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    val = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", lw=1.2)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val loss", color="tab:orange", lw=1.2, ms=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def curves_png(curves: dict[str, list[tuple[float, float]]], title: str, ylabel: str, path: str) -> None:
    """One line per named curve of (x, y) points (Tune: val loss per trial)."""
    plt = _fig()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, pts in curves.items():
        pts = [(x, y) for x, y in pts if y is not None and math.isfinite(y)]
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", label=name, lw=1.2, ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card_md(card: dict) -> str:
    """A Hugging Face style README.md from the registry card."""
    m = card.get("metrics", {})
    lines = [f"# {card['name']} {card.get('version', '')}".rstrip(), "",
             f"A causal language model trained by raygen ({card.get('architecture', '')}).", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(\"<this directory>\")",
             "tokenizer = AutoTokenizer.from_pretrained(\"<this directory>\")", "```", "",
             "| | |", "|---|---|"]
    for key, label in (("dataset_version", "dataset version"), ("run_name", "training run"),
                       ("parameters", "parameters"), ("hardware", "hardware"), ("wall_seconds", "wall time (s)"),
                       ("restarts", "worker restarts recovered")):
        if key in card:
            lines.append(f"| {label} | {_fmt(card[key])} |")
    for k, v in m.items():
        if v is not None:
            lines.append(f"| {k.replace('_', ' ')} | {_fmt(v)} |")
    lines += ["", "Loss curve: `loss_curve.png`. Training config: `raygen.json` (`train_config`, `model_config`).", ""]
    return "\n".join(lines)
