"""Near-dedup on the shared local Ray: planted near duplicates, chains and look-alikes in ~300 documents."""

import itertools
import random

import numpy as np
import pytest

from raygen.data.minhash import connected_components, dominating_survivors, jaccard, shingle_set

pytestmark = pytest.mark.integration

VOCAB = [f"tok{i}" for i in range(5000)]


def _edit(rng: random.Random, words: list[str], n_changes: int, lo: int = 0, hi: int | None = None) -> list[str]:
    out = list(words)
    for p in rng.sample(range(lo, hi or len(out)), n_changes):
        out[p] = f"edit{rng.randrange(10**9)}"
    return out


def _corpus() -> tuple[list[dict], dict[tuple[int, int], float], list[list[int]]]:
    """Rows {doc_id, text, source} with shuffled ids, the exact Jaccard of every pair at >= 0.3, and the
    chains (row numbers of A, B, C)."""
    rng = random.Random(7)
    texts: list[str] = []
    for _ in range(40):  # near-duplicate clusters: a base and 1-2 copies with 2-3 of 200 words changed (J >= 0.85)
        base = [rng.choice(VOCAB) for _ in range(200)]
        texts.append(" ".join(base))
        texts += [" ".join(_edit(rng, base, rng.randint(2, 3))) for _ in range(rng.randint(1, 2))]
    chains = []
    for _ in range(8):  # chains A~B~C at J ~ 0.85 per step: edits in different halves, so J(A, C) ~ 0.73
        a = [rng.choice(VOCAB) for _ in range(200)]
        b = _edit(rng, a, 3, 0, 100)
        c = _edit(rng, b, 3, 100, 200)
        chains.append([len(texts), len(texts) + 1, len(texts) + 2])
        texts += [" ".join(a), " ".join(b), " ".join(c)]
    for _ in range(15):  # look-alikes at J ~ 0.5: a third of the words replaced as one block
        a = [rng.choice(VOCAB) for _ in range(150)]
        b = a[:100] + [rng.choice(VOCAB) for _ in range(50)]
        texts += [" ".join(a), " ".join(b)]
    while len(texts) < 300:  # unrelated documents
        texts.append(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(50, 400))))
    texts += ["", "a tiny doc"]
    ids = rng.sample(range(10_000, 20_000), len(texts))
    sets = [shingle_set(t, 5) for t in texts]
    pairs = {}
    for i, j in itertools.combinations(range(len(texts)), 2):
        if len(sets[i]) and len(sets[j]) and (s := jaccard(sets[i], sets[j])) >= 0.3:
            pairs[(ids[i], ids[j])] = s
    rows = [{"doc_id": d, "text": t, "source": f"gen:{k}"} for k, (d, t) in enumerate(zip(ids, texts, strict=True))]
    return rows, pairs, [[ids[k] for k in chain] for chain in chains]


def test_near_dedup_finds_planted_duplicates(ray_cluster):
    import ray

    from raygen.data.dedup import DROP_NEAR_DUPLICATE, near_dedup

    rows, pairs, chains = _corpus()
    dup_pairs = [p for p, s in pairs.items() if s >= 0.8]
    look_alikes = [p for p, s in pairs.items() if 0.3 <= s < 0.7]
    assert len(dup_pairs) > 60 and len(look_alikes) >= 15  # the corpus plants what the test claims
    for a, b, c in chains:  # ends below the threshold, each step above it
        assert pairs[(a, b)] >= 0.8 and pairs[(b, c)] >= 0.8 and pairs.get((a, c), 0) < 0.8
    truth = dominating_survivors(dup_pairs)  # dropped doc -> the kept doc it duplicates
    sim = pairs | {(b, a): s for (a, b), s in pairs.items()}
    num_groups = len(set(connected_components(dup_pairs).values()))

    ds = ray.data.from_items(rows, override_num_blocks=4).materialize()
    kept, dropped, stats = near_dedup(ds, num_partitions=2)
    kept_rows, dropped_rows = kept.take_all(), dropped.take_all()

    got = {r["doc_id"]: r["duplicate_of"] for r in dropped_rows}
    kept_ids = {r["doc_id"] for r in kept_rows}
    assert got == truth  # every planted pair was a candidate and verified: the same graph, the same survivors
    assert all(sim[(d, k)] >= 0.8 and k in kept_ids for d, k in got.items())  # precision 1.0
    assert not any(a in kept_ids and b in kept_ids for a, b in dup_pairs)  # recall 1.0: no kept pair is >= 0.8
    assert all(r["drop_reason"] == DROP_NEAR_DUPLICATE for r in dropped_rows)
    assert kept_ids == {r["doc_id"] for r in rows} - set(got) and len(kept_ids) == len(kept_rows)
    assert set(kept_rows[0]) == {"doc_id", "text", "source"}
    assert stats.num_docs == len(rows) and stats.num_kept == len(kept_rows) and stats.num_dropped == len(got)
    assert stats.num_components == num_groups
    assert stats.num_verified_pairs == len(dup_pairs) <= stats.num_candidate_pairs and stats.num_buckets > 0

    for a, b, c in chains:  # A~B~C collapses to one survivor, B: A and C are below the threshold of each other
        assert b in kept_ids and got[a] == b and got[c] == b

    # Without verification every candidate pair counts, look-alikes caught by the S-curve included.
    _, dropped_nv, stats_nv = near_dedup(ds, num_partitions=2, verify=False)
    assert stats_nv.num_verified_pairs == stats_nv.num_candidate_pairs == stats.num_candidate_pairs
    assert stats.num_candidate_pairs > stats.num_verified_pairs and stats_nv.num_dropped >= stats.num_dropped
    assert stats_nv.num_dropped == dropped_nv.count()
    assert np.isfinite(stats.seconds)


def test_bucket_edges_pair_each_member_with_the_smallest_ids():
    from raygen.data.dedup import _ANCHORS, _bucket_edges

    # bucket 7: ids 1..12; bucket 9: ids 25 and 23; bucket 11: id 4 alone; bucket 13: id 6 twice (not a pair)
    key = [7] * 12 + [9, 9, 11, 13, 13]
    ids = list(range(12, 0, -1)) + [25, 23, 4, 6, 6]
    t = _bucket_edges({"key": np.array(key, np.int64), "doc_id": np.array(ids, np.int64)})
    pairs = list(zip(t["src"].to_pylist(), t["dst"].to_pylist(), strict=True))
    expected = {(s, d) for s in range(2, 13) for d in range(1, min(s, _ANCHORS + 1))} | {(25, 23)}
    assert set(pairs) == expected and len(pairs) == len(expected)
    assert sum(t["first"].to_pylist()) == 2  # one per bucket of two or more documents
