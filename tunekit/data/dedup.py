"""Duplicate finders for `data.select` dedup steps: exact (hash of the normalized text) and near (MinHash + LSH).

Both are fed rows one at a time in dataset order (`is_duplicate(identity, text)`) and keep the first of each group.
`identity` names the source example: the copies that `samples`/`weight` upsampling adds share it, and a copy of a
kept row is kept (the mixture asked for it), while a copy of a removed row is removed with it.

MinHash (Broder 1997): each text's word n-grams are hashed (crc32), each of `num_perm` universal hash functions
h(x) = (a x + b) mod (2^31 - 1) is applied, and the signature keeps each function's minimum; the share of equal
positions in two signatures estimates the Jaccard similarity of the n-gram sets. LSH cuts signatures into `bands` of
`rows` values; rows sharing a band are candidates, and a candidate is a duplicate when its estimated similarity to
the kept row is at least the threshold. Memory: one signature (4 bytes x num_perm) and `bands` keys per kept row.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib
from collections.abc import Hashable
from typing import Any

PRIME = (1 << 31) - 1


_WORDS = re.compile(r"\w+|[^\w\s]")


def normalize_text(text: str) -> str:
    """NFKC, case folded, and split into runs of word characters and single other characters joined by one space, so
    texts that differ only in case or whitespace (also next to punctuation or template markup: `4 <|im_end|>` and
    `4<|im_end|>`) are equal."""
    return " ".join(_WORDS.findall(unicodedata.normalize("NFKC", text).casefold()))


class ExactDuplicates:
    def __init__(self, normalize: bool = True) -> None:
        self.normalize = normalize
        self._seen: dict[bytes, Hashable] = {}  # digest -> identity of the kept row

    def is_duplicate(self, identity: Hashable, text: str) -> bool:
        digest = hashlib.blake2b((normalize_text(text) if self.normalize else text).encode("utf-8"),
                                 digest_size=16).digest()
        first = self._seen.setdefault(digest, identity)
        return first != identity


def shingles(text: str, ngram: int) -> list[int]:
    """crc32 of every run of `ngram` words (one shingle for a shorter text)."""
    words = text.split()
    grams = [" ".join(words[i : i + ngram]) for i in range(max(1, len(words) - ngram + 1))]
    return sorted({zlib.crc32(g.encode("utf-8")) for g in grams})


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising 0.1 x false-positive + 0.9 x false-negative area of the candidate curve
    1 - (1 - s^rows)^bands around `threshold` (missed duplicates weigh more; false candidates are checked)."""
    import numpy as np

    best, best_cost = (1, num_perm), float("inf")
    below, above = np.linspace(0.0, threshold, 201), np.linspace(threshold, 1.0, 201)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        fp = np.trapezoid(1 - (1 - below**rows) ** bands, below)
        fn = np.trapezoid((1 - above**rows) ** bands, above)
        cost = 0.1 * fp + 0.9 * fn
        if cost < best_cost:
            best, best_cost = (bands, rows), cost
    return best


class NearDuplicates:
    def __init__(self, threshold: float, num_perm: int = 128, ngram: int = 5, seed: int = 0,
                 normalize: bool = True) -> None:
        import numpy as np

        gen = np.random.default_rng(seed)
        self.a = gen.integers(1, PRIME, size=(num_perm, 1), dtype=np.uint64)
        self.b = gen.integers(0, PRIME, size=(num_perm, 1), dtype=np.uint64)
        self.threshold, self.ngram, self.normalize = threshold, ngram, normalize
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(self.bands)]
        self._kept: list[Any] = []  # signatures of kept rows
        self._ids: list[Hashable] = []

    def signature(self, text: str) -> Any:
        import numpy as np

        x = np.asarray(shingles(normalize_text(text) if self.normalize else text, self.ngram), dtype=np.uint64)
        return ((self.a * x[None, :] + self.b) % PRIME).min(axis=1).astype(np.uint32)

    def _keys(self, sig: Any) -> list[bytes]:
        return [sig[j * self.rows : (j + 1) * self.rows].tobytes() for j in range(self.bands)]

    def is_duplicate(self, identity: Hashable, text: str) -> bool:
        sig = self.signature(text)
        keys = self._keys(sig)
        candidates = {k for band, key in zip(self._buckets, keys) for k in band.get(key, ())}
        matches = [k for k in sorted(candidates) if (self._kept[k] == sig).mean() >= self.threshold]
        if matches:
            return all(self._ids[k] != identity for k in matches)  # a copy of a kept row stays
        n = len(self._kept)
        self._kept.append(sig)
        self._ids.append(identity)
        for band, key in zip(self._buckets, keys):
            band.setdefault(key, []).append(n)
        return False


def estimated_jaccard(a: str, b: str, num_perm: int = 128, ngram: int = 5, seed: int = 0) -> float:
    finder = NearDuplicates(0.5, num_perm, ngram, seed)
    return float((finder.signature(a) == finder.signature(b)).mean())


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    """The exact Jaccard similarity of two texts' normalized word n-gram sets (what MinHash estimates)."""
    x, y = set(shingles(normalize_text(a), ngram)), set(shingles(normalize_text(b), ngram))
    return len(x & y) / len(x | y)
