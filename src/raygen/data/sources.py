"""Collect: every source as one lazy Ray Dataset of documents with provenance.

A source is a local file, directory or glob, or a remote URI (s3://, gs://, http(s)://, anything pyarrow
or fsspec opens), of .txt .md .html .jsonl .json .csv .parquet, optionally compressed (.gz .zst). Files
are read by Ray tasks (`read_binary_files`), never on the driver; the driver only lists names.

Each row: doc_id, text, source (URI), offset (line of a .jsonl, row of a .csv/.parquet/.json list, 0 for
a whole-file document), format, license, weight, collected_at, raw_hash (of the text as collected: the manifest key), drop_reason.
Records that cannot be read (bad JSON, no text field, undecodable bytes, empty files, a missing text
column) keep a drop_reason from QUARANTINE and go to the quarantine file with their source; nothing is
silently skipped.
"""

from __future__ import annotations

import csv
import glob as globlib
import gzip
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import ray

from raygen.data.clean import content_hash
from raygen.errors import DataError

FORMATS = {".txt": "text", ".md": "text", ".html": "html", ".htm": "html", ".jsonl": "jsonl", ".json": "json",
           ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
DROP_BAD_JSON = "bad_json"
DROP_NO_TEXT = "no_text_field"
DROP_UNDECODABLE = "undecodable"
DROP_EMPTY_FILE = "empty_file"
DROP_BAD_FILE = "unreadable_file"
QUARANTINE = (DROP_BAD_JSON, DROP_NO_TEXT, DROP_UNDECODABLE, DROP_EMPTY_FILE, DROP_BAD_FILE)
EXTENSIONS = [s[1:] for s in FORMATS] + [s[1:] for s in COMPRESSIONS]  # for remote listings
COLUMNS = ("doc_id", "text", "source", "offset", "format", "license", "weight", "collected_at", "raw_hash",
           "drop_reason")


def file_format(name: str) -> tuple[str | None, str | None]:
    """(format, compression) from a file name, e.g. 'a.jsonl.gz' -> ('jsonl', 'gzip'); format None: not ours."""
    p = Path(name.split("?")[0])
    suffixes = [s.lower() for s in p.suffixes]
    comp = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if comp:
        suffixes = suffixes[:-1]
    return (FORMATS.get(suffixes[-1]) if suffixes else None), comp


def decompress(data: bytes, compression: str | None) -> bytes:
    """By magic bytes, not only by name: the reader may already have inflated a .gz it recognized."""
    if compression == "gzip" and data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if compression == "zstd" and data[:4] == b"\x28\xb5\x2f\xfd":
        import pyarrow as pa

        with pa.input_stream(pa.py_buffer(data), compression="zstd") as s:
            return s.read()
    return data


def doc_id(source: str, offset: int) -> int:
    """Stable int63 id of a record: where it came from, not what it says (duplicates keep distinct ids)."""
    return int.from_bytes(hashlib.blake2b(f"{source}#{offset}".encode(), digest_size=8).digest(), "little") >> 1


def parse_file(data: bytes, source: str, fmt: str, text_key: str) -> list[tuple[int, str, str]]:
    """One file's bytes -> [(offset, text, drop_reason)]. Pure; never raises on bad content."""
    if not data.strip():
        return [(0, "", DROP_EMPTY_FILE)]
    if fmt == "parquet":
        return _parse_parquet(data, text_key)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return [(0, data.decode("utf-8", errors="replace")[:2000], DROP_UNDECODABLE)]
    if fmt in ("text", "html"):
        return [(0, text, "")]
    if fmt == "jsonl":
        out = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                out.append((i, *_json_text(line, text_key)))
        return out or [(0, "", DROP_EMPTY_FILE)]
    if fmt == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return [(0, text[:2000], DROP_BAD_JSON)]
        rows = value if isinstance(value, list) else [value]
        return [(i, *_row_text(r, text_key)) for i, r in enumerate(rows)] or [(0, "", DROP_EMPTY_FILE)]
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or text_key not in reader.fieldnames:
            return [(0, text[:2000], DROP_NO_TEXT)]
        return [(i, *_row_text(r, text_key)) for i, r in enumerate(reader)] or [(0, "", DROP_EMPTY_FILE)]
    raise DataError(f"unknown format {fmt!r}")


def _json_text(line: str, key: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return line[:2000], DROP_BAD_JSON
    return _row_text(row, key)


def _row_text(row, key: str) -> tuple[str, str]:
    value = row.get(key) if isinstance(row, dict) else None
    if isinstance(value, str) and value:
        return value, ""
    return (json.dumps(row)[:2000] if not isinstance(row, str) else row[:2000]), DROP_NO_TEXT


def _parse_parquet(data: bytes, key: str) -> list[tuple[int, str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        return [(0, f"{exc.__class__.__name__}: {exc}"[:2000], DROP_BAD_FILE)]
    if key not in table.column_names:
        return [(0, f"columns: {table.column_names}", DROP_NO_TEXT)]
    return [(i, v, "") if isinstance(v, str) and v else (i, "", DROP_NO_TEXT)
            for i, v in enumerate(table.column(key).to_pylist())]


# -- the Ray shell -----------------------------------------------------------------------------------------
def _expand(spec: str) -> list[str]:
    """A local file, directory or glob -> the files of our formats under it; a URI passes through."""
    if "://" in spec:
        return [spec]
    matches = sorted(globlib.glob(spec, recursive=True)) if any(c in spec for c in "*?[") else [spec]
    files = []
    for m in matches:
        p = Path(m)
        if not p.exists():
            raise DataError(f"data source {spec} does not exist (give files, directories, globs or URIs of "
                            f".txt/.md/.html/.jsonl/.json/.csv/.parquet, optionally .gz/.zst)")
        for f in (sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]):
            if file_format(f.name)[0]:
                files.append(str(f.resolve()))
    if not files:
        raise DataError(f"data source {spec} holds no .txt/.md/.html/.jsonl/.json/.csv/.parquet files")
    return files


def _explode(batch: dict, text_key: str, license: str, weight: float, collected_at: str) -> dict:
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for data, path in zip(batch["bytes"], batch["path"], strict=True):
        fmt, comp = file_format(path)
        try:
            raw = decompress(bytes(data), comp)
        except Exception as exc:  # a truncated .gz/.zst
            records = [(0, f"{exc.__class__.__name__}: {exc}"[:2000], DROP_BAD_FILE)]
        else:
            records = parse_file(raw, path, fmt or "text", text_key)
        for offset, text, reason in records:
            cols["doc_id"].append(doc_id(path, offset))
            cols["text"].append(text)
            cols["source"].append(path)
            cols["offset"].append(offset)
            cols["format"].append(fmt or "text")
            cols["license"].append(license)
            cols["weight"].append(weight)
            cols["collected_at"].append(collected_at)
            cols["raw_hash"].append(content_hash(text))
            cols["drop_reason"].append(reason)
    return {k: np.array(v, dtype=object if k not in ("doc_id", "offset", "weight") else None) for k, v in cols.items()}


SCHEMA = None  # built on first use (pyarrow imported lazily): every source yields exactly these types


def _schema():
    import pyarrow as pa

    global SCHEMA
    if SCHEMA is None:
        types = {"doc_id": pa.int64(), "offset": pa.int64(), "weight": pa.float64()}
        SCHEMA = pa.schema([(c, types.get(c, pa.large_string())) for c in COLUMNS])
    return SCHEMA


def _cast(batch):
    """Same column types from every source, so unions and shuffles can concatenate their blocks."""
    return batch.select(list(COLUMNS)).cast(_schema())


def builtin_documents(collected_at: str = "") -> list[dict]:
    """CPython's own documentation topics: every Python install ships them (79 docs, ~0.5 MB)."""
    from pydoc_data.topics import topics

    out = []
    for name, text in sorted(topics.items()):
        src = f"builtin:pydoc_data.topics/{name}"
        out.append({"doc_id": doc_id(src, 0), "text": text, "source": src, "offset": 0, "format": "text",
                    "license": "PSF-2.0", "weight": 1.0, "collected_at": collected_at, "raw_hash": content_hash(text),
                    "drop_reason": ""})
    return out


def collect(source_specs: list[dict], builtin: bool, collected_at: str | None = None) -> ray.data.Dataset:
    """Lazy dataset over every source. source_specs: SourceConfig dicts (path, text_key, license, weight,
    max_docs). Files are read and parsed by Ray tasks; a source's cap keeps its first max_docs records."""
    collected_at = collected_at or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    parts: list[ray.data.Dataset] = []
    if builtin:
        parts.append(ray.data.from_items(builtin_documents(collected_at)))
    for spec in source_specs:
        files = _expand(spec["path"])
        ds = ray.data.read_binary_files(files, include_paths=True,
                                        file_extensions=None if files[0] != spec["path"] else EXTENSIONS) \
            .map_batches(_explode, batch_format="numpy", batch_size=16,
                         fn_kwargs={"text_key": spec.get("text_key", "text"), "license": spec.get("license") or "",
                                    "weight": float(spec.get("weight", 1.0)), "collected_at": collected_at})
        if spec.get("max_docs"):
            ds = ds.limit(int(spec["max_docs"]))
        parts.append(ds)
    if not parts:
        raise DataError("no data sources: enable data.builtin or add data.sources (or --data PATH)")
    parts = [p.map_batches(_cast, batch_format="pyarrow") for p in parts]
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
