"""Drift statistics: population stability index, embedding centroid shift with a permutation test, new words.

Pure numpy on purpose: these are a few lines each, and the monitor should run where only the base install is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

# Proportions of empty bins are floored at this value: PSI has ln(a/e) and would be infinite otherwise.
PSI_FLOOR = 1e-4
# Placeholders written by PII redaction ([EMAIL], [CREDIT_CARD]) are not vocabulary.
_PLACEHOLDER = re.compile(r"\[[A-Z_]+\]")
# Words are runs of letters: numbers, ids and punctuation would make every request look "new".
_WORD = re.compile(r"[^\W\d_]+")


def words(text: str) -> list[str]:
    return _WORD.findall(_PLACEHOLDER.sub(" ", text).lower())


def psi_from_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins; < 0.1 stable, 0.1-0.2 some shift, > 0.2 a real shift."""
    e = np.maximum(expected, PSI_FLOOR)
    a = np.maximum(actual, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_psi(reference: Sequence[float], current: Sequence[float], bins: int | None = None) -> float:
    """PSI of a numeric feature, binned at the reference's quantiles (each bin ~equal reference mass).

    Quantile bins rather than equal-width ones: long-tailed features like lengths would otherwise put
    almost everything into the first bin and hide shifts in the bulk of the distribution. By default the
    bin count follows the smaller sample (about 20 values per bin, 4 to 10 bins): PSI's noise grows with
    bins / samples, and 10 bins over 80 requests cross 0.2 by chance about a third of the time.
    """
    ref = np.asarray(reference, dtype=float)
    cur = np.asarray(current, dtype=float)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs values on both sides")
    if bins is None:
        bins = int(np.clip(min(ref.size, cur.size) // 20, 4, 10))
    inner = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=inner.size + 1) / ref.size
    actual = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=inner.size + 1) / cur.size
    return psi_from_shares(expected, actual)


def categorical_psi(reference: Iterable[str], current: Iterable[str]) -> float:
    """PSI of a categorical feature (labels) over the union of the categories seen on either side."""
    ref, cur = Counter(reference), Counter(current)
    if not ref or not cur:
        raise ValueError("PSI needs values on both sides")
    keys = sorted(set(ref) | set(cur))
    expected = np.array([ref[k] for k in keys], dtype=float) / sum(ref.values())
    actual = np.array([cur[k] for k in keys], dtype=float) / sum(cur.values())
    return psi_from_shares(expected, actual)


def centroid_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine distance between the mean vectors of two sets of embeddings (0: same direction)."""
    ca, cb = a.mean(axis=0), b.mean(axis=0)
    denom = float(np.linalg.norm(ca) * np.linalg.norm(cb))
    return 1.0 - float(ca @ cb) / denom if denom > 0 else 0.0


def permutation_p_value(a: np.ndarray, b: np.ndarray, resamples: int = 1000, seed: int = 0) -> float:
    """P-value that `a` and `b` come from one distribution, with centroid cosine distance as the statistic.

    Hand-written: scipy.stats.permutation_test treats each embedding dimension as a separate test, while the
    statistic here is multivariate. Each resample is a random relabelling of the pooled rows; sums of the
    relabelled groups are one matrix product per batch, so 1,000 resamples of 2,000 x 384 take well under
    a second. The +1s count the observed labelling as one of the permutations (never a p-value of 0).
    """
    pooled = np.concatenate([a, b]).astype(np.float64)
    n, na = len(pooled), len(a)
    total = pooled.sum(axis=0)
    observed = centroid_distance(a, b)
    rng = np.random.default_rng(seed)
    at_least = 0
    for start in range(0, resamples, 200):
        size = min(200, resamples - start)
        # Row i of `member` marks the rows that resample i puts in group a.
        order = rng.random((size, n)).argsort(axis=1)[:, :na]
        member = np.zeros((size, n))
        np.put_along_axis(member, order, 1.0, axis=1)
        sums_a = member @ pooled
        means_a, means_b = sums_a / na, (total - sums_a) / (n - na)
        cos = np.sum(means_a * means_b, axis=1) / (
            np.linalg.norm(means_a, axis=1) * np.linalg.norm(means_b, axis=1) + 1e-12
        )
        at_least += int(np.sum(1.0 - cos >= observed - 1e-12))
    return (at_least + 1) / (resamples + 1)


def max_similarity(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each query, its highest cosine similarity to any reference row (rows are unit vectors)."""
    if len(queries) == 0 or len(reference) == 0:
        return np.zeros(len(queries))
    return (queries @ reference.T).max(axis=1)


def leave_one_out_similarity(reference: np.ndarray) -> np.ndarray:
    """Each reference row's highest similarity to the other rows: how close a typical training input is
    to its nearest neighbour, the yardstick for calling a live input unusual."""
    if len(reference) < 2:
        return np.ones(len(reference))
    sims = reference @ reference.T
    np.fill_diagonal(sims, -np.inf)
    return sims.max(axis=1)


def new_word_share(texts: Iterable[str], vocabulary: set[str]) -> float:
    """Share of word occurrences in `texts` that never occur in the vocabulary (the training inputs)."""
    seen = new = 0
    for text in texts:
        for word in words(text):
            seen += 1
            new += word not in vocabulary
    return new / seen if seen else 0.0


def p95(values: Sequence[float]) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), 95)) if len(values) else 0.0
