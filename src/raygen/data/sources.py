"""Collect: the built-in corpus and local files as one Ray Dataset of {text, source, drop_reason}."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import ray

from raygen.errors import DataError

TEXT_SUFFIXES = {".txt", ".md"}
JSONL_SUFFIXES = {".jsonl"}
DROP_BAD_JSON = "bad_json"
DROP_NO_TEXT = "no_text_field"


def builtin_documents() -> list[dict]:
    """CPython's own documentation topics: every Python install ships them (79 docs, ~0.5 MB)."""
    from pydoc_data.topics import topics

    return [{"text": text, "source": f"builtin:pydoc_data.topics/{name}", "drop_reason": ""}
            for name, text in sorted(topics.items())]


def list_files(paths: list[str]) -> tuple[list[str], list[str]]:
    """(text files, jsonl files) under the given files or directories; names only, nothing is read."""
    text_files, jsonl_files = [], []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"data path {p} does not exist (pass files or directories of .txt/.md/.jsonl)")
        candidates = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        found = 0
        for f in candidates:
            if f.suffix.lower() in TEXT_SUFFIXES:
                text_files.append(str(f))
            elif f.suffix.lower() in JSONL_SUFFIXES:
                jsonl_files.append(str(f))
            else:
                continue
            found += 1
        if not found:
            raise DataError(f"data path {p} holds no .txt, .md or .jsonl files")
    return text_files, jsonl_files


def _decode_files(batch: dict) -> dict:
    # One document per file; undecodable bytes become U+FFFD rather than failing the run.
    texts = [b.decode("utf-8", errors="replace") for b in batch["bytes"]]
    return {"text": np.array(texts, dtype=object), "source": batch["path"],
            "drop_reason": np.array([""] * len(texts), dtype=object)}


def _parse_jsonl(batch: dict, text_key: str) -> dict:
    texts, reasons = [], []
    for line in batch["text"]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            texts.append(line)
            reasons.append(DROP_BAD_JSON)
            continue
        value = row.get(text_key) if isinstance(row, dict) else None
        texts.append(value if isinstance(value, str) else "")
        reasons.append("" if isinstance(value, str) else DROP_NO_TEXT)
    return {"text": np.array(texts, dtype=object), "source": batch["path"],
            "drop_reason": np.array(reasons, dtype=object)}


def collect(builtin: bool, paths: list[str], jsonl_text_key: str = "text") -> ray.data.Dataset:
    """Lazy dataset over every source. Files are read by Ray tasks, never on the driver."""
    parts: list[ray.data.Dataset] = []
    if builtin:
        parts.append(ray.data.from_items(builtin_documents()))
    text_files, jsonl_files = list_files(paths)
    if text_files:
        parts.append(ray.data.read_binary_files(text_files, include_paths=True)
                     .map_batches(_decode_files, batch_format="numpy"))
    if jsonl_files:
        # read_text yields one row per line; blank lines are skipped by Ray.
        parts.append(ray.data.read_text(jsonl_files, include_paths=True)
                     .map_batches(_parse_jsonl, batch_format="numpy", fn_kwargs={"text_key": jsonl_text_key}))
    if not parts:
        raise DataError("no data sources: enable data.builtin or pass --data PATH")
    ds = parts[0]
    return ds.union(*parts[1:]) if len(parts) > 1 else ds
