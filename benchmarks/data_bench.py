"""raygen's data curation against datatrove on one generated corpus with planted duplicates, in one run.

    pip install -e ".[bench]"                   # the peer: datatrove (+ spacy, orjson, xxhash<4)
    python benchmarks/data_bench.py             # a 500 MB corpus (hours on 2 cores)
    python benchmarks/data_bench.py --quick     # a ~5 MB smoke run

Corpus (generated, seeded): English-looking documents of 1-8 KB (log-uniform), sentences of 6-28 words drawn
from a 20,000-word vocabulary with Zipfian frequencies (English function words at the top ranks, pseudo-words
below), so Gopher's rules pass; JSONL lines {"id", "text"} spread over --files files, one document per line.
Planted, each copy in a random file: exact copies (~5% of documents); near copies (~5%: 0.2-1.8% of the words
substituted, deleted or inserted, 1-3 copies per original); decoy copies (~1%: 3.5-8% of words edited, Jaccard
~0.5-0.75) that must not be removed; junk (~2%: too short, or one line repeated) that the document filters
should drop; a little PII (emails, public IPs) and boilerplate (cookie notices) in other documents. Ground
truth: every planted group and the true Jaccard of every pair in it.

Jaccard is over sets of word 5-shingles, words = the lowercased text split on whitespace (raygen's definition,
see src/raygen/data/minhash.py). datatrove's MinHash shingles its own normalization (punctuation and numbers
removed, spaCy tokens), so its view of a pair differs slightly; the ground truth is this one for both.

Metrics, per system (documents removed by the document filters are not eligible for dedup):
  near-dup recall     planted pairs with J >= 0.8, both documents past the document filters, of which at
                      least one document was removed as a near duplicate / all such pairs
  near-dup precision  documents removed as near duplicates that have J >= 0.8 with a kept member of their
                      planted group / all documents removed as near duplicates (so a chain A~B~C collapsed
                      to A counts C as wrong when J(A, C) < 0.8)
  decoys removed      decoy pairs (J < 0.8) of which one document was removed as a near duplicate (want 0)
  exact dups removed  documents removed by exact dedup, and the planted copies that should have been
  throughput          input documents and MB (10^6 bytes of text) / wall seconds

Systems, each in its own subprocess, with the same number of workers (--workers, default 2):
  raygen     prepare_data with its default stages (normalize html boilerplate quality language pii
             exact_dedup near_dedup) and rule labelers, on a local Ray with num_cpus=workers. "curation":
             prepare_data's start until its tokenizer starts (collect, stages, both dedups, labels, writing
             the curated Parquet and the manifest, reading them back); "full": the whole call (+ BPE
             tokenizer, tokenize + pack, shards, dataset card). Stage seconds come from DataStats.stages.
  datatrove  LocalPipelineExecutor, tasks = workers = --workers, six runs in sequence (FineWeb's layout):
             1 JsonlReader → C4QualityFilter (line-level boilerplate only: policy, javascript, lorem ipsum)
               → GopherRepetitionFilter → GopherQualityFilter → PIIFormatter → JsonlWriter → ExactDedupSignature
             2 ExactFindDedups (1 task)
             3 JsonlReader → ExactDedupFilter → JsonlWriter → MinhashDedupSignature
             4 MinhashDedupBuckets (one task per band)   5 MinhashDedupCluster (1 task)
             6 JsonlReader → MinhashDedupFilter → JsonlWriter
             MinhashConfig(n_grams, num_buckets, hashes_per_bucket) = raygen's shingle, bands, rows; writers
             uncompressed. Not used: LanguageFilter (downloads a fastText model), FTFYFormatter (needs ftfy).
Differences in the work: raygen also normalizes (NFKC), identifies language (labels only, nothing dropped),
redacts more PII kinds, labels every document and verifies each candidate pair by exact Jaccard; datatrove
keeps every LSH candidate pair (no verification). Results go to benchmarks/results/data/ (JSON, Markdown, PNG).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "data"
MB = 1e6
THRESHOLD = 0.8
J_BINS = (0.8, 0.85, 0.9, 0.95, 1.01)
# Planted roles of an original: probabilities, and copies per original.
ROLES = {"junk": 0.02, "exact": 0.045, "near": 0.045, "decoy": 0.01}
EDIT_RATE = {"near": (0.002, 0.018), "decoy": (0.035, 0.08)}  # share of words edited per copy
COMMON = ("the of and to a in is that it was for on are with as be at by this have from or one had not but what "
          "all were when we there can an your which their said if do will each about how up out them then she "
          "many some so these would other into has more her two like him see time could no make than first "
          "been its who now people my made over did down only way find use may water long little very after "
          "words called just where most know get through back much before go good new write our used me man "
          "too any day same right look think also around another came come work three word must because does "
          "part even place well such here take why things help put years different away again off went old "
          "number great tell men say small every found still between name should home big give air line set "
          "own under read last never us left end along while might next sound below saw something thought "
          "both few those always looked show large often together asked house world going want school "
          "important until form food keep children feet land side without boy once animals life enough took "
          "sometimes four head above kind began almost live page got earth need far hand high year mother "
          "light parts country father let night following picture being study second eyes soon times story "
          "boys since white days ever paper hard near sentence better best across during today others "
          "however sure means knew try told young miles sun ways thing whole hear example heard several "
          "change answer room sea against top turned learn point city play toward five using himself usually").split()


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


# -- corpus and ground truth ------------------------------------------------------------------------------------
def make_vocab(rng: random.Random, size: int) -> list[str]:
    syll = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")] + ["st", "nd", "r"]
    words, seen = list(COMMON), set(COMMON)
    while len(words) < size:
        w = "".join(rng.choice(syll) for _ in range(rng.choice((2, 2, 3, 3, 4))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


class TextGen:
    """Zipf-Mandelbrot word frequencies (p_r ∝ 1 / (r + 2.7)^1.05), sentences, paragraphs."""

    def __init__(self, seed: int, vocab_size: int = 20_000):
        self.rng = random.Random(seed)
        self.np = np.random.default_rng(seed)
        self.vocab = make_vocab(self.rng, vocab_size)
        p = 1.0 / (np.arange(1, vocab_size + 1) + 2.7) ** 1.05
        self.cdf = np.cumsum(p / p.sum())

    def words(self, n: int) -> list[str]:
        idx = np.minimum(np.searchsorted(self.cdf, self.np.random(n)), len(self.vocab) - 1)
        return [self.vocab[i] for i in idx]

    def sentence(self, k: int) -> str:
        w = self.words(k)
        if k > 8 and self.rng.random() < 0.4:
            j = self.rng.randrange(2, k - 2)
            w[j] += ","
        end = self.rng.choices((".", "?", "!"), (0.9, 0.05, 0.05))[0]
        return w[0].capitalize() + " " + " ".join(w[1:]) + end

    def document(self, target_chars: int) -> str:
        paras, size = [], 0
        while size < target_chars:
            para = " ".join(self.sentence(self.rng.randint(6, 28)) for _ in range(self.rng.randint(2, 7)))
            paras.append(para)
            size += len(para) + 2
        return "\n\n".join(paras)

    def junk(self) -> str:
        if self.rng.random() < 0.5:  # too short: under Gopher's 50 words and raygen's 200 characters
            return self.sentence(self.rng.randint(10, 25))
        line = self.sentence(12)  # one line repeated: Gopher's duplicate-line rules
        return "\n".join([line] * self.rng.randint(10, 30))

    def perturb(self, text: str, rate: float) -> str:
        """Edit about `rate` of the words: 70% substitutions, 15% deletions, 15% insertions; layout kept."""
        parts = text.split(" ")
        out = []
        for part in parts:
            if self.rng.random() >= rate:
                out.append(part)
                continue
            op = self.rng.random()
            new = self.words(1)[0]
            if op < 0.15 and "\n" not in part:
                continue  # deletion
            if op < 0.30:
                out.extend((new, part))  # insertion
                continue
            if part[:1].isupper():
                new = new.capitalize()
            out.append(re.sub(r"^[A-Za-z]+", new, part) if re.match(r"[A-Za-z]", part) else new + part)
        return " ".join(out)


def shingles(text: str, n: int = 5) -> set:
    w = text.lower().split()
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def make_corpus(root: Path, target_mb: float, num_files: int, seed: int = 0) -> dict:
    """Write the corpus; return the ground truth: docs [[file, line, bytes]] by id, groups, pairs."""
    root.mkdir(parents=True, exist_ok=True)
    gen = TextGen(seed)
    rng = gen.rng
    files = [open(root / f"part-{i:05d}.jsonl", "w") for i in range(num_files)]
    lines = [0] * num_files
    docs: list[list[int]] = []
    groups: list[dict] = []  # {"kind", "ids"}
    pairs: list[list] = []  # [a, b, jaccard, kind]
    junk: list[int] = []
    seen: dict[bytes, list[int]] = {}  # text digest -> ids: exact duplicates, planted or not
    total, target = 0, target_mb * MB
    t0, next_report = time.time(), 0.1

    def write(text: str) -> int:
        nonlocal total
        f = rng.randrange(num_files)
        i = len(docs)
        files[f].write(json.dumps({"id": str(i), "text": text}) + "\n")  # datatrove drops falsy ids (0)
        docs.append([f, lines[f], len(text.encode())])
        digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
        seen.setdefault(digest, []).append(i)
        lines[f] += 1
        total += docs[-1][2]
        return i

    roles, weights = list(ROLES) + ["none"], list(ROLES.values()) + [1 - sum(ROLES.values())]
    while total < target:
        role = rng.choices(roles, weights)[0]
        if role == "junk":
            junk.append(write(gen.junk()))
            continue
        text = gen.document(int(math.exp(rng.uniform(math.log(1000), math.log(8000)))))
        if role == "none":
            if rng.random() < 0.02:
                text += (f"\n\nWrite to {rng.choice(COMMON)}.{rng.choice(COMMON)}@example.org or to the server at "
                         f"93.184.{rng.randrange(256)}.{rng.randrange(1, 255)} for more.")
            if rng.random() < 0.02:
                text = "This site uses cookies. Read our cookie policy.\n\n" + text
            write(text)
            continue
        ids, texts = [write(text)], [text]
        copies = 1 if role == "decoy" else rng.choices((1, 2, 3), (0.8, 0.15, 0.05) if role == "near" else (0.8, 0.2, 0))[0]
        for _ in range(copies):
            copy = text
            while role != "exact" and copy in texts:  # a near copy with no edit would be an exact one
                copy = gen.perturb(text, rng.uniform(*EDIT_RATE[role]))
            texts.append(copy)
            ids.append(write(copy))
        groups.append({"kind": role, "ids": ids})
        sets = [shingles(t) for t in texts] if role != "exact" else None
        for a in range(len(ids)):
            for b in range(a + 1, len(ids)):
                pairs.append([ids[a], ids[b], 1.0 if sets is None else round(jaccard(sets[a], sets[b]), 4), role])
        if total > next_report * target:
            _log(f"  generated {total / MB:.0f} MB, {len(docs)} documents ({time.time() - t0:.0f} s)")
            next_report += 0.1
    for f in files:
        f.close()
    return {"docs": docs, "files": [f"part-{i:05d}.jsonl" for i in range(num_files)], "groups": groups,
            "pairs": pairs, "junk": junk, "bytes": total,
            "identical": sorted(i for ids in seen.values() if len(ids) > 1 for i in ids)}


# -- workers (one subprocess each) ---------------------------------------------------------------------------------
def worker_raygen(a: argparse.Namespace) -> dict:
    os.environ["RAY_AUTH_MODE"] = "token"  # read once when ray is imported (see tests/conftest.py)
    import pyarrow.parquet as pq
    import ray

    from raygen.config import load_config
    from raygen.data import features, pipeline, stages
    from raygen.data.quality import QualityRules

    work = Path(a.work)
    cfg = load_config(None, [f"data.output_dir={work / 'out'}", f"data.paths=[{a.corpus}]", "data.builtin=false",
                             "data.incremental=false", *a.overrides])
    ray.init(address="local", num_cpus=a.workers, include_dashboard=False)
    marks: dict[str, float] = {}
    train_tokenizer = features.train_tokenizer

    def timed_tokenizer(*args, **kwargs):  # curation ends where the tokenizer starts
        marks.setdefault("curated", time.time())
        return train_tokenizer(*args, **kwargs)

    features.train_tokenizer = timed_tokenizer
    t0 = time.time()
    st = pipeline.prepare_data(cfg)
    wall = time.time() - t0
    ray.shutdown()

    # Not timed: which generated documents survived, and which of the removed ones a document stage dropped.
    truth = json.loads(Path(a.truth).read_text())
    where = {(truth["files"][f], line): i for i, (f, line, _) in enumerate(truth["docs"])}
    table = pq.read_table(work / "out" / "docs" / st.runs[-1], columns=["source", "offset"])
    kept = sorted(where[(Path(s).name, o)] for s, o in zip(table["source"].to_pylist(), table["offset"].to_pylist(),
                                                           strict=True))
    removed = set(range(len(truth["docs"]))) - set(kept)
    d = cfg.data
    settings = stages.StageSettings(
        normalization=d.normalization, min_chars=d.min_chars,
        quality_rules=QualityRules(**{k: tuple(tuple(x) for x in v) if isinstance(v, list) else v
                                      for k, v in d.quality.items()}),
        languages=tuple(d.languages), min_language_score=d.min_language_score, pii_kinds=tuple(d.pii_kinds))
    doc_stages = [s for s in d.stages if s in stages.DOC_STAGES]
    filtered = []
    for name in truth["files"]:
        with open(Path(a.corpus) / name) as f:
            for line, row in enumerate(f):
                i = where[(name, line)]
                if i in removed and stages.process_doc(json.loads(row)["text"], "jsonl", doc_stages,
                                                       settings)["drop_reason"]:
                    filtered.append(i)
    from dataclasses import asdict

    return {"wall": marks.get("curated", time.time()) - t0, "full_wall": wall, "kept": kept, "filtered": filtered,
            "stats": asdict(st), "stages": d.stages, "labelers": [s.kind for s in d.labelers],
            "minhash": {"shingle": d.near_dedup.shingle, "bands": d.near_dedup.bands, "rows": d.near_dedup.rows,
                        "threshold": d.near_dedup.threshold}}


def _doc_text(doc) -> str:
    return doc.text


def worker_datatrove(a: argparse.Namespace) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups,
                                          MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                          MinhashDedupFilter, MinhashDedupSignature)
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    work, n = Path(a.work), a.workers
    mh = MinhashConfig(n_grams=a.shingle, num_buckets=a.bands, hashes_per_bucket=a.rows)
    ex = ExactDedupConfig(content_getter=_doc_text)
    boilerplate = C4QualityFilter(split_paragraph=True, remove_citations=False, filter_no_terminal_punct=False,
                                  min_num_sentences=-1, min_words_per_line=-1, filter_curly_bracket=False)
    runs = [
        ("filters + exact signatures", n, [JsonlReader(a.corpus), boilerplate, GopherRepetitionFilter(),
                                           GopherQualityFilter(), PIIFormatter(),
                                           JsonlWriter(str(work / "filtered"), compression=None),
                                           ExactDedupSignature(str(work / "exact_sigs"), config=ex)]),
        ("exact find", 1, [ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=ex)]),
        ("exact filter + minhash signatures", n, [
            JsonlReader(str(work / "filtered"), compression=None), ExactDedupFilter(str(work / "exact_dups"), config=ex),
            JsonlWriter(str(work / "exact"), compression=None), MinhashDedupSignature(str(work / "mh_sigs"), config=mh)]),
        ("minhash buckets", a.bands, [MinhashDedupBuckets(str(work / "mh_sigs"), str(work / "mh_buckets"), config=mh)]),
        ("minhash cluster", 1, [MinhashDedupCluster(str(work / "mh_buckets"), str(work / "mh_remove"), config=mh)]),
        ("minhash filter", n, [JsonlReader(str(work / "exact"), compression=None),
                               MinhashDedupFilter(str(work / "mh_remove")),
                               JsonlWriter(str(work / "final"), compression=None)]),
    ]
    t0 = time.time()
    steps = {}
    for i, (name, tasks, pipe) in enumerate(runs, 1):
        t = time.time()
        LocalPipelineExecutor(pipe, tasks=tasks, workers=min(n, tasks), logging_dir=str(work / "logs" / str(i))).run()
        steps[name] = round(time.time() - t, 2)
        print(f"[bench datatrove] {i}/{len(runs)} {name}: {steps[name]:.1f} s", flush=True)
    wall = time.time() - t0

    def ids(folder: str) -> set[int]:
        out = set()
        for p in sorted((work / folder).glob("*.jsonl")):
            with open(p) as f:
                out.update(int(json.loads(line)["id"]) for line in f)
        return out

    total = len(json.loads(Path(a.truth).read_text())["docs"])
    filtered, exact, final = ids("filtered"), ids("exact"), ids("final")
    return {"wall": wall, "steps": steps, "kept": sorted(final), "filtered": sorted(set(range(total)) - filtered),
            "exact_removed": sorted(filtered - exact), "near_removed": sorted(exact - final),
            "minhash": {"shingle": a.shingle, "bands": a.bands, "rows": a.rows}}


def run_worker(a: argparse.Namespace) -> None:
    res = worker_raygen(a) if a.worker == "raygen" else worker_datatrove(a)
    Path(a.result).write_text(json.dumps(res))


# -- driver ----------------------------------------------------------------------------------------------------------
def spawn(kind: str, tmp: Path, args: argparse.Namespace, minhash: dict) -> dict:
    work = tmp / kind
    work.mkdir()
    result, log = tmp / f"{kind}.json", tmp / f"{kind}.log"
    cmd = [sys.executable, __file__, "--worker", kind, "--work", str(work), "--corpus", str(tmp / "corpus"),
           "--truth", str(tmp / "truth.json"), "--result", str(result), "--workers", str(args.workers),
           "--shingle", str(minhash["shingle"]), "--bands", str(minhash["bands"]), "--rows", str(minhash["rows"]),
           *(["--overrides", *args.overrides] if args.overrides else [])]
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    _log(f"{kind}: start ({args.workers} workers; log {log})")
    t = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:
            f.write(line)
            if line.startswith(("[raygen data]", "[raygen dedup]", "[bench")):
                print("    " + line.rstrip()[:160], flush=True)
        proc.wait()
    if proc.returncode or not result.is_file():
        tail = log.read_text().strip().splitlines()[-8:]
        _log(f"{kind}: FAILED\n      " + "\n      ".join(tail))
        return {"error": "\n".join(tail)}
    _log(f"{kind}: done in {time.time() - t:.1f} s")
    return json.loads(result.read_text())


def evaluate(res: dict, truth: dict) -> dict:
    """The metrics of the docstring, from which generated ids a system kept and why it dropped the others."""
    n, nbytes = len(truth["docs"]), truth["bytes"]
    kept, filtered = set(res["kept"]), set(res["filtered"])
    exact_members = set(truth["identical"])  # documents whose text occurs more than once
    if "near_removed" in res:
        exact_removed, near_removed = set(res["exact_removed"]), set(res["near_removed"])
    else:  # raygen books the reasons as counts; planted groups say which dedup removed a document
        dedup = set(range(n)) - kept - filtered
        exact_removed, near_removed = dedup & exact_members, dedup - exact_members
    pair_j = {(min(a, b), max(a, b)): j for a, b, j, _ in truth["pairs"]}
    group_of = {i: g["ids"] for g in truth["groups"] if g["kind"] != "exact" for i in g["ids"]}
    kind_of = {i: g["kind"] for g in truth["groups"] for i in g["ids"]}
    wrong = [d for d in near_removed if not any(m in kept and pair_j[(min(d, m), max(d, m))] >= THRESHOLD
                                                for m in group_of.get(d, ()) if m != d)]
    tp = len(near_removed) - len(wrong)
    eligible = [(a, b, j) for a, b, j, kind in truth["pairs"]
                if kind != "exact" and j >= THRESHOLD and a not in filtered and b not in filtered]
    caught = [a in near_removed or b in near_removed for a, b, _ in eligible]
    by_bin = {}
    for lo, hi in zip(J_BINS, J_BINS[1:], strict=False):
        hits = [c for (_, _, j), c in zip(eligible, caught, strict=True) if lo <= j < hi]
        by_bin[f"{lo:.2f}-{min(hi, 1):.2f}"] = [sum(hits), len(hits)]
    decoys = [(a, b) for a, b, j, kind in truth["pairs"] if kind == "decoy" and j < THRESHOLD
              and a not in filtered and b not in filtered]
    planted_exact = sum(len(g["ids"]) - 1 for g in truth["groups"]
                        if g["kind"] == "exact" and not filtered & set(g["ids"]))
    wall = res["wall"]
    out = {"docs": n, "mb": nbytes / MB, "wall": wall, "docs_s": n / wall, "mb_s": nbytes / MB / wall,
           "kept": len(kept), "filtered": len(filtered), "junk_filtered": len(filtered & set(truth["junk"])),
           "junk": len(truth["junk"]), "exact_removed": len(exact_removed), "exact_planted": planted_exact,
           "near_removed": len(near_removed), "near_tp": tp,
           "precision": tp / len(near_removed) if near_removed else float("nan"),
           "recall": sum(caught) / len(caught) if caught else float("nan"), "pairs": len(caught),
           "recall_by_j": by_bin, "decoys_removed": sum(a in near_removed or b in near_removed for a, b in decoys),
           "decoys": len(decoys), "minhash": res.get("minhash"),
           # wrongly removed, by the planted group they belong to ("none": not planted)
           "wrong_by_group": {k: sum(kind_of.get(d, "none") == k for d in wrong) for k in ("near", "decoy", "none")}}
    if "full_wall" in res:
        st = res["stats"]
        out.update(full_wall=res["full_wall"], full_docs_s=n / res["full_wall"], full_mb_s=nbytes / MB / res["full_wall"],
                   stage_seconds=st["stages"], dropped=st["dropped"], stages=res["stages"], labelers=res["labelers"])
    if "steps" in res:
        out["step_seconds"] = res["steps"]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sysres = {k: v for k, v in results["systems"].items() if "mb_s" in v}
    bars = [(f"{k} (curation)" if "full_wall" in v else k, v["mb_s"]) for k, v in sysres.items()]
    bars += [(f"{k} (full pipeline)", v["full_mb_s"]) for k, v in sysres.items() if "full_mb_s" in v]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.barh([b for b, _ in bars], [v for _, v in bars], color="tab:blue")
    ax1.set_xlabel("MB/s (higher is better)")
    ax1.set_title(f"throughput, {results['mb']:.0f} MB, {results['workers']} workers")
    names = list(sysres)
    x = np.arange(len(names))
    for off, key, color in ((-0.2, "precision", "tab:green"), (0.2, "recall", "tab:orange")):
        ax2.bar(x + off, [sysres[k][key] for k in names], 0.4, label=f"near-dup {key}", color=color)
    ax2.axhline(0.95, color="tab:orange", ls="--", lw=1)
    ax2.axhline(0.99, color="tab:green", ls="--", lw=1)
    ax2.set_xticks(x, names)
    ax2.set_ylim(0, 1.05)
    ax2.set_title(f"near-dup precision / recall at J >= {THRESHOLD} (targets dashed)")
    ax2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _f(x: float, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def report(results: dict, stem: str) -> None:
    s = results["systems"]
    lines = [f"### Data benchmark ({results['date']}, {results['mb']:.0f} MB, {results['docs']} documents in "
             f"{results['files']} files, {results['workers']} workers, {results['cpus']} CPUs)", "",
             f"Planted: {results['planted']}", "",
             "| system | docs/s | MB/s | wall (s) | filtered (junk) | exact dups removed (planted) | near-dup removed "
             "| near-dup precision | near-dup recall (pairs) | decoys removed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in s.items():
        if "error" in m:
            lines.append(f"| {name} | failed: {m['error'][-120:]} | | | | | | | | |")
            continue
        label = f"{name} curation" if "full_wall" in m else name
        lines.append(f"| {label} | {m['docs_s']:.0f} | {m['mb_s']:.2f} | {m['wall']:.1f} | {m['filtered']} "
                     f"({m['junk_filtered']}/{m['junk']}) | {m['exact_removed']} ({m['exact_planted']}) | "
                     f"{m['near_removed']} | {_f(m['precision'])} | {_f(m['recall'])} ({m['pairs']}) | "
                     f"{m['decoys_removed']}/{m['decoys']} |")
        if "full_wall" in m:
            lines.append(f"| {name} full pipeline | {m['full_docs_s']:.0f} | {m['full_mb_s']:.2f} | "
                         f"{m['full_wall']:.1f} | | | | | | |")
    lines.append("")
    r, d = s.get("raygen", {}), s.get("datatrove", {})
    if "mb_s" in r and "mb_s" in d:
        lines.append(f"raygen curation / datatrove throughput: **{r['mb_s'] / d['mb_s']:.2f}×** (target ≥ 1.5×); "
                     f"raygen full pipeline / datatrove: {r['full_mb_s'] / d['mb_s']:.2f}×")
        lines.append(f"targets: raygen recall {_f(r['recall'])} (≥ 0.95, and ≥ datatrove's {_f(d['recall'])}), "
                     f"precision {_f(r['precision'])} (≥ 0.99)")
    for name, m in s.items():
        if "recall_by_j" in m:
            bins = ", ".join(f"J {k}: {c}/{t}" for k, (c, t) in m["recall_by_j"].items())
            lines.append(f"{name} recall by true Jaccard: {bins}; wrongly removed near duplicates by planted group: "
                         f"{m['wrong_by_group']}; minhash {m['minhash']}")
    if "stage_seconds" in r:
        lines.append(f"raygen stage seconds: {r['stage_seconds']}; dropped: {r['dropped']}")
        if (r["dropped"].get("duplicate", 0), r["dropped"].get("near_duplicate", 0)) != (r["exact_removed"],
                                                                                          r["near_removed"]):
            lines.append("NOTE: raygen's own duplicate / near_duplicate counts differ from the ground-truth split")
    if "step_seconds" in d:
        lines.append(f"datatrove run seconds: {d['step_seconds']}")
    text = "\n".join(lines)
    print("\n" + text)
    (OUT / f"{stem}.md").write_text(text + "\n")
    (OUT / f"{stem}.json").write_text(json.dumps(results, indent=1))
    try:
        plot(results, OUT / f"{stem}.png")
        print(f"plot: {OUT / f'{stem}.png'}")
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=500, help="corpus size in MB (10^6 bytes of text)")
    ap.add_argument("--files", type=int, default=0, help="JSONL files (0: one per ~8 MB, at least 8)")
    ap.add_argument("--workers", type=int, default=2, help="Ray num_cpus for raygen; tasks and workers for datatrove")
    ap.add_argument("--systems", default="raygen,datatrove")
    ap.add_argument("--quick", action="store_true", help="a ~5 MB corpus: a smoke run")
    ap.add_argument("--tmp", default=None, help="where the corpus and the outputs go (default: the system's temp)")
    ap.add_argument("--overrides", nargs="*", default=[], help="raygen config overrides, e.g. data.near_dedup.bands=20 "
                                                                "(datatrove gets the same shingle, bands, rows)")
    for flag in ("--worker", "--work", "--corpus", "--truth", "--result"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    for flag in ("--shingle", "--bands", "--rows"):
        ap.add_argument(flag, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(args)

    from raygen.config import load_config

    nd = load_config(None, args.overrides).data.near_dedup
    minhash = {"shingle": nd.shingle, "bands": nd.bands, "rows": nd.rows}
    mb = 5 if args.quick else args.mb
    num_files = args.files or max(8, round(mb / 8))
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.tmp, prefix="data_bench-") as tmpdir:
        tmp = Path(tmpdir)
        _log(f"generating {mb:.0f} MB in {num_files} files under {tmp / 'corpus'}")
        t = time.time()
        truth = make_corpus(tmp / "corpus", mb, num_files)
        (tmp / "truth.json").write_text(json.dumps(truth))
        kinds = {k: sum(len(g["ids"]) - 1 for g in truth["groups"] if g["kind"] == k) for k in ("exact", "near", "decoy")}
        near_pairs = [p for p in truth["pairs"] if p[3] != "exact" and p[2] >= THRESHOLD]
        planted = (f"{kinds['exact']} exact copies, {kinds['near']} near copies ({len(near_pairs)} pairs at J ≥ 0.8, "
                   f"min J {min((p[2] for p in near_pairs), default=float('nan')):.3f}), {kinds['decoy']} decoy copies "
                   f"(J {min((p[2] for p in truth['pairs'] if p[3] == 'decoy'), default=0):.2f}-"
                   f"{max((p[2] for p in truth['pairs'] if p[3] == 'decoy'), default=0):.2f}), {len(truth['junk'])} junk")
        _log(f"corpus: {len(truth['docs'])} documents, {truth['bytes'] / MB:.1f} MB in {time.time() - t:.0f} s; {planted}")
        results = {"date": time.strftime("%Y-%m-%d"), "mb": truth["bytes"] / MB, "docs": len(truth["docs"]),
                   "files": num_files, "workers": args.workers, "cpus": os.cpu_count(), "planted": planted,
                   "quick": args.quick, "overrides": args.overrides, "systems": {}}
        for kind in args.systems.split(","):
            res = spawn(kind, tmp, args, minhash)
            results["systems"][kind] = res if "error" in res else evaluate(res, truth)
    report(results, "data_bench_quick" if args.quick else "data_bench")


if __name__ == "__main__":
    main()
