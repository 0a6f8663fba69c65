"""How well a candidate's confidence in its label matches how often it is right (label metrics only).

An answer's confidence is the probability the model gave the label it wrote: the product of the probabilities
of the tokens that spell the label (the `eval.label_field` value of a JSON answer, or the whole answer for plain
labels), from the engine's per-token log-probabilities (`GenerationParams.logprobs=0`). They are taken under the
constraint the candidate was decoded with, so labels it could not have written take no probability away. A token
that spells part of the label and part of what surrounds it (`"bill` of `"billing"`) counts: it chose the label.

Expected calibration error (Guo et al., 2017): answers are put into 10 equal-width bins by confidence, and
ECE = sum over bins of (answers in the bin / answers) x |accuracy in the bin - mean confidence in the bin|.
0 is perfectly calibrated. An answer that states no label has no confidence and is left out (counted).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

from tunekit.data.answers import find_json_object
from tunekit.results import Calibration

ECE_BINS = 10
_DECODER = json.JSONDecoder()


def label_span(text: str, label_field: str | None) -> tuple[int, int] | None:
    """Where the label is written in `text`, as [start, end) character offsets: the label field's value (inside
    its quotes for a string) of the first JSON object, or the whole answer without surrounding white space."""
    if label_field is None:
        start = len(text) - len(text.lstrip())
        end = len(text.rstrip())
        return (start, end) if end > start else None
    obj = find_json_object(text)
    if obj is None or label_field not in obj:
        return None
    for key in re.finditer(re.escape(json.dumps(label_field)) + r"\s*:\s*", text):
        try:
            value, end = _DECODER.raw_decode(text, key.end())
        except (json.JSONDecodeError, RecursionError):
            continue
        if value == obj[label_field] and type(value) is type(obj[label_field]):
            start = key.end()
            return (start + 1, end - 1) if isinstance(value, str) and value else (start, end)
    return None


def span_probability(text: str, logprobs: Sequence[Any], span: tuple[int, int]) -> float | None:
    """The product of the probabilities of the tokens overlapping `span` of `text`; None when the tokens do not
    spell the text (they cannot be lined up with it) or none overlaps."""
    spelled = "".join(token.token for token in logprobs)
    if not spelled.startswith(text[: span[1]]):
        return None
    position, total, overlapped = 0, 0.0, False
    for token in logprobs:
        end = position + len(token.token)
        if end > span[0] and position < span[1]:
            total += token.logprob
            overlapped = True
        position = end
        if position >= span[1]:
            break
    return math.exp(total) if overlapped else None


def label_confidence(text: str, logprobs: Sequence[Any] | None, label_field: str | None) -> float | None:
    """The probability of the label `text` states (None when it states none or has no log-probabilities)."""
    if not logprobs:
        return None
    span = label_span(text, label_field)
    return span_probability(text, logprobs, span) if span else None


def calibration(confidences: Sequence[float | None], correct: Sequence[bool],
                bins: int = ECE_BINS) -> Calibration | None:
    """ECE and the per-bin counts of right and wrong answers; rows without a confidence are left out (None
    when that is every row: nothing to measure)."""
    pairs = [(c, ok) for c, ok in zip(confidences, correct) if c is not None]
    if not pairs:
        return None
    right, wrong, total = [0] * bins, [0] * bins, [0.0] * bins
    for confidence, ok in pairs:
        b = min(int(confidence * bins), bins - 1)  # [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0]
        total[b] += confidence
        (right if ok else wrong)[b] += 1
    n = len(pairs)
    gaps = sum(abs(right[b] - total[b]) for b in range(bins))  # |hits - summed confidence| = n_b * |acc - conf|
    return Calibration(
        ece=round(gaps / n, 6), bins=bins, rows=n, missing=len(confidences) - n,
        confidence_mean=round(sum(total) / n, 6), accuracy=round(sum(right) / n, 6), correct=right, wrong=wrong,
    )
