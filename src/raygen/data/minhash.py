"""Pure MinHash-LSH: word shingles, signatures, band keys, exact Jaccard and union-find. No Ray in here
(numpy, and pyarrow's compute kernels for lowercasing and splitting at C speed).

`dedup.py` maps these over Ray Data batches; everything here works on one batch of documents at a time
and is deterministic across processes, batches and machines (no salted `hash()`, no global state).

Shingles. A document is lowercased and split on runs of ASCII whitespace into words (after NFKC, the
pipeline's default normalization, Unicode spaces are ASCII spaces); a shingle is `shingle_size`
consecutive words (a document with fewer words is one shingle of all of them; an empty one has none).
Each distinct word of a batch is hashed once (a polynomial hash of its UTF-8 bytes, done with numpy
prefix sums over the batch's word dictionary), and a shingle's 64-bit hash is a position-weighted sum
of its word hashes put through the splitmix64 finalizer. The top 32 bits feed the permutations; the
full 64 bits are the shingle set for exact Jaccard.

Permutations. MinHash needs `num_perm` independent hash functions of the shingle; here they are affine
maps h_i(x) = (a_i·x + b_i) mod 2^32 with a_i odd, which are bijections of the 32-bit space (true
permutations of the shingle universe). Modulus 2^32 instead of a prime p: numpy's uint32 arithmetic wraps
for free and vectorizes, while (a·x + b) mod p with 61-bit a and p needs 128-bit products that numpy
uint64 cannot hold (the popular uint64 form silently overflows before its `% p`). The inputs are
already well-mixed hashes, so the affine family's known weakness on structured keys does not apply;
`tests/unit/test_minhash.py` checks that estimates match true Jaccard with the binomial spread sqrt(J(1-J)/P).
All permutations are applied at once to a (num_perm, chunk) uint32 buffer and reduced per document with
`np.minimum.reduceat` (speeds: benchmarks/RESULTS.md, "Design measurements").

Bands. The signature is cut into `bands` bands of `rows` values; two documents become a candidate pair
when any band is equal. A pair with Jaccard J is caught with probability 1 - (1 - J^r)^b, an S-curve
whose steepest point is near t = (1/b)^(1/r). Defaults b=24, r=5 (num_perm = 120):

    t = (1/24)^(1/5) ≈ 0.53
    P(catch) at J = 0.9: 1 - 5e-10   0.8: 0.99993   0.7: 0.988   0.6: 0.86   0.5: 0.53   0.3: 0.06

The threshold sits well *below* the 0.8 we dedup at on purpose: banding is only the recall stage and
verification (exact Jaccard of the shingle sets, see `dedup.py`) gives the precision, so a false
candidate costs one exact comparison and never a wrong removal. A curve centred on 0.8 (say 14 × 8,
t ≈ 0.72) would leave one pair in 13 at J = 0.8 never compared. Without verification, pick a curve
centred on the target instead, e.g. 9 × 13 (t ≈ 0.84). (Why 24 × 5 replaced 20 × 7: RESULTS.md.)
Each band's key is a 64-bit hash of its r values and its band index, so all bands share one key space.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raygen.errors import ConfigError

U64 = np.uint64
EMPTY = np.uint32(0xFFFFFFFF)  # every signature value of a document without shingles

# Polynomial base for word bytes and its inverse mod 2^64 (odd, so the inverse exists).
_Q = 0x100000001B3
_Q_INV = pow(_Q, -1, 2**64)
_GOLDEN = U64(0x9E3779B97F4A7C15)
# Fixed odd multipliers: word j of a shingle, value k of a band, the band index. Part of the hash
# definition (not of the seed), so shingle sets compare across hashers.
_CONST = np.random.default_rng(0x5EED5).integers(0, 2**63, size=(3, 64), dtype=np.uint64) * U64(2) + U64(1)
_SHINGLE_MUL, _BAND_MUL, _BAND_IDX_MUL = _CONST[0], _CONST[1], _CONST[2, 0]
_CHUNK = 4096  # shingles per permutation pass: (120, 4096) uint32 is ~2 MB, one core's L2 (fastest of 2k..32k)
Texts = Sequence[str] | pa.Array | pa.ChunkedArray  # a batch of documents; nulls count as empty


def mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on a uint64 array (a bijection; every output bit depends on every input bit)."""
    z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


def _as_arrow(texts: Texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    elif not isinstance(texts, pa.Array):
        texts = pa.array(texts, type=pa.large_string())
    return pc.fill_null(texts, "")


def _hash_strings(strings: pa.Array) -> np.ndarray:
    """(n,) uint64: a stable hash of each string's UTF-8 bytes, with no Python loop over the strings."""
    strings = strings.cast(pa.large_string())
    n = len(strings)
    offs = np.frombuffer(strings.buffers()[1], np.int64, n + 1, strings.offset * 8)
    data = np.frombuffer(strings.buffers()[2], np.uint8)[offs[0]:offs[-1]] if n else np.zeros(0, np.uint8)
    offs = offs - offs[0]
    size = len(data)
    # powers Q^k and Q^-k for every byte position: word [s, e) hashes to sum_k byte_k Q^(k-s)
    pw = np.empty(size + 1, U64)
    ipw = np.empty(size + 1, U64)
    pw[0] = ipw[0] = 1
    np.cumprod(np.full(size, _Q, U64), out=pw[1:])
    np.cumprod(np.full(size, _Q_INV, U64), out=ipw[1:])
    prefix = np.zeros(size + 1, U64)
    np.cumsum(data * pw[:-1], out=prefix[1:])
    start, end = offs[:-1], offs[1:]
    h = (prefix[end] - prefix[start]) * ipw[start]
    return mix64(h ^ ((end - start).astype(U64) * _GOLDEN))


def shingle_hashes(texts: Texts, shingle_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All shingles of a batch: ((S,) uint64 hashes in document order, (n,) int64 shingles per document).

    Repeated shingles are kept (MinHash does not care); `shingle_set` dedups for exact Jaccard."""
    # ASCII whitespace splits words: 1.7x faster than Unicode whitespace, and after NFKC (the pipeline's
    # default normalization) Unicode spaces are ASCII spaces.
    trimmed = pc.ascii_trim_whitespace(pc.utf8_lower(_as_arrow(texts)))
    words = pc.ascii_split_whitespace(trimmed)  # splits on whitespace runs, like str.split()
    woffs = np.asarray(words.offsets, dtype=np.int64)
    lens = np.diff(woffs)  # (n,) words per document
    flat = words.flatten()
    blank = np.asarray(pc.equal(trimmed, "")).astype(bool)  # these split into one empty word: drop it
    if blank.any():
        flat = flat.filter(pa.array(np.repeat(~blank, lens)))
        lens = np.where(blank, 0, lens)
    woffs = np.concatenate([[0], np.cumsum(lens)])
    if len(flat) == 0:
        return np.zeros(0, U64), np.zeros(len(lens), np.int64)
    enc = pc.dictionary_encode(flat)
    w = _hash_strings(enc.dictionary)[np.asarray(enc.indices)]  # (W,) one hash per word
    k = shingle_size
    num_windows = max(len(w) - k + 1, 0)
    # Every window of k consecutive words, then keep those inside one document.
    win = np.zeros(num_windows, U64)
    for j in range(k):
        win += w[j:j + num_windows] * _SHINGLE_MUL[j]
    # A window starting j = 1..k-1 words before a document boundary crosses it.
    valid = np.ones(num_windows, bool)
    crossing = (woffs[1:-1, None] - np.arange(1, k)).ravel()
    valid[crossing[(crossing >= 0) & (crossing < num_windows)]] = False
    counts = np.where(lens >= k, lens - k + 1, (lens > 0).astype(np.int64))
    short = np.flatnonzero((lens > 0) & (lens < k))
    if len(short) == 0:
        return mix64(win[valid]), counts
    # Documents shorter than a shingle: one shingle of all their words, slotted in document order.
    short_h = np.zeros(len(short), U64)
    for j in range(k - 1):
        has = lens[short] > j
        short_h[has] += w[woffs[short[has]] + j] * _SHINGLE_MUL[j]
    pos = np.concatenate([np.flatnonzero(valid), woffs[short]])
    order = np.argsort(pos, kind="stable")
    return mix64(np.concatenate([win[valid], short_h])[order]), counts


def shingle_set(text: str, shingle_size: int) -> np.ndarray:
    """Sorted distinct 64-bit shingle hashes of one document."""
    return np.unique(shingle_hashes([text], shingle_size)[0])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted distinct hash sets (two empty sets are equal: 1.0)."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - inter
    return inter / union if union else 1.0


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """MinHash estimate: the fraction of equal signature values (standard error sqrt(J(1-J)/num_perm))."""
    return float(np.mean(sig_a == sig_b))


def collision_probability(j: float, bands: int, rows: int) -> float:
    """Probability that a pair with Jaccard j shares at least one band: 1 - (1 - j^rows)^bands."""
    return 1.0 - (1.0 - j**rows) ** bands


def lsh_threshold(bands: int, rows: int) -> float:
    """Jaccard near the steepest point of the S-curve: (1/bands)^(1/rows)."""
    return (1.0 / bands) ** (1.0 / rows)


@dataclass(frozen=True)
class MinHasher:
    shingle_size: int = 5  # words per shingle
    bands: int = 24  # LSH bands; more bands catch lower Jaccard (and more false candidates)
    rows: int = 5  # signature values per band; num_perm = bands * rows
    seed: int = 0  # picks the permutations; signatures only compare under the same seed
    _a: np.ndarray = field(init=False, repr=False, compare=False)  # (num_perm, 1) uint32, odd
    _b: np.ndarray = field(init=False, repr=False, compare=False)  # (num_perm, 1) uint32

    def __post_init__(self) -> None:
        if self.shingle_size < 1 or self.bands < 1 or self.rows < 1:
            raise ConfigError(f"shingle_size, bands and rows must be >= 1 (got {self})")
        if self.shingle_size > len(_SHINGLE_MUL) or self.rows > len(_BAND_MUL):
            raise ConfigError(f"shingle_size and rows are at most {len(_BAND_MUL)} (got {self})")
        rng = np.random.default_rng(self.seed)
        ab = rng.integers(0, 2**32, size=(2, self.num_perm, 1), dtype=np.uint64).astype(np.uint32)
        object.__setattr__(self, "_a", ab[0] | np.uint32(1))
        object.__setattr__(self, "_b", ab[1])

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    def signatures(self, texts: Texts) -> np.ndarray:
        """(n, num_perm) uint32 MinHash signatures; a document without shingles gets all `EMPTY`."""
        hashes, counts = shingle_hashes(texts, self.shingle_size)
        x = (hashes >> U64(32)).astype(np.uint32)  # (S,)
        sig = np.full((len(counts), self.num_perm), EMPTY, np.uint32)
        docs = np.flatnonzero(counts)  # reduceat cannot express an empty segment
        starts = np.concatenate([[0], np.cumsum(counts[docs])])  # (m+1,) shingle offsets
        buf = np.empty((self.num_perm, _CHUNK), np.uint32)
        i = 0
        while i < len(docs):
            # whole documents per pass, as many as fit in the buffer (at least one)
            j = max(i + 1, int(np.searchsorted(starts, starts[i] + _CHUNK, side="right")) - 1)
            xs = x[starts[i]:starts[j]]
            if len(xs) > buf.shape[1]:
                buf = np.empty((self.num_perm, len(xs)), np.uint32)
            v = buf[:, :len(xs)]
            np.multiply(self._a, xs, out=v)
            np.add(v, self._b, out=v)
            sig[docs[i:j]] = np.minimum.reduceat(v, starts[i:j] - starts[i], axis=1).T
            i = j
        return sig

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(n, bands) uint64 bucket keys (column b is band b); a 1-D signature gives (bands,)."""
        sig = np.asarray(signatures)
        one = sig.ndim == 1
        sig = sig.reshape(-1, self.bands, self.rows).astype(U64)  # (n, b, r)
        keys = (sig * _BAND_MUL[: self.rows]).sum(axis=2, dtype=U64)  # wraps mod 2^64
        keys += (np.arange(1, self.bands + 1, dtype=U64) * _BAND_IDX_MUL)[None, :]
        keys = mix64(keys)
        return keys[0] if one else keys

    def shingle_set(self, text: str) -> np.ndarray:
        return shingle_set(text, self.shingle_size)


def connected_components(edges: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Union-find over undirected edges: {node: root} for every node on an edge, root = the smallest id
    of its component (so the survivor of a duplicate group does not depend on edge order)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    for a, b in edges:
        a, b = int(a), int(b)
        parent.setdefault(a, a)
        parent.setdefault(b, b)
        ra, rb = find(a), find(b)
        if ra != rb:  # link the larger root under the smaller: the root stays the component's minimum
            parent[max(ra, rb)] = min(ra, rb)
    return {x: find(x) for x in parent}


def dominating_survivors(edges: Iterable[tuple[int, int]]) -> dict[int, int]:
    """Which documents of a near-duplicate graph to drop: {dropped: the kept neighbour it duplicates}.

    Greedy dominating set: keep the document with the most not-yet-covered neighbours (ties: smallest
    id), drop those neighbours, repeat. Every dropped document has a verified edge (Jaccard >= threshold)
    to a kept one, so nothing is dropped for being a duplicate of a duplicate (a chain A~B~C keeps B, not
    A, when J(A, C) is below the threshold); a component may keep more than one document for that reason.
    O(E log V) with a lazy heap: a page copied 10,000 times is one pass."""
    import heapq

    adj: dict[int, set[int]] = {}
    for a, b in edges:
        a, b = int(a), int(b)
        if a != b:
            adj.setdefault(a, set()).add(b)
            adj.setdefault(b, set()).add(a)
    heap = [(-len(nb), n) for n, nb in adj.items()]
    heapq.heapify(heap)
    covered: set[int] = set()
    dropped: dict[int, int] = {}
    while heap:
        neg, n = heapq.heappop(heap)
        if n in covered:
            continue
        gain = sum(1 for m in adj[n] if m not in covered)
        if gain != -neg:  # stale entry: its neighbours were covered since; re-queue with the true gain
            heapq.heappush(heap, (-gain, n))
            continue
        covered.add(n)  # kept
        for m in adj[n]:
            if m not in covered:
                covered.add(m)
                dropped[m] = n
    return dropped


__all__ = [
    "EMPTY", "MinHasher", "collision_probability", "connected_components", "dominating_survivors", "estimate_jaccard", "jaccard",
    "lsh_threshold", "mix64", "shingle_hashes", "shingle_set",
]
