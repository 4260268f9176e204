"""Near-duplicate removal by MinHash-LSH as Ray Data operations: signatures → band keys → buckets →
candidate pairs → exact verification → connected components → keep one document per component.

    docs ──map_batches──▶ (group, key, doc_id) one row per band        signatures never leave the map task
         ──groupby(group).map_groups──▶ candidate edges within buckets  one vectorized pass per partition
         ──one task──▶ distinct candidate edges, sorted (an ObjectRef)
    docs ──map_batches(edges)──▶ texts routed to each edge's partition  only docs on a candidate edge
         ──groupby(group).map_groups──▶ edges with shingle Jaccard ≥ threshold
         ──one task──▶ union-find: {doc_id → root} for non-roots (an ObjectRef)
    docs ──map_batches(labels)──▶ kept | dropped (drop_reason, duplicate_of)

The driver holds only ObjectRefs and a few counts: no signature, text or edge list passes through it.
The two single tasks see only candidate edges (doc ids, 16 bytes each), which exist only between
documents that share a band: near duplicates plus the false candidates of the S-curve.

Buckets to edges. Each bucket member is paired with the (up to) 8 smallest ids of its bucket below its
own: all pairs in buckets of up to 9 documents, k·8 instead of k(k-1)/2 in larger ones (a page copied
10,000 times costs 80,000 edges per band, not 50 million). A star on the bucket minimum alone is not
enough once edges are verified: in a chain A~B~C the bands B and C share are often shared by A too, so
C's only partner would be A, which it is too far from (this happened on the test corpus).

Verification is exact: the Jaccard of the two shingle sets, computed where both texts meet. The
signature's own estimate (equal-value fraction) would be free but has standard error
sqrt(J(1-J)/num_perm) ≈ 0.037 at J = 0.8 with 120 permutations: cut at 0.8 it drops half the pairs at
J = 0.8, cut lower it lets J = 0.7 pairs through. Exact sets cost one shuffle of the texts of the
documents on candidate edges, which are few. Because the LSH curve is set below the threshold (see
`minhash.py`), banding gives recall and verification gives precision.

Survivors. Verified edges form a graph; a greedy dominating set (`minhash.dominating_survivors`) keeps
the best-connected documents and drops their neighbours with `duplicate_of` = the kept neighbour, so
every dropped document is itself within the threshold of a kept one (precision holds on chains: A~B~C
keeps B; a plain smallest-id-per-component rule would keep A and drop C although J(A, C) < 0.8).
Components (union-find) are still counted: num_components is the number of duplicate groups.

Pass a materialized dataset (the pipeline's `deduped` is): it is read three times — signatures, text
routing and the final split. doc_id must be a unique integer column.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from raygen.data.minhash import EMPTY, MinHasher, connected_components, dominating_survivors, jaccard, mix64, shingle_hashes
from raygen.errors import DataError

DROP_NEAR_DUPLICATE = "near_duplicate"
_ROWS_PER_PARTITION = 1_000_000  # band rows per shuffle partition (~24 MB): partitions are processed vectorized
_GROUPS_PER_PARTITION = 4  # group values per partition, so hash placement of values balances
# Smallest ids of its bucket each member is paired with. One (a star on the bucket minimum) is not enough:
# in a chain A~B~C, B and C often share only buckets that A is in too, and C→A fails verification.
_ANCHORS = 8


@dataclass
class NearDedupStats:
    num_docs: int  # documents in
    num_kept: int  # documents out (num_kept + num_dropped == num_docs)
    num_dropped: int  # near duplicates removed
    num_buckets: int  # (band, key) buckets holding two or more documents
    num_candidate_pairs: int  # distinct document pairs those buckets give (each member × up to 8 smaller ids)
    num_verified_pairs: int  # candidate edges with shingle Jaccard >= threshold (all of them without verify)
    num_components: int  # near-duplicate groups; each keeps one document
    seconds: float


_EDGES = pa.schema([("src", pa.int64()), ("dst", pa.int64())])


def _group_of(ids: np.ndarray, groups: int) -> np.ndarray:
    return (mix64(ids.astype(np.int64).view(np.uint64)) % np.uint64(groups)).astype(np.int64)


def _band_rows(batch: pa.Table, hasher: MinHasher, text_col: str, id_col: str, groups: int) -> pa.Table:
    """One row per (document, band): the signature is computed and dropped here."""
    sig = hasher.signatures(batch[text_col])  # (n, num_perm) uint32
    has = ~(sig == EMPTY).all(axis=1)  # documents without words have no bands
    keys = hasher.band_keys(sig[has]).ravel()  # (m * bands,) uint64
    ids = np.repeat(np.asarray(batch[id_col], dtype=np.int64)[has], hasher.bands)
    return pa.table({"group": (keys % np.uint64(groups)).astype(np.int64), "key": keys.view(np.int64),
                     "doc_id": ids})


def _bucket_edges(batch: dict[str, np.ndarray]) -> pa.Table:
    """Within one group: sort by (key, doc_id); pair every bucket member with the bucket's `_ANCHORS`
    smallest ids below its own (all pairs in buckets of up to _ANCHORS + 1 documents)."""
    order = np.lexsort((batch["doc_id"], batch["key"]))
    key, ids = batch["key"][order], batch["doc_id"][order]
    head = np.ones(len(key), bool)
    head[1:] = key[1:] != key[:-1]
    head_row = np.maximum.accumulate(np.where(head, np.arange(len(key)), 0))
    rank = np.arange(len(key)) - head_row  # position in the bucket, by doc_id
    src, dst, first = [], [], []
    for m in range(_ANCHORS):
        rows = np.flatnonzero(rank > m)
        if len(rows) == 0:
            break
        src.append(ids[rows])
        dst.append(ids[head_row[rows] + m])
        first.append(rank[rows] == 1 if m == 0 else np.zeros(len(rows), bool))  # one per bucket: counts them
    if not src:
        return pa.table({"src": np.zeros(0, np.int64), "dst": np.zeros(0, np.int64), "first": np.zeros(0, bool)})
    src, dst, first = np.concatenate(src), np.concatenate(dst), np.concatenate(first)
    edge = src != dst  # a repeated doc_id is not an edge
    return pa.table({"src": src[edge], "dst": dst[edge], "first": first[edge]})


@ray.remote(num_returns=3)
def _edge_index(*tables: pa.Table) -> tuple[pa.Table, np.ndarray, dict[str, int]]:
    """Distinct candidate edges sorted by src, the sorted distinct dsts, and counts."""
    t = pa.concat_tables(tables) if tables else pa.table({"src": [], "dst": [], "first": []})
    src = np.asarray(t["src"], dtype=np.int64)
    dst = np.asarray(t["dst"], dtype=np.int64)
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    new = np.ones(len(src), bool)
    new[1:] = (src[1:] != src[:-1]) | (dst[1:] != dst[:-1])
    edges = pa.table({"src": src[new], "dst": dst[new]}, schema=_EDGES)
    counts = {"num_buckets": int(np.asarray(t["first"]).sum()), "num_candidate_pairs": len(edges)}
    return edges, np.unique(dst), counts


def _route_texts(batch: pa.Table, edges_ref, anchors_ref, text_col: str, id_col: str, groups: int) -> pa.Table:
    """Send each document's text to where it is needed: once as the anchor of the edges pointing at it
    (to its own group), once per edge leaving it (to that edge's dst's group). Others emit nothing."""
    edges, anchors = ray.get([edges_ref, anchors_ref])
    src, dst = np.asarray(edges["src"]), np.asarray(edges["dst"])
    ids = np.asarray(batch[id_col], dtype=np.int64)
    pos = np.minimum(np.searchsorted(anchors, ids), max(len(anchors) - 1, 0))
    anchor_rows = np.flatnonzero(anchors[pos] == ids) if len(anchors) else np.zeros(0, np.int64)
    lo, hi = np.searchsorted(src, ids, "left"), np.searchsorted(src, ids, "right")
    n_out = hi - lo  # edges leaving each document
    edge_rows = np.repeat(np.arange(len(ids)), n_out)  # (E,) document row of each outgoing edge
    edge_idx = np.arange(n_out.sum()) - np.repeat(np.cumsum(n_out) - n_out, n_out) + np.repeat(lo, n_out)
    rows = np.concatenate([anchor_rows, edge_rows])
    to = np.concatenate([ids[anchor_rows], dst[edge_idx]])  # the anchor doc of every output row
    return pa.table({
        "group": _group_of(to, groups), "dst": to,
        "src": np.concatenate([ids[anchor_rows], ids[edge_rows]]),
        "anchor": np.concatenate([np.ones(len(anchor_rows), bool), np.zeros(len(edge_rows), bool)]),
        "text": batch[text_col].take(pa.array(rows, pa.int64())),
    })


def _verify_group(batch: pa.Table, shingle_size: int, threshold: float) -> pa.Table:
    """Exact shingle Jaccard of every edge in one group; keep those at or above the threshold."""
    anchor = np.asarray(batch["anchor"], dtype=bool)
    src, dst = np.asarray(batch["src"]), np.asarray(batch["dst"])
    hashes, counts = shingle_hashes(batch["text"], shingle_size)
    offs = np.concatenate([[0], np.cumsum(counts)])
    anchor_row = {int(dst[i]): i for i in np.flatnonzero(anchor)}
    sets: dict[int, np.ndarray] = {}

    def shingles(i: int) -> np.ndarray:
        if i not in sets:
            sets[i] = np.unique(hashes[offs[i]:offs[i + 1]])
        return sets[i]

    keep_src, keep_dst = [], []
    for i in np.flatnonzero(~anchor):
        j = anchor_row.get(int(dst[i]))
        if j is not None and jaccard(shingles(i), shingles(j)) >= threshold:
            keep_src.append(src[i])
            keep_dst.append(dst[i])
    return pa.table({"src": np.array(keep_src, np.int64), "dst": np.array(keep_dst, np.int64)}, schema=_EDGES)


@ray.remote(num_returns=2)
def _components(*tables: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """Union-find over the verified edges: (doc_id, root) for every non-root, sorted by doc_id."""
    t = pa.concat_tables(tables) if tables else _EDGES.empty_table()
    pairs = list(zip(t["src"].to_numpy(), t["dst"].to_numpy(), strict=True))
    dropped = dominating_survivors(pairs)
    ids = np.array(sorted(dropped), np.int64)
    labels = pa.table({"doc_id": ids, "root": np.array([dropped[x] for x in ids], np.int64)})
    roots = connected_components(pairs)
    counts = {"num_verified_pairs": len(t), "num_dropped": len(ids),
              "num_components": len(set(roots.values()))}
    return labels, counts


def _select(batch: pa.Table, labels_ref, id_col: str, keep: bool) -> pa.Table:
    """Kept rows unchanged, or dropped rows with drop_reason and duplicate_of (their survivor's id)."""
    labels = ray.get(labels_ref)
    dropped_ids, roots = np.asarray(labels["doc_id"]), np.asarray(labels["root"])
    ids = np.asarray(batch[id_col], dtype=np.int64)
    pos = np.minimum(np.searchsorted(dropped_ids, ids), max(len(dropped_ids) - 1, 0))
    hit = dropped_ids[pos] == ids if len(dropped_ids) else np.zeros(len(ids), bool)
    if keep:
        return batch.filter(pa.array(~hit))
    out = batch.filter(pa.array(hit))
    reason = pa.array([DROP_NEAR_DUPLICATE] * len(out), pa.string())
    out = (out.set_column(out.schema.get_field_index("drop_reason"), "drop_reason", reason)
           if "drop_reason" in out.column_names else out.append_column("drop_reason", reason))
    return out.append_column("duplicate_of", pa.array(roots[pos[hit]], pa.int64()))


def _log(msg: str) -> None:
    print(f"[raygen dedup] {msg}", flush=True)


def _check_columns(ds: ray.data.Dataset, text_col: str, id_col: str) -> None:
    schema = ds.schema()
    types = dict(zip(schema.names, schema.types, strict=True)) if schema is not None else {}
    if text_col not in types or id_col not in types:
        raise DataError(f"near_dedup needs columns {text_col!r} and {id_col!r}; the dataset has {list(types)}")
    if not pa.types.is_integer(types[id_col]):
        raise DataError(f"near_dedup needs integer ids in {id_col!r} (got {types[id_col]}); number the documents")


def near_dedup(
    ds: ray.data.Dataset,
    *,
    text_col: str = "text",
    id_col: str = "doc_id",
    shingle_size: int = 5,
    bands: int = 24,
    rows: int = 5,
    threshold: float = 0.8,
    verify: bool = True,
    num_partitions: int | None = None,
    seed: int = 0,
) -> tuple[ray.data.Dataset, ray.data.Dataset, NearDedupStats]:
    """Remove near duplicates: (kept, dropped, stats).

    kept has ds's rows and columns minus the near duplicates; dropped has the others plus `drop_reason`
    (`"near_duplicate"`) and `duplicate_of` (the kept doc_id of their component). Both are lazy.
    shingle_size: words per shingle; bands × rows: the LSH curve (see minhash.py for the defaults);
    threshold: exact shingle Jaccard at which a candidate pair counts (ignored when verify=False:
    then every candidate pair counts); num_partitions: shuffle partitions (default: ~1M band rows each)."""
    t0 = time.time()
    hasher = MinHasher(shingle_size=shingle_size, bands=bands, rows=rows, seed=seed)
    _check_columns(ds, text_col, id_col)
    num_docs = ds.count()
    parts = num_partitions or max(2, min(200, -(-num_docs * bands // _ROWS_PER_PARTITION)))
    groups = parts * _GROUPS_PER_PARTITION
    _log(f"{num_docs} docs; {hasher}, num_perm={hasher.num_perm}, threshold={threshold}, verify={verify}, "
         f"partitions={parts}")
    docs = ds.select_columns([id_col, text_col])

    counts = {"num_buckets": 0, "num_candidate_pairs": 0}
    if num_docs:  # (a shuffle of no blocks has no schema to sort by)
        band_rows = docs.map_batches(_band_rows, batch_format="pyarrow", fn_kwargs={
            "hasher": hasher, "text_col": text_col, "id_col": id_col, "groups": groups})
        candidates = band_rows.groupby("group", num_partitions=parts).map_groups(_bucket_edges, batch_format="numpy")
        edges_ref, anchors_ref, counts_ref = _edge_index.remote(*candidates.to_arrow_refs())
        counts = ray.get(counts_ref)

    if verify and counts["num_candidate_pairs"]:
        routed = docs.map_batches(_route_texts, batch_format="pyarrow", fn_kwargs={
            "edges_ref": edges_ref, "anchors_ref": anchors_ref, "text_col": text_col, "id_col": id_col,
            "groups": groups})
        verified = routed.groupby("group", num_partitions=parts).map_groups(
            _verify_group, batch_format="pyarrow", fn_kwargs={"shingle_size": shingle_size, "threshold": threshold})
        labels_ref, comp_ref = _components.remote(*verified.to_arrow_refs())
    else:
        labels_ref, comp_ref = _components.remote(edges_ref if counts["num_candidate_pairs"] else _EDGES.empty_table())
    counts |= ray.get(comp_ref)

    kept = ds.map_batches(_select, batch_format="pyarrow",
                          fn_kwargs={"labels_ref": labels_ref, "id_col": id_col, "keep": True})
    dropped = ds.map_batches(_select, batch_format="pyarrow",
                             fn_kwargs={"labels_ref": labels_ref, "id_col": id_col, "keep": False})
    stats = NearDedupStats(num_docs=num_docs, num_kept=num_docs - counts["num_dropped"],
                           seconds=round(time.time() - t0, 2), **counts)
    _log(f"{stats.num_docs} → {stats.num_kept} kept; {stats.num_dropped} near duplicates in "
         f"{stats.num_components} groups; {stats.num_buckets} shared buckets, {stats.num_candidate_pairs} "
         f"candidate pairs, {stats.num_verified_pairs} verified; {stats.seconds:.1f}s")
    return kept, dropped, stats


__all__ = ["DROP_NEAR_DUPLICATE", "NearDedupStats", "near_dedup"]
