"""The dataset card: what went in, what came out and why, as card.json, card.md and PNG plots.

Counts per stage (in → out, drops by reason) for this run, PII redactions per kind, token and block
counts, the document-length histogram and each label's distribution over every committed run, and the
dataset version that training records. Label distributions are computed by Ray (groupby counts for
categorical labels, bin counts for numeric ones); only the small tables reach the driver.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray

from raygen.data.tally import tally

NUMERIC_BINS = np.linspace(0, 1, 11)  # numeric labels are scores in [0, 1]


def _numeric_hist(batch: dict, col: str) -> dict:
    vals = np.clip(np.asarray(batch[col], dtype=float), 0, 1)
    return {"counts": np.histogram(vals, bins=NUMERIC_BINS)[0][None, :]}


def label_distributions(ds: ray.data.Dataset, columns: list[str]) -> dict[str, dict]:
    """column -> {"kind": "categorical", "counts": {value: n}} or {"kind": "numeric", "bins", "counts"}."""
    schema = dict(zip(ds.schema().names, ds.schema().types, strict=True))
    out: dict[str, dict] = {}
    for col in columns:
        t = str(schema[col])
        if t.startswith(("double", "float")):
            counts = np.zeros(len(NUMERIC_BINS) - 1, dtype=np.int64)
            for b in ds.map_batches(_numeric_hist, batch_format="numpy", fn_kwargs={"col": col}) \
                    .iter_batches(batch_format="numpy"):
                counts += b["counts"].sum(axis=0)
            out[col] = {"kind": "numeric", "bins": NUMERIC_BINS.tolist(), "counts": counts.tolist()}
        else:
            top = sorted(tally(ds, col).items(), key=lambda kv: -kv[1])
            out[col] = {"kind": "categorical", "counts": dict(top[:50]),
                        "other": sum(n for _, n in top[50:])}
    return out


def _plots(out: Path, length_hist: np.ndarray, bins: np.ndarray, labels: dict[str, dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(length_hist)), length_hist, width=0.9)
    ticks = list(range(0, len(length_hist), 4))
    ax.set_xticks(ticks, [f"{bins[i]:,}" for i in ticks], rotation=45)
    ax.set(title="document length (characters, √2 bins)", ylabel="documents")
    fig.tight_layout()
    fig.savefig(out / "card_lengths.png", dpi=100)
    plt.close(fig)
    files.append("card_lengths.png")
    for col, dist in labels.items():
        fig, ax = plt.subplots(figsize=(7, 3.5))
        if dist["kind"] == "numeric":
            ax.bar([f"{a:.1f}" for a in dist["bins"][:-1]], dist["counts"])
            ax.set(xlabel=f"{col} (bin start)")
        else:
            keys = list(dist["counts"])[:20]
            ax.bar(keys, [dist["counts"][k] for k in keys])
            ax.tick_params(axis="x", rotation=45)
        ax.set(title=f"label: {col}", ylabel="documents")
        fig.tight_layout()
        fig.savefig(out / f"card_label_{col}.png", dpi=100)
        plt.close(fig)
        files.append(f"card_label_{col}.png")
    return files


def write_card(out: Path, stats, corpus: ray.data.Dataset, length_hist: np.ndarray, bins: np.ndarray,
               label_columns: list[str], title: str = "") -> dict:
    labels = label_distributions(corpus, label_columns)
    plots = _plots(out, length_hist, bins, labels)
    card = {**asdict(stats), "length_histogram": {"bins": bins.tolist(), "counts": length_hist.tolist()},
            "labels": labels, "plots": plots}
    (out / "card.json").write_text(json.dumps(card, indent=2, default=str))
    lines = [f"# Dataset card: {title or out.name}", "", f"- version: `{stats.dataset_version}`",
             f"- runs: {', '.join(stats.runs)} (this run added {stats.num_documents} documents; "
             f"{stats.num_documents_total} in all)",
             f"- tokens packed: {stats.doc_tokens:,} → {stats.num_train_blocks:,} train + {stats.num_val_blocks:,} "
             f"val blocks of {stats.block_size} ({stats.tail_tokens} tail tokens dropped); vocab {stats.vocab_size}",
             "", "## This run, stage by stage", "", "| stage | in | out | dropped (reason: documents) |",
             "|---|---|---|---|"]
    for row in stats.stage_counts:
        why = ", ".join(f"{r}: {n}" for r, n in sorted(row["dropped"].items())) or "-"
        lines.append(f"| {row['stage']} | {row['in']} | {row['out']} | {why} |")
    lines += ["", f"Collected {stats.num_collected} = kept {stats.num_documents} + dropped "
                  f"{sum(stats.dropped.values())}.", ""]
    if stats.pii:
        lines += ["## PII redacted", "", ", ".join(f"{k}: {v}" for k, v in stats.pii.items()), ""]
    lines += ["## Labels (all runs)", ""]
    for col, dist in labels.items():
        if dist["kind"] == "categorical":
            top = ", ".join(f"{k}: {v}" for k, v in list(dist["counts"].items())[:10])
            lines.append(f"- **{col}**: {top}")
        else:
            lines.append(f"- **{col}**: histogram over [0, 1] in tenths: {dist['counts']}")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out / "card.md").write_text("\n".join(lines) + "\n")
    return card
