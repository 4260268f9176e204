"""The data job: collect → clean → exact dedup → tokenizer → tokenize + pack → Parquet shards + stats.json.

Plans stay lazy and stream through Ray Data; the driver sees only counts and the tokenizer's text stream.
The cleaned corpus is materialized once (in the object store, spilling to disk) because two stages read it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import ray

from raygen.config import RaygenConfig
from raygen.data import clean, features, sources
from raygen.errors import DataError


@dataclass
class DataStats:
    output_dir: str
    num_collected: int  # input documents (or jsonl lines)
    dropped: dict[str, int]  # reason -> documents; with num_documents these add up to num_collected
    num_documents: int  # documents after cleaning and dedup
    num_train_blocks: int
    num_val_blocks: int
    block_size: int
    vocab_size: int  # actual tokenizer size (may be below the configured size on a small corpus)
    doc_tokens: int  # tokens in all kept documents, one EOS each included
    tail_tokens: int  # tokens that did not fill a last block (dropped)
    dataset_version: str  # order-free digest of every block + tokenizer + block size
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    def write(self) -> None:
        Path(self.output_dir, "stats.json").write_text(json.dumps(asdict(self), indent=2))


def load_stats(output_dir: str | Path) -> DataStats:
    path = Path(output_dir, "stats.json")
    if not path.is_file():
        raise DataError(f"no prepared data at {output_dir} (stats.json missing): run the data stage first "
                        "(`raygen data` or pipelines/prepare_data.py)")
    return DataStats(**json.loads(path.read_text()))


def _clean_batch(batch: pd.DataFrame, form: str, min_chars: int) -> pd.DataFrame:
    texts = [clean.clean_text(t, form) for t in batch["text"]]
    reasons = [r or clean.drop_reason(t, min_chars) for r, t in zip(batch["drop_reason"], texts, strict=True)]
    return pd.DataFrame({"text": texts, "source": batch["source"], "drop_reason": reasons,
                         "hash": [clean.content_hash(t) for t in texts]})


def _first_of_group(group: pd.DataFrame) -> pd.DataFrame:
    # Deterministic survivor among exact duplicates: the smallest source name.
    return group.sort_values("source").head(1)


def _select_split(batch: dict, split: str) -> dict:
    return {"input_ids": batch["input_ids"][batch["split"] == split]}


def _log(msg: str) -> None:
    print(f"[raygen data] {msg}", flush=True)


def prepare_data(cfg: RaygenConfig) -> DataStats:
    t0 = time.time()
    stages: dict[str, float] = {}
    ray.data.DataContext.get_current().execution_options.preserve_order = True  # same input, same shards
    out = Path(cfg.data.output_dir)

    _log(f"collect: builtin={cfg.data.builtin} paths={cfg.data.paths or '-'}")
    collected = sources.collect(cfg.data.builtin, cfg.data.paths, cfg.data.jsonl_text_key)

    t = time.time()
    tagged = collected.map_batches(
        _clean_batch, batch_format="pandas",
        fn_kwargs={"form": cfg.data.normalization, "min_chars": cfg.data.min_chars},
    ).materialize()
    counts = {r["drop_reason"]: r["count()"] for r in tagged.groupby("drop_reason", num_partitions=1).count().take_all()}
    num_collected = sum(counts.values())
    dropped = {k: v for k, v in counts.items() if k}
    if not counts.get("", 0):
        raise DataError(f"the corpus is empty after cleaning ({num_collected} documents in, dropped {dropped}); "
                        f"add data or lower data.min_chars (now {cfg.data.min_chars})")
    kept = tagged.filter(lambda r: r["drop_reason"] == "")
    # Partitions scale with the data (one per ~2k documents), not Ray's default of 200 reduce tasks.
    partitions = max(1, min(200, counts[""] // 2000))
    deduped = kept.groupby("hash", num_partitions=partitions).map_groups(
        _first_of_group, batch_format="pandas").materialize()
    num_docs = deduped.count()
    dropped[clean.DROP_DUPLICATE] = counts[""] - num_docs
    stages["clean"] = time.time() - t
    _log(f"clean: {num_collected} collected → {num_docs} kept; dropped {dropped}")

    t = time.time()
    if out.exists():
        shutil.rmtree(out)
    tok_dir = out / "tokenizer"
    tok = features.train_tokenizer(features.text_stream(deduped), cfg.features.vocab_size, str(tok_dir))
    stages["tokenizer"] = time.time() - t
    _log(f"tokenizer: byte-level BPE, {len(tok)} tokens → {tok_dir}")

    t = time.time()
    packed = deduped.map_batches(
        features.tokenize_and_pack, batch_format="numpy", batch_size=cfg.features.pack_batch_docs,
        fn_kwargs={"tokenizer_dir": str(tok_dir), "block_size": cfg.features.block_size,
                   "val_fraction": cfg.features.val_fraction},
    ).materialize()
    split_counts = {r["split"]: r["count()"] for r in packed.groupby("split", num_partitions=1).count().take_all()}
    n_train, n_val = split_counts.get("train", 0), split_counts.get("val", 0)
    if n_train == 0 or n_val == 0:
        raise DataError(f"packing gave {n_train} train and {n_val} val blocks of {cfg.features.block_size} "
                        "tokens; add data, lower features.block_size or adjust features.val_fraction")
    for split in ("train", "val"):
        packed.map_batches(_select_split, batch_format="numpy", fn_kwargs={"split": split}) \
              .write_parquet(str(out / split))
    digest = (int(packed.sum("row_hash")) % 2**64).to_bytes(8, "little").hex()
    tok_digest = hashlib.blake2b((tok_dir / "tokenizer.json").read_bytes(), digest_size=4).hexdigest()
    stages["features"] = time.time() - t

    stats = DataStats(
        output_dir=str(out), num_collected=num_collected, dropped=dropped, num_documents=num_docs,
        num_train_blocks=n_train, num_val_blocks=n_val, block_size=cfg.features.block_size,
        vocab_size=len(tok), doc_tokens=int(packed.sum("doc_tokens")),
        tail_tokens=int(packed.sum("tail_tokens")),
        dataset_version=f"{digest}-{tok_digest}-{cfg.features.block_size}",
        seconds=round(time.time() - t0, 2), stages={k: round(v, 2) for k, v in stages.items()},
    )
    stats.write()
    _log(f"features: {stats.doc_tokens} tokens → {n_train} train + {n_val} val blocks of "
         f"{stats.block_size} ({stats.tail_tokens} tail tokens dropped); version {stats.dataset_version}")
    _log(f"wrote {out} in {stats.seconds:.1f}s")
    return stats


__all__ = ["DataStats", "load_stats", "prepare_data"]
