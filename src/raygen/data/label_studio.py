"""Human in the loop with Label Studio: a stratified sample out as tasks, the annotators' choices back in.

Pure functions, no Ray and no Label Studio SDK: the files are Label Studio's documented JSON formats.

1. `export_label_studio` writes a JSON list of tasks, `[{"id": 1, "data": {"text", "doc_id", <stratum>}}]`,
   to import in a project (Import → upload the file).
2. `label_studio_config` is the matching labeling interface: the text and one Choices tag (Settings →
   Labeling Interface → Code).
3. After annotation, Export as "JSON" (tasks with `annotations[].result[].value.choices`) or "JSON-MIN"
   (one flat record per annotation: the task's data fields plus `<from_name>: choice`), and
   `import_label_studio` reads either back into {doc_id: label}.

The sample is chosen by hashing (seed, doc_id), not by the order rows arrive in: Ray Data does not keep
row order across runs, and the same seed must give annotators the same documents.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from xml.sax.saxutils import quoteattr

from raygen.errors import DataError

# Keys of a JSON-MIN record that are annotation metadata, not task data or a control's value.
_MIN_META = frozenset({"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement"})


def _plain(value):
    """JSON-ready: numpy scalars (np.str_, np.int64, ...) become Python values."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _rank(seed: int, doc_id) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()


def allocate(counts: Mapping, sample_size: int) -> dict:
    """Rows to take per stratum: proportional to its size (largest remainder), at least one per stratum
    when sample_size allows, never more than the stratum holds. Ties break by the stratum's order in counts."""
    total = sum(counts.values())
    if sample_size >= total:
        return dict(counts)
    quota = {s: sample_size * n / total for s, n in counts.items()}
    take = {s: min(n, max(1, math.floor(quota[s]))) if sample_size >= len(counts) else math.floor(quota[s])
            for s, n in counts.items()}
    keys = list(counts)
    # Too many (the at-least-one bump): take back from strata furthest above their quota (that keep one).
    while sum(take.values()) > sample_size:
        s = max((k for k in keys if take[k] > 1), key=lambda k: take[k] - quota[k])
        take[s] -= 1
    # Too few (rounding down): give to strata with the largest remainder that still have rows.
    while sum(take.values()) < sample_size:
        s = max((k for k in keys if take[k] < counts[k]), key=lambda k: quota[k] - take[k])
        take[s] += 1
    return take


def stratified_sample(rows: Sequence[Mapping], sample_size: int, stratify_by: str | None, seed: int,
                      id_key: str = "doc_id") -> list[int]:
    """Indices of the sampled rows, in a seed-shuffled order (strata interleaved). Within a stratum the
    rows with the smallest hash of (seed, doc_id) are taken, so the sample does not depend on row order."""
    strata: dict = {}
    for i, row in enumerate(rows):
        strata.setdefault(_plain(row.get(stratify_by)) if stratify_by else None, []).append(i)
    ranks = [_rank(seed, _plain(row[id_key])) for row in rows]
    counts = {s: len(strata[s]) for s in sorted(strata, key=str)}  # a fixed order for tie breaks
    picked = []
    for s, k in allocate(counts, sample_size).items():
        picked += sorted(strata[s], key=lambda i: (ranks[i], i))[:k]
    return sorted(picked, key=lambda i: (ranks[i], i))


def export_label_studio(rows: Iterable[Mapping], path: str, sample_size: int, stratify_by: str | None = None,
                        seed: int = 0, text_key: str = "text", id_key: str = "doc_id") -> list[dict]:
    """Write a stratified sample of rows as Label Studio tasks (a JSON list) to path; returns the tasks.

    Each task is {"id": n, "data": {"text", "doc_id", <stratify_by>}}, ids from 1. Strata get shares
    proportional to their size, at least one each when sample_size allows (see `allocate`)."""
    rows = list(rows)
    if sample_size < 1:
        raise DataError(f"sample_size must be at least 1 (got {sample_size})")
    for key in (text_key, id_key):
        lacking = next((i for i, row in enumerate(rows) if key not in row), None)
        if lacking is not None:
            raise DataError(f"row {lacking} has no {key!r} column; Label Studio tasks need {text_key!r} and {id_key!r}")
    if stratify_by and rows and not any(stratify_by in row for row in rows):
        raise DataError(f"no row has the stratify_by column {stratify_by!r}")
    ids = [_plain(row[id_key]) for row in rows]
    if len(set(ids)) != len(ids):
        raise DataError(f"{id_key!r} is not unique; labels come back keyed by it")
    tasks = []
    for n, i in enumerate(stratified_sample(rows, sample_size, stratify_by, seed, id_key), start=1):
        data = {"text": str(rows[i][text_key]), "doc_id": ids[i]}
        if stratify_by:
            data[stratify_by] = _plain(rows[i].get(stratify_by))
        tasks.append({"id": n, "data": data})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tasks, f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)  # never a half-written file where Label Studio or a rerun looks
    return tasks


def label_studio_config(choices: Sequence[str], from_name: str = "label") -> str:
    """A Label Studio labeling interface for the exported tasks: the text and one single-choice tag."""
    if not choices:
        raise DataError("label_studio_config needs at least one choice")
    lines = ["<View>", '  <Text name="text" value="$text"/>',
             f'  <Choices name={quoteattr(from_name)} toName="text" choice="single" showInline="true">']
    lines += [f"    <Choice value={quoteattr(c)}/>" for c in choices]
    return "\n".join([*lines, "  </Choices>", "</View>"])


def _choice_label(choices, where: str):
    """A Choices value as a label: the one choice as a string, several as a list."""
    if isinstance(choices, str):
        return choices
    if isinstance(choices, Mapping) and "choices" in choices:  # JSON-MIN, multiple choices
        choices = choices["choices"]
    if isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices):
        return choices[0] if len(choices) == 1 else list(choices)
    raise DataError(f"{where}: expected Choices value(s), got {choices!r}")


def _when(record: Mapping) -> str:
    # ISO 8601 timestamps as Label Studio writes them sort as strings; edited annotations count as of the edit.
    return str(record.get("updated_at") or record.get("created_at") or "")


def _from_full(task: Mapping, n: int, from_name: str | None, id_key: str):
    """(doc_id, label, when) of a task's latest non-cancelled annotation with a choice, or None."""
    data = task.get("data")
    if not isinstance(data, Mapping):
        raise DataError(f"task #{n}: 'data' is missing or not an object")
    annotations = task.get("annotations", task.get("completions"))  # "completions" before Label Studio 1.0
    if not isinstance(annotations, list):
        raise DataError(f"task #{n}: 'annotations' is not a list")
    best = None
    for pos, ann in enumerate(annotations):
        if not isinstance(ann, Mapping) or not isinstance(ann.get("result"), list):
            raise DataError(f"task #{n}: annotation {pos} has no 'result' list")
        if ann.get("was_cancelled") or ann.get("skipped"):
            continue
        for r in ann["result"]:
            if not isinstance(r, Mapping) or not isinstance(r.get("value"), Mapping):
                raise DataError(f"task #{n}: annotation {pos} has a result without a 'value' object")
            if "choices" in r["value"] and (from_name is None or r.get("from_name") == from_name):
                label = _choice_label(r["value"]["choices"], f"task #{n}, annotation {pos}")
                if best is None or (_when(ann), pos) >= best[:2]:
                    best = (_when(ann), pos, label)
                break
    if best is None:
        return None
    if id_key not in data:
        raise DataError(f"task #{n} has no data.{id_key}; was it exported by export_label_studio?")
    return data[id_key], best[2], best[0]


def import_label_studio(path: str, from_name: str | None = "label", id_key: str = "doc_id") -> dict:
    """{doc_id: label} from a Label Studio export, "JSON" or "JSON-MIN".

    The label is the chosen value of the Choices tag named from_name (None: the first Choices tag of each
    annotation; JSON only, since a JSON-MIN record cannot tell a control from a data field), a list when
    several were chosen. Tasks without annotations, cancelled (skipped) annotations and annotations
    without that choice are skipped; of several, the latest (updated_at, else created_at) wins."""
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except OSError as exc:
        raise DataError(f"cannot read Label Studio export {path}: {exc.strerror}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not a JSON file (export from Label Studio as JSON or JSON-MIN): {exc}") from exc
    if isinstance(payload, Mapping):
        payload = [payload]  # a single task, as cloud target storage writes them
    if not isinstance(payload, list):
        raise DataError(f"{path}: expected a JSON list of tasks, got {type(payload).__name__}")
    found: dict = {}  # doc_id -> (when, label)
    for n, rec in enumerate(payload):
        if not isinstance(rec, Mapping):
            raise DataError(f"{path}: task #{n} is not an object")
        if "data" in rec and ("annotations" in rec or "completions" in rec):
            got = _from_full(rec, n, from_name, id_key)
            if got is None:
                continue
            doc_id, label, when = got
        elif "data" in rec:
            continue  # a task nobody annotated yet (an export with "only annotated tasks" unticked)
        else:  # JSON-MIN: the task's data flattened, one record per annotation
            if from_name is None:
                raise DataError(f"{path} looks like a JSON-MIN export: name the Choices tag (from_name)")
            if from_name not in rec or from_name in _MIN_META:
                continue
            if id_key not in rec:
                raise DataError(f"{path}: record #{n} has no {id_key!r}; was it exported by export_label_studio?")
            doc_id, label, when = rec[id_key], _choice_label(rec[from_name], f"{path}: record #{n}"), _when(rec)
        if doc_id not in found or when >= found[doc_id][0]:
            found[doc_id] = (when, label)
    return {doc_id: label for doc_id, (_, label) in found.items()}
