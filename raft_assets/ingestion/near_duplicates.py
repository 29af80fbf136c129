"""Near-duplicate texts, found with MinHash LSH (`datasketch`) and confirmed by their exact Jaccard similarity.

A text is the set of its word 3-shingles, lowercased, punctuation and whitespace ignored: a re-wrapped paragraph
is the same set, a changed year or page name changes a few shingles. MinHash LSH proposes candidate pairs in
about linear time; each candidate is then compared exactly, so the threshold means what it says and the outcome
does not depend on the sketch's luck beyond a missed candidate.

Groups are stars, not chains: the texts are taken in the caller's (canonical) order, the first text not yet in a
group opens one, and it takes every later text not yet grouped whose similarity to it is at least the threshold.
Every member is therefore close to the text that is kept, and the same input order gives the same groups.
"""

from __future__ import annotations

import functools
import re
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datasketch import MinHash

SHINGLE_WORDS = 3
NUM_PERM = 128
SHINGLE_MULTIPLIER = 0x9E3779B97F4A7C15  # odd: combining a shingle's word hashes keeps their order
SEED = 1
WORD = re.compile(r"\w+")
# Missing a pair costs a merge, a false candidate one exact comparison: weigh false negatives 9 to 1. At threshold
# 0.7 (20 bands of 6 rows) a pair at 0.8 is then a candidate with probability 0.998 (0.87 with equal weights).
LSH_WEIGHTS = (0.1, 0.9)


@functools.cache
def _template() -> MinHash:
    """A sketch whose permutations every sketch shares, computed once. datasketch is imported here, not at the
    top: it imports scipy, a second that every process importing the code location would pay."""
    from datasketch import MinHash

    return MinHash(num_perm=NUM_PERM, seed=SEED)


def normalized(text: str) -> str:
    """The text's words, lowercased, one space apart: what the similarity sees of it."""
    return " ".join(WORD.findall(text.lower()))


@functools.lru_cache(maxsize=1 << 18)  # a vocabulary's worth: most words repeat
def _word_hash(word: str) -> int:
    return zlib.crc32(word.encode("utf-8"))


def shingles(text: str) -> np.ndarray:
    """The text's word 3-shingles (a shorter text: its words as one shingle), lowercased, as sorted distinct
    32-bit hashes: hashing each word once and combining them is several times faster than hashing each shingle."""
    words = np.fromiter(map(_word_hash, WORD.findall(text.lower())), dtype=np.uint64)
    width = min(SHINGLE_WORDS, len(words))
    combined = np.zeros(len(words) - width + 1, dtype=np.uint64)
    for offset in range(width):
        combined = combined * np.uint64(SHINGLE_MULTIPLIER) + words[offset : len(words) - width + 1 + offset]
    return np.unique((combined ^ (combined >> np.uint64(32))) & np.uint64(0xFFFFFFFF))


def jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """Jaccard similarity of two `shingles` sets."""
    common = np.intersect1d(first, second, assume_unique=True).size
    union = first.size + second.size - common
    return common / union if union else 1.0


def _identity(value: int) -> int:
    return value


def sketch(shingle_hashes: np.ndarray) -> MinHash:
    from datasketch import MinHash

    template = _template()
    minhash = MinHash(num_perm=NUM_PERM, hashfunc=_identity, permutations=template.permutations, scheme=template.scheme)
    minhash.update_batch(shingle_hashes.tolist())
    return minhash


def near_duplicate_groups(texts: Sequence[str], threshold: float) -> list[list[int]]:
    """Groups of at least two indices of `texts` whose texts are near duplicates, each led by its first index.

    A member's exact Jaccard similarity to the group's first text is at least `threshold` (0 < threshold <= 1).
    Groups come in the order of their first index; members in increasing order.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], not {threshold}.")
    from datasketch import MinHashLSH

    # datasketch chooses the bands and rows that minimise the weighted error at the threshold; the buckets are
    # then found on the whole signature matrix at once, several times faster than its hash tables, text by text.
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, weights=LSH_WEIGHTS)
    signatures = np.array([sketch(shingles(text)).hashvalues for text in texts], dtype=np.uint64)
    buckets = shared_buckets(signatures.reshape(len(texts), NUM_PERM), lsh.b, lsh.r)
    buckets_of: dict[int, list[int]] = {}
    for number, bucket in enumerate(buckets):
        for index in bucket.tolist():
            buckets_of.setdefault(index, []).append(number)
    grouped: set[int] = set()
    groups: list[list[int]] = []
    for first in range(len(texts)):
        if first in grouped or first not in buckets_of:
            continue
        grouped.add(first)
        candidates = {other for number in buckets_of[first] for other in buckets[number].tolist()} - grouped
        if not candidates:
            continue
        kept = shingles(texts[first])  # shingle sets are not kept for every text: they take much memory
        members = sorted(other for other in candidates if jaccard(kept, shingles(texts[other])) >= threshold)
        if members:
            grouped.update(members)
            groups.append([first, *members])
    return groups


def shared_buckets(signatures: np.ndarray, bands: int, rows: int) -> list[np.ndarray]:
    """LSH buckets holding more than one text: for each of `bands` bands of `rows` MinHash values, the indices of
    the texts whose values in that band are all equal (a candidate pair shares at least one bucket)."""
    buckets: list[np.ndarray] = []
    for band in range(bands):
        block = np.ascontiguousarray(signatures[:, band * rows : (band + 1) * rows])
        _, labels, counts = np.unique(block, axis=0, return_inverse=True, return_counts=True)
        labels = labels.reshape(-1)
        shared = np.flatnonzero(counts[labels] > 1)
        ordered = shared[np.argsort(labels[shared], kind="stable")]
        starts = np.flatnonzero(np.diff(labels[ordered])) + 1
        buckets += np.split(ordered, starts) if ordered.size else []
    return buckets
