"""Word tokens for the overlap metrics (token_f1, rouge_l): normalised like exact match."""

from __future__ import annotations

from tunekit.data.dedupe import normalize_for_match

# SQuAD's evaluation drops English articles: "the Eiffel Tower" and "Eiffel Tower" are the same answer.
ARTICLES = frozenset({"a", "an", "the"})


def answer_tokens(text: str, *, drop_articles: bool = False) -> list[str]:
    words = normalize_for_match(text).split()
    return [w for w in words if w not in ARTICLES] if drop_articles else words


def f_measure(common: int, predicted: int, expected: int) -> float:
    """Harmonic mean of precision (common / predicted) and recall (common / expected)."""
    if common == 0:
        return 0.0
    precision, recall = common / predicted, common / expected
    return 2 * precision * recall / (precision + recall)
