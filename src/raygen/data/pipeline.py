"""The data job: collect → document stages → exact and near dedup → label → mix → tokenizer → pack →
Parquet shards, a dataset card (JSON, Markdown, PNG plots) and stats.json.

Plans stream through Ray Data; the driver sees counts, histograms (bin counts) and the tokenizer's text
stream, never the corpus. Accounting: every collected record ends kept or under exactly one drop reason
(the card lists both and they add up); unreadable records also go to quarantine/ with their source.

Runs are incremental and restartable. Each run writes its curated documents to docs/<run>/ and the raw
hashes it collected to manifest/<run>/; only runs listed in runs.json (replaced atomically, last) count,
and anything else under docs/ or manifest/ is the debris of a killed run, removed at start. A later run
skips records whose raw hash is in the manifest (reason `already_collected`) and adds only new documents;
features, shards and the card are rebuilt from every committed run, so a re-run after a kill ends with
the same result as an uninterrupted one.

output_dir is a directory or a URI (s3://bucket/data): nothing here renames or links, so object storage
works as a disk does. Features go to a new features/<run>-<id>/ (tokenizer/, train/, val/) each run, and
stats.json, written just before runs.json, names the current one (`DataStats.features_dir`); a reader
never sees a half-written feature set, and a features directory never changes once named.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from raygen.config import RaygenConfig
from raygen.data import card, clean, features, sources, stages
from raygen.data.tally import tally
from raygen.data.quality import QualityRules
from raygen.errors import DataError, StorageError
from raygen.observability.tracing import record_spans
from raygen.storage import Location, local_copy

DROP_ALREADY_COLLECTED = "already_collected"
DROP_LABEL_FILTER = "label_filter"
LENGTH_BINS = np.array([0] + [int(2 ** (i / 2)) for i in range(12, 41)])  # chars: 64 .. 1M, √2 steps


@dataclass
class DataStats:
    output_dir: str
    num_collected: int  # records read this run (documents, jsonl lines, csv/parquet rows)
    dropped: dict[str, int]  # reason -> records; with num_documents these add up to num_collected
    num_documents: int  # documents this run added
    num_train_blocks: int
    num_val_blocks: int
    block_size: int
    vocab_size: int  # actual tokenizer size (may be below the configured size on a small corpus)
    doc_tokens: int  # tokens packed (EOS after each document, weighted repeats included)
    tail_tokens: int  # tokens that did not fill a last block (dropped)
    dataset_version: str  # order-free digest of every block + tokenizer + block size
    seconds: float
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    stage_counts: list[dict] = field(default_factory=list)  # [{stage, in, out, dropped: {reason: n}}]
    pii: dict[str, int] = field(default_factory=dict)  # kind -> redactions
    num_documents_total: int = 0  # documents of every committed run (what the shards hold)
    runs: list[str] = field(default_factory=list)
    features_dir: str = ""  # tokenizer/, train/, val/ of the committed features ('' : output_dir, before 0.2)

    @property
    def features(self) -> Location:
        return Location(self.features_dir or self.output_dir)

    def split_dir(self, split: str) -> str:
        """Where a split's Parquet shards are: a path or a URI, as Ray Data reads it."""
        return str(self.features / split)

    def tokenizer_dir(self) -> Path:
        """The tokenizer on this node's disk (downloaded once when the data lives in object storage)."""
        return local_copy(self.features / "tokenizer", "tokenizer.json")

    def write(self) -> None:
        (Location(self.output_dir) / "stats.json").write_text(json.dumps(asdict(self), indent=2))


def load_stats(output_dir: str | os.PathLike) -> DataStats:
    path = Location(output_dir) / "stats.json"
    if not path.is_file():
        raise DataError(f"no prepared data at {output_dir} (stats.json missing): run the data stage first "
                        "(`raygen data` or pipelines/prepare_data.py)")
    return DataStats(**json.loads(path.read_text()))


def _log(msg: str) -> None:
    print(f"[raygen data] {msg}", flush=True)


# -- batch functions (run in Ray tasks) -------------------------------------------------------------------
def _first_of_group(group: pd.DataFrame) -> pd.DataFrame:
    # Deterministic survivor among exact duplicates: the smallest doc_id; the rest are booked as duplicates.
    group = group.sort_values("doc_id")
    group.iloc[1:, group.columns.get_loc("drop_reason")] = clean.DROP_DUPLICATE
    return group


def _mark_known(group: pd.DataFrame) -> pd.DataFrame:
    """One raw_hash group of new records plus (maybe) a manifest marker row: known records are booked."""
    known = (group["drop_reason"] == "__manifest__").any()
    group = group[group["drop_reason"] != "__manifest__"].copy()
    if known:
        group["drop_reason"] = group["drop_reason"].where(group["drop_reason"] != "", DROP_ALREADY_COLLECTED)
    return group


def _as_marker(batch: pd.DataFrame, template: dict) -> pd.DataFrame:
    out = pd.DataFrame({k: [v] * len(batch) for k, v in template.items()})
    out["raw_hash"] = batch["raw_hash"].to_numpy()
    out["drop_reason"] = "__manifest__"
    return out


def _with_bytes(batch: pd.DataFrame) -> pd.DataFrame:
    return batch.assign(n_bytes=batch["text"].str.len())


def _length_hist(batch: dict) -> dict:
    counts, _ = np.histogram([len(t) for t in batch["text"]], bins=LENGTH_BINS)
    return {"counts": counts[None, :]}


_LABELERS: dict[str, list] = {}  # per worker process: labelers built once, not per batch


def _label(batch: dict, specs: list[dict]) -> dict:
    """The rule labelers' columns (built once per worker process)."""
    from raygen.data.label import apply_labelers, build_labelers

    key = json.dumps(specs, sort_keys=True)
    if key not in _LABELERS:
        _LABELERS[key] = build_labelers(specs)
    return apply_labelers(batch, _LABELERS[key]) if specs else dict(batch)


def _filter_and_weigh(batch: dict, label_filter: dict, label_weights: dict) -> dict:
    """Drop (with a reason) what label_filter excludes; scale weights by label_weights. After every labeler,
    model labelers included, so any label column can be used."""
    reasons = np.array(batch["drop_reason"], dtype=object)
    weight = np.asarray(batch["weight"], dtype=float).copy()
    for col, allowed in label_filter.items():
        ok = np.isin(np.asarray(batch[col], dtype=object), np.array(allowed, dtype=object))
        reasons = np.where((reasons == "") & ~ok, DROP_LABEL_FILTER, reasons)
    for col, table in label_weights.items():
        weight *= np.array([table.get(str(v), 1.0) for v in batch[col]], dtype=float)
    return {**batch, "drop_reason": reasons, "weight": weight}


# -- runs and the manifest -----------------------------------------------------------------------------------
def _committed(out: Location) -> list[str]:
    f = out / "runs.json"
    return json.loads(f.read_text())["runs"] if f.is_file() else []


def _commit(out: Location, runs: list[str]) -> None:
    (out / "runs.json").write_text(json.dumps({"runs": runs}, indent=1))  # the one atomic step


def _remove_debris(out: Location, runs: list[str], keep_features: str = "") -> None:
    docs = out / "docs"
    if out.is_local:
        for run in runs:  # a label import killed between its renames: finish it
            for suffix in (".labeled", ".old"):
                if not (docs / run).exists() and (docs / f"{run}{suffix}").is_dir():
                    os.replace(docs.local_path / f"{run}{suffix}", docs.local_path / run)
    for sub in ("docs", "manifest", "quarantine"):
        for p in (out / sub).iterdir():
            if p.name not in runs:
                p.delete()
    for p in (out / "features").iterdir():  # killed runs' features and the ones a commit replaced
        if str(p) != keep_features:
            p.delete()


def _skip_known(collected: ray.data.Dataset, out: Location, runs: list[str]) -> ray.data.Dataset:
    """Book records whose raw hash an earlier run collected: a groupby on raw_hash over the new records and
    the manifest's hashes (a distributed anti-join; the manifest never comes to the driver)."""
    template = {c: ("" if c not in ("doc_id", "offset", "weight") else 0) for c in sources.COLUMNS}
    template["weight"] = 0.0
    manifest = ray.data.read_parquet([str(out / "manifest" / r) for r in runs]) \
        .map_batches(_as_marker, batch_format="pandas", fn_kwargs={"template": template})
    parts = max(1, min(200, collected.count() // 20_000))
    return collected.union(manifest).groupby("raw_hash", num_partitions=parts) \
        .map_groups(_mark_known, batch_format="pandas")


# -- the job ------------------------------------------------------------------------------------------------------
def _reason_counts(ds: ray.data.Dataset) -> dict[str, int]:
    return tally(ds, "drop_reason")


def _stage_table(num_collected: int, dropped: dict[str, int], order: list[str]) -> list[dict]:
    """[{stage, in, out, dropped}] in pipeline order, from the reasons each stage books."""
    owner = {**{r: "collect" for r in sources.QUARANTINE}, DROP_ALREADY_COLLECTED: "manifest",
             **stages.REASON_STAGE, clean.DROP_DUPLICATE: "exact_dedup", "near_duplicate": "near_dedup",
             DROP_LABEL_FILTER: "label_filter"}
    rows, remaining = [], num_collected
    for stage in ["collect", "manifest", *order, "label_filter"]:
        mine = {r: n for r, n in dropped.items() if owner.get(r) == stage}
        rows.append({"stage": stage, "in": remaining, "out": remaining - sum(mine.values()), "dropped": mine})
        remaining -= sum(mine.values())
    unknown = {r: n for r, n in dropped.items() if r not in owner}
    if unknown:
        raise DataError(f"drop reasons without a stage: {unknown}")  # a bug of ours, never silent
    return rows


class _Clock:
    """Seconds and start time per stage (the card's timings and the trace's spans)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.starts: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        t = time.time()
        yield
        self.starts[name], self.seconds[name] = t, time.time() - t

    def spans(self) -> list[tuple[str, float, float]]:
        return [(f"data.{k}", self.starts[k], self.starts[k] + v) for k, v in self.seconds.items()]


def prepare_data(cfg: RaygenConfig) -> DataStats:
    """The data job, step by step (see the module docstring); returns what it made."""
    t0, d, clock = time.time(), cfg.data, _Clock()
    out, runs = _open_output(d)
    run = f"run-{len(runs) + 1:04d}"
    with clock.stage("collect+stages"):
        processed, counts, pii = _collect_and_clean(d, out, runs, run)
    num_collected, dropped = sum(counts.values()), {k: v for k, v in counts.items() if k}
    kept = processed.filter(lambda r: r["drop_reason"] == "")
    with clock.stage("dedup"):
        kept = _dedup(d, kept, counts.get("", 0), dropped)
    with clock.stage("label"):
        kept, num_docs = _label_and_filter(d, kept, dropped)
    if num_docs + sum(dropped.values()) != num_collected:
        raise DataError(f"accounting broke: {num_docs} kept + {dropped} != {num_collected} collected")  # a bug
    corpus, all_runs = _write_run(d, out, run, runs, kept, processed, num_docs, num_collected, dropped)
    feat = out / "features" / f"{run}-{uuid.uuid4().hex[:8]}"  # new each run: a named one never changes
    with tempfile.TemporaryDirectory(prefix="raygen-tokenizer-") as tok_dir:
        with clock.stage("tokenizer"):
            tok = _tokenizer(cfg.features, corpus, Path(tok_dir))
            (feat / "tokenizer").upload(tok_dir)
        with clock.stage("features"):
            packed, n_train, n_val, version = _pack(cfg.features, corpus, feat, Path(tok_dir))
    stats = DataStats(
        output_dir=str(out), num_collected=num_collected, dropped=dropped, num_documents=num_docs,
        num_train_blocks=n_train, num_val_blocks=n_val, block_size=cfg.features.block_size, vocab_size=len(tok),
        doc_tokens=int(packed.sum("doc_tokens")), tail_tokens=int(packed.sum("tail_tokens")), dataset_version=version,
        seconds=round(time.time() - t0, 2), stages={k: round(v, 2) for k, v in clock.seconds.items()},
        stage_counts=_stage_table(num_collected, dropped, d.stages), pii=pii, num_documents_total=corpus.count(),
        runs=all_runs, features_dir=str(feat))
    _publish(cfg, stats, corpus, clock, t0, run)
    return stats


def _open_output(d) -> tuple[Location, list[str]]:
    """The output directory with the committed runs (none when not incremental), a killed run's debris gone
    (the committed features stay until a new set is committed)."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same input, same shards
    ctx.op_resource_reservation_enabled = d.reserve_operator_memory
    out = Location(d.output_dir)
    out.mkdir()
    runs = _committed(out) if d.incremental else []
    if not d.incremental:
        for sub in ("docs", "manifest", "quarantine"):
            (out / sub).delete()
        (out / "runs.json").delete()
    stats = out / "stats.json"
    _remove_debris(out, runs, json.loads(stats.read_text()).get("features_dir", "") if stats.is_file() else "")
    return out, runs


def _collect_and_clean(d, out: Location, runs: list[str], run: str):
    """Read every source, skip what earlier runs collected, run the document stages; unreadable records go to
    quarantine/. Returns (the processed records, drop reason -> records ('' kept), PII kind -> redactions)."""
    srcs = [s.model_dump() for s in d.all_sources()]
    _log(f"{run}: collect builtin={d.builtin} sources={[s['path'] for s in srcs] or '-'}; stages {d.stages}")
    collected = sources.collect(srcs, d.builtin)
    if runs:
        collected = _skip_known(collected, out, runs)
    settings = stages.StageSettings(
        normalization=d.normalization, min_chars=d.min_chars,
        quality_rules=QualityRules(**{k: tuple(tuple(x) for x in v) if isinstance(v, list) else v
                                      for k, v in d.quality.items()}),
        languages=tuple(d.languages), min_language_score=d.min_language_score, pii_kinds=tuple(d.pii_kinds))
    processed = collected.map_batches(stages.process_batch, batch_format="numpy", batch_size=64,
                                      fn_kwargs={"stages": d.stages, "settings": settings}).materialize()
    sums = [f"pii_{k}" for k in d.pii_kinds] if "pii" in d.stages else []
    counts, totals = tally(processed, "drop_reason", sums)  # one pass: reasons and PII counts
    if any(counts.get(r) for r in sources.QUARANTINE):
        processed.filter(lambda r: r["drop_reason"] in sources.QUARANTINE) \
            .select_columns(["source", "offset", "drop_reason", "text"]).write_json(str(out / "quarantine" / run))
    _log(f"stages: {sum(counts.values())} records → {counts.get('', 0)} pass; "
         f"dropped {dict(sorted((k, v) for k, v in counts.items() if k))}")
    return processed, counts, {k: totals[f"pii_{k}"] for k in d.pii_kinds} if sums else {}


def _dedup(d, kept: ray.data.Dataset, num_kept: int, dropped: dict[str, int]) -> ray.data.Dataset:
    """Exact, then near duplicates, as data.stages says; books what each drops in `dropped`."""
    if "exact_dedup" in d.stages and num_kept:
        parts = max(1, min(200, num_kept // 2000))  # partitions scale with the data
        kept = kept.groupby("hash", num_partitions=parts).map_groups(_first_of_group, batch_format="pandas") \
            .materialize()
        dropped[clean.DROP_DUPLICATE] = _reason_counts(kept).get(clean.DROP_DUPLICATE, 0)
        kept = kept.filter(lambda r: r["drop_reason"] == "").materialize()
    if "near_dedup" in d.stages and num_kept:
        from raygen.data.dedup import near_dedup

        nd = d.near_dedup
        kept, _, nstats = near_dedup(kept, shingle_size=nd.shingle, bands=nd.bands, rows=nd.rows,
                                     threshold=nd.threshold)
        dropped["near_duplicate"] = nstats.num_dropped
        kept = kept.materialize()
    return kept


def _label_and_filter(d, kept: ray.data.Dataset, dropped: dict[str, int]) -> tuple[ray.data.Dataset, int]:
    """The rule labelers in one task, each model labeler in its actors, then label_filter and label_weights;
    returns (the documents kept, how many)."""
    kept = kept.map_batches(_label, batch_format="numpy", batch_size=256, fn_kwargs={
        "specs": [s.model_dump() for s in d.labelers if s.kind != "model"]})
    for spec in (s for s in d.labelers if s.kind == "model"):
        from raygen.data.label import ModelLabeler

        kept = kept.map_batches(ModelLabeler, fn_constructor_kwargs=spec.model_dump(exclude={"kind", "concurrency"}),
                                batch_format="numpy", batch_size=64, concurrency=spec.concurrency)
    if d.label_filter or d.label_weights:
        kept = kept.map_batches(_filter_and_weigh, batch_format="numpy", batch_size=256, fn_kwargs={
            "label_filter": d.label_filter, "label_weights": d.label_weights})
    kept = kept.materialize()
    labeled = _reason_counts(kept)
    if labeled.get(DROP_LABEL_FILTER):
        dropped[DROP_LABEL_FILTER] = labeled[DROP_LABEL_FILTER]
        kept = kept.filter(lambda r: r["drop_reason"] == "").materialize()
    return kept, labeled.get("", 0)


def _write_run(d, out: Location, run: str, runs: list[str], kept, processed, num_docs: int, num_collected: int,
               dropped: dict[str, int]) -> tuple[ray.data.Dataset, list[str]]:
    """This run's documents and manifest; returns (the corpus of every run, the runs)."""
    if num_docs:
        kept.write_parquet(str(out / "docs" / run))
    processed.select_columns(["raw_hash"]).write_parquet(str(out / "manifest" / run))
    all_runs = runs + [run]
    doc_dirs = [str(out / "docs" / r) for r in all_runs if (out / "docs" / r).is_dir()]
    if not doc_dirs:
        raise DataError(f"the corpus is empty after curation ({num_collected} records in, dropped {dropped}); "
                        f"add data, or relax data.stages / data.quality / data.min_chars (now {d.min_chars})")
    corpus = ray.data.read_parquet(doc_dirs).materialize()
    _log(f"curated: {num_collected} collected → {num_docs} new documents ({corpus.count()} in all runs)")
    return corpus, all_runs


def _tokenizer(fc, corpus: ray.data.Dataset, tok_dir: Path):
    """features.tokenizer reused, or a byte-level BPE trained on a sample of the corpus's text; saved in
    tok_dir (local: the driver's disk)."""
    if fc.tokenizer:
        tok = features.use_tokenizer(fc.tokenizer, str(tok_dir))
        _log(f"tokenizer: reused {fc.tokenizer}, {len(tok)} tokens")
        return tok
    sized = corpus.map_batches(_with_bytes, batch_format="pandas")
    tok = features.train_tokenizer(features.text_stream(sized, max_bytes=fc.tokenizer_sample_mb * 2**20),
                                   fc.vocab_size, str(tok_dir), fc.chat_template)
    _log(f"tokenizer: byte-level BPE trained on ≤{fc.tokenizer_sample_mb} MiB, {len(tok)} tokens")
    return tok


def _pack(fc, corpus: ray.data.Dataset, feat: Location, tok_dir: Path):
    """Tokenize and pack into train/val Parquet under feat; returns (packed, train blocks, val blocks,
    dataset version: an order-free digest of every block + the tokenizer + the block size). The workers
    read the tokenizer from feat (on any node); tok_dir is the driver's copy."""
    packed = corpus.map_batches(
        features.tokenize_and_pack, batch_format="numpy", batch_size=fc.pack_batch_docs,
        fn_kwargs={"tokenizer_dir": str(feat / "tokenizer"), "block_size": fc.block_size,
                   "val_fraction": fc.val_fraction},
    ).materialize()
    split_counts = tally(packed, "split")
    n_train, n_val = split_counts.get("train", 0), split_counts.get("val", 0)
    if n_train == 0 or n_val == 0:
        raise DataError(f"packing gave {n_train} train and {n_val} val blocks of {fc.block_size} tokens; add "
                        "data, lower features.block_size or adjust features.val_fraction")
    for split in ("train", "val"):
        packed.map_batches(features.select_split, batch_format="numpy", fn_kwargs={"split": split}) \
              .write_parquet(str(feat / split))
    digest = (int(packed.sum("row_hash")) % 2**64).to_bytes(8, "little").hex()
    tok_digest = hashlib.blake2b((tok_dir / "tokenizer.json").read_bytes(), digest_size=4).hexdigest()
    return packed, n_train, n_val, f"{digest}-{tok_digest}-{fc.block_size}"


def _publish(cfg: RaygenConfig, stats: DataStats, corpus, clock: _Clock, t0: float, run: str) -> None:
    """The card, stats.json, metrics and spans, then the commit that makes the run count."""
    out = Location(stats.output_dir)
    with tempfile.TemporaryDirectory(prefix="raygen-card-") as tmp:
        card.write_card(Path(tmp), stats, corpus, _sum_hist(corpus), LENGTH_BINS, _label_columns(corpus), out.name)
        out.upload(tmp)
    stats.write()
    _record_metrics(stats)
    record_spans(cfg.observability, "raygen-data", "data.prepare", t0, time.time(), clock.spans(),
                 {"raygen.run": run, "raygen.dataset_version": stats.dataset_version,
                  "raygen.documents_in": stats.num_collected, "raygen.train_blocks": stats.num_train_blocks})
    _commit(out, stats.runs)
    _remove_debris(out, stats.runs, stats.features_dir)  # the features this commit replaced
    _log(f"features: {stats.doc_tokens} tokens → {stats.num_train_blocks} train + {stats.num_val_blocks} val "
         f"blocks of {stats.block_size} ({stats.tail_tokens} tail tokens dropped); version {stats.dataset_version}")
    _log(f"wrote {out} (card: {out / 'card.md'}) in {stats.seconds:.1f}s")


def _record_metrics(stats: DataStats) -> None:
    """Documents read and kept, and drops by reason, to Ray's metrics (the data-drop alert)."""
    from raygen.observability.metrics import record

    record("raygen_data_documents_total", stats.num_collected, outcome="read")
    record("raygen_data_documents_total", stats.num_documents, outcome="kept")
    for reason, n in stats.dropped.items():
        record("raygen_data_dropped_total", n, reason=reason)


def export_for_labeling(cfg: RaygenConfig, path: str, sample_size: int, stratify_by: str | None = None,
                        seed: int = 0) -> int:
    """A stratified sample of the curated documents as Label Studio tasks (label_studio.py). Ray thins the
    corpus first by a seeded hash (about 20 candidates per wanted task, strata keep their shares), so only
    that thin slice reaches the driver. Returns the number of tasks written."""
    from raygen.data.label_studio import export_label_studio

    out = Location(cfg.data.output_dir)
    runs = _committed(out)
    if not runs:
        raise DataError(f"no curated documents in {out}: run the data stage first")
    corpus = ray.data.read_parquet([str(out / "docs" / r) for r in runs if (out / "docs" / r).is_dir()])
    total = corpus.count()
    keep = min(1.0, 20 * sample_size / max(total, 1))
    cols = ["doc_id", "text"] + ([stratify_by] if stratify_by else [])
    if stratify_by and stratify_by not in corpus.schema().names:
        raise DataError(f"no column {stratify_by!r} to stratify by; columns: {corpus.schema().names}")
    thin = corpus.select_columns(cols).filter(
        lambda r: int.from_bytes(hashlib.blake2b(f"{seed}:{r['doc_id']}".encode(), digest_size=4).digest(),
                                 "little") / 2**32 < keep)
    return len(export_label_studio(thin.take_all(), path, sample_size, stratify_by, seed))


def import_labels(cfg: RaygenConfig, export_path: str, name: str = "human_label", from_name: str | None = "label"
                  ) -> int:
    """Annotations from a Label Studio export become column `name` of every committed run's documents
    (by doc_id; '' where none), rewritten run by run (each swapped in whole). Returns documents labeled."""
    from raygen.data.label import HumanLabeler

    where = Location(cfg.data.output_dir)
    if not where.is_local:
        raise StorageError(f"importing labels rewrites documents in place by renames, which {where} cannot do; "
                           "import into a local copy of the data (or label in the data stage with a labeler)")
    out = where.local_path
    labeler = HumanLabeler(export_path, name, from_name)  # parse errors surface here, before any rewrite
    labeled = 0
    for run in _committed(out):
        src = out / "docs" / run
        if not src.is_dir():
            continue
        tmp = out / "docs" / f"{run}.labels-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        ds = ray.data.read_parquet(str(src)).map_batches(HumanLabeler, fn_constructor_kwargs={
            "path": export_path, "name": name, "from_name": from_name}, batch_format="numpy", concurrency=1)
        ds.write_parquet(str(tmp))
        labeled += ray.data.read_parquet(str(tmp)).filter(lambda r: r[name] != "").count()
        done, old = out / "docs" / f"{run}.labeled", out / "docs" / f"{run}.old"
        os.replace(tmp, done)  # from here a kill is finished by the next run's _remove_debris
        os.replace(src, old)
        os.replace(done, src)
        shutil.rmtree(old)
    _log(f"imported {len(labeler.labels)} annotations from {export_path} as column {name!r}: {labeled} documents")
    return labeled


def _sum_hist(ds: ray.data.Dataset) -> np.ndarray:
    total = np.zeros(len(LENGTH_BINS) - 1, dtype=np.int64)
    for b in ds.map_batches(_length_hist, batch_format="numpy", batch_size=1024).iter_batches(batch_format="numpy"):
        total += b["counts"].sum(axis=0)
    return total


def _label_columns(ds: ray.data.Dataset) -> list[str]:
    names = ds.schema().names
    skip = set(sources.COLUMNS) | {"hash", "boilerplate_lines", "lang_score"} | {n for n in names if n.startswith("pii_")}
    return [n for n in names if n not in skip]


__all__ = ["DataStats", "export_for_labeling", "import_labels", "load_stats", "prepare_data"]
