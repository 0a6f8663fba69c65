"""Exact and near-duplicate detection.

Near duplicates use datasketch's MinHash LSH over character 5-gram shingles (robust for the short
texts typical of task data, where word n-grams are too coarse). Two things are ours, for speed and
reproducibility: one set of permutations shared by every MinHash (datasketch would otherwise build
them per object), and a stable CRC32 shingle hash, so the same input gives the same duplicates,
and so the same splits, in every process (Python's `hash` is salted per process).
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field

from datasketch import LeanMinHash, MinHash, MinHashLSH

_WORD = re.compile(r"\w+")
SHINGLE = 5


def normalize_for_match(text: str) -> str:
    """Case, punctuation and spacing do not make two examples different."""
    return " ".join(_WORD.findall(text.lower()))


def exact_key(text: str) -> str:
    return hashlib.blake2b(normalize_for_match(text).encode(), digest_size=16).hexdigest()


def _stable_hash(shingle: bytes) -> int:
    return zlib.crc32(shingle)


def shingles(text: str) -> list[bytes]:
    norm = normalize_for_match(text).encode()
    if len(norm) <= SHINGLE:
        return [norm]
    return list({norm[i : i + SHINGLE] for i in range(len(norm) - SHINGLE + 1)})


class NearDuplicateIndex:
    """Insert texts one by one; each insert returns the earlier texts it nearly duplicates."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 64):
        self.threshold = threshold
        self.num_perm = num_perm
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        template = MinHash(num_perm=num_perm, seed=1)
        self._permutations, self._scheme = template.permutations, template.scheme
        self._sketches: dict[int, LeanMinHash] = {}

    def sketch(self, text: str) -> LeanMinHash:
        sketch = MinHash(
            num_perm=self.num_perm, hashfunc=_stable_hash, permutations=self._permutations, scheme=self._scheme
        )
        sketch.update_batch(shingles(text))
        return LeanMinHash(sketch)

    def query(self, text: str, sketch: LeanMinHash | None = None) -> list[tuple[int, float]]:
        """Earlier keys whose estimated Jaccard similarity reaches the threshold, most similar first."""
        sketch = sketch or self.sketch(text)
        # LSH returns candidates; the sketch comparison removes most of its false positives.
        found = [(key, self._sketches[key].jaccard(sketch)) for key in self._lsh.query(sketch)]
        return sorted(((k, s) for k, s in found if s >= self.threshold), key=lambda kv: (-kv[1], kv[0]))

    def add(self, key: int, text: str) -> list[tuple[int, float]]:
        sketch = self.sketch(text)
        matches = self.query(text, sketch)
        self._lsh.insert(key, sketch)
        self._sketches[key] = sketch
        return matches


@dataclass
class Duplicates:
    exact: dict[int, int] = field(default_factory=dict)  # index -> index of its first occurrence
    near: dict[int, tuple[int, float]] = field(default_factory=dict)  # index -> (earlier index, similarity)

    def redundant(self) -> set[int]:
        return set(self.exact) | set(self.near)


def find_duplicates(
    texts: list[str], *, near: bool = True, threshold: float = 0.85, num_perm: int = 64
) -> Duplicates:
    """Mark each text that repeats an earlier one, exactly or nearly; the first occurrence is kept."""
    result = Duplicates()
    first_seen: dict[str, int] = {}
    index = NearDuplicateIndex(threshold, num_perm) if near else None
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in first_seen:
            result.exact[i] = first_seen[key]
            continue
        first_seen[key] = i
        if index is not None and (matches := index.add(i, text)):
            result.near[i] = matches[0]
    return result
