"""MinHash-LSH core: pure numpy, no Ray."""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from raygen.data.minhash import (
    EMPTY, MinHasher, collision_probability, connected_components, estimate_jaccard, jaccard, lsh_threshold,
    shingle_hashes, shingle_set,
)

VOCAB = [f"w{i}" for i in range(3000)]


def _words(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(VOCAB) for _ in range(n)]


def _edit(rng: random.Random, words: list[str], n_changes: int) -> list[str]:
    out = list(words)
    for p in rng.sample(range(len(out)), n_changes):
        out[p] = f"new{rng.randrange(10**9)}"
    return out


def _ref_shingles(text: str, k: int) -> set[tuple[str, ...]]:
    words = text.lower().split()
    if len(words) < k:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def test_shingles_match_a_python_reference():
    rng = random.Random(0)
    texts = [" ".join(_words(rng, n)) for n in (0, 1, 3, 5, 6, 40, 200)] + ["", "   \n\t ", "A  b\tC\nd   E f"]
    hashes, counts = shingle_hashes(texts, 5)
    expected = [max(len(t.split()) - 4, 1) if t.split() else 0 for t in texts]
    assert counts.tolist() == expected and len(hashes) == sum(expected)
    for a in texts:
        for b in texts[-5:]:
            ref_a, ref_b = _ref_shingles(a, 5), _ref_shingles(b, 5)
            ref = len(ref_a & ref_b) / len(ref_a | ref_b) if ref_a | ref_b else 1.0
            assert jaccard(shingle_set(a, 5), shingle_set(b, 5)) == pytest.approx(ref)
    # lowercased, whitespace-normalized
    assert np.array_equal(shingle_set("A  b\tC\nd   E f", 5), shingle_set("a b c d e f", 5))
    assert len(shingle_set("the same five word shingle " * 20, 5)) == 5  # a repeated cycle of 5 words


def test_signatures_do_not_depend_on_batch_or_order():
    rng = random.Random(1)
    texts = [" ".join(_words(rng, rng.randrange(1, 300))) for _ in range(40)] + ["", "short doc"]
    h = MinHasher()
    batch = h.signatures(texts)
    assert batch.shape == (len(texts), h.num_perm) and batch.dtype == np.uint32
    one_by_one = np.stack([h.signatures([t])[0] for t in texts])
    reversed_batch = h.signatures(texts[::-1])[::-1]
    assert np.array_equal(batch, one_by_one) and np.array_equal(batch, reversed_batch)
    assert (batch[-2] == EMPTY).all() and not (batch[-1] == EMPTY).all()
    assert not np.array_equal(batch, MinHasher(seed=1).signatures(texts))


def test_signatures_are_the_same_in_another_process():
    texts = ["Ray Data streams blocks between operators", "MinHash signatures must be stable " * 7, "Ünïcode Straße"]
    code = ("import json; from raygen.data.minhash import MinHasher; "
            f"print(json.dumps(MinHasher().signatures({texts!r}).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "123"},
                         capture_output=True, text=True, check=True).stdout
    assert np.array_equal(np.array(json.loads(out), np.uint32), MinHasher().signatures(texts))


def test_estimate_tracks_exact_jaccard():
    rng = random.Random(2)
    h = MinHasher()
    errors = []
    for _ in range(60):
        base = _words(rng, 300)
        a, b = " ".join(base), " ".join(_edit(rng, base, rng.randrange(1, 40)))
        true = jaccard(shingle_set(a, 5), shingle_set(b, 5))
        sig = h.signatures([a, b])
        errors.append((estimate_jaccard(sig[0], sig[1]) - true) / np.sqrt(true * (1 - true) / h.num_perm))
    z = np.array(errors)  # standardized errors: ~N(0, 1) for an unbiased estimator with binomial spread
    assert abs(z.mean()) < 0.5 and 0.6 < z.std() < 1.4 and np.abs(z).max() < 4.5


def test_s_curve_defaults_and_observed_band_collisions():
    assert lsh_threshold(20, 7) == pytest.approx(0.652, abs=1e-3)
    assert collision_probability(0.8, 20, 7) > 0.99
    assert collision_probability(0.5, 20, 7) < 0.15 and collision_probability(0.3, 20, 7) < 0.005
    assert collision_probability(0.8, 14, 8) == pytest.approx(0.924, abs=1e-3)  # why not 14 × 8
    d = MinHasher()  # the defaults: 24 × 5, well below the threshold (verification gives precision)
    assert (d.bands, d.rows) == (24, 5) and lsh_threshold(24, 5) == pytest.approx(0.53, abs=0.01)
    assert collision_probability(0.8, 24, 5) > 0.9999
    # Observed candidate rate for pairs around J = 0.65 matches the formula (on the 20 × 7 curve, steep there).
    rng = random.Random(3)
    h = MinHasher(bands=20, rows=7)
    hits, expected = [], []
    for _ in range(150):
        base = _words(rng, 200)
        a, b = " ".join(base), " ".join(_edit(rng, base, 9))
        keys = h.band_keys(h.signatures([a, b]))
        hits.append(bool((keys[0] == keys[1]).any()))
        expected.append(collision_probability(jaccard(shingle_set(a, 5), shingle_set(b, 5)), 20, 7))
    p = np.array(expected)
    assert 0.3 < p.mean() < 0.95
    assert abs(np.mean(hits) - p.mean()) < 4 * np.sqrt((p * (1 - p)).sum()) / len(p)


def test_band_keys_are_per_band():
    h = MinHasher(bands=4, rows=3)
    sig = np.arange(12, dtype=np.uint32)
    other = sig.copy()
    other[[0, 4, 11]] += 1  # bands 0, 1 and 3 differ; band 2 is equal
    k1, k2 = h.band_keys(sig), h.band_keys(other)
    assert k1.shape == (4,) and k1.dtype == np.uint64
    assert (k1 == k2).tolist() == [False, False, True, False]
    same_values = np.zeros(12, np.uint32)
    assert len(set(h.band_keys(same_values).tolist())) == 4  # equal values in different bands: different keys
    assert h.band_keys(np.stack([sig, other])).shape == (2, 4)


def test_connected_components_roots_are_smallest_ids():
    edges = [(7, 3), (3, 9), (9, 12), (20, 15), (15, 22), (5, 5), (40, 41), (41, 40)]
    expected = {3: 3, 7: 3, 9: 3, 12: 3, 15: 15, 20: 15, 22: 15, 5: 5, 40: 40, 41: 40}
    assert connected_components(edges) == expected
    rng = random.Random(4)
    for _ in range(5):
        shuffled = [(b, a) if rng.random() < 0.5 else (a, b) for a, b in rng.sample(edges, len(edges))]
        assert connected_components(shuffled) == expected
    chain = [(i + 1, i) for i in range(1000, 0, -1)]  # long chain, worst order for naive union
    assert set(connected_components(chain).values()) == {1}
    assert connected_components([]) == {}


def test_bad_hasher_settings():
    with pytest.raises(ValueError):
        MinHasher(bands=0)
    with pytest.raises(ValueError):
        MinHasher(shingle_size=0)


def test_dominating_survivors_drop_only_direct_duplicates_of_kept_documents():
    from raygen.data.minhash import dominating_survivors

    chain = dominating_survivors([(1, 2), (2, 3)])  # 1~2~3, J(1, 3) below the threshold
    assert chain == {1: 2, 3: 2}
    star = dominating_survivors([(10, i) for i in range(11, 20)] + [(11, 12)])
    assert set(star) == set(range(11, 20)) and set(star.values()) == {10}
    long = dominating_survivors([(1, 2), (2, 3), (3, 4), (4, 5)])
    kept = {1, 2, 3, 4, 5} - set(long)
    edges = {(1, 2), (2, 3), (3, 4), (4, 5)}
    assert all((min(d, k), max(d, k)) in edges for d, k in long.items())  # each dropped one has a kept neighbour
    assert not any((a, b) in edges for a in kept for b in kept)  # and no kept pair is a duplicate pair
