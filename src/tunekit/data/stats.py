"""Statistics that tell whether data is fit to train on: token lengths and label balance."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from tunekit.data.records import Example

# A JSON field counts as a label-like field when it takes at most this many values.
FIELD_VALUES_MAX = 30


def label_of(example: Example, label_answers: bool) -> str | None:
    if example.label is not None:
        return example.label
    return example.text_of("assistant") if label_answers else None


def answers_are_labels(examples: list[Example], max_labels: int) -> bool:
    """Single-answer data whose answers come from a small, repeating set is a classification task."""
    if any(e.label is not None for e in examples):
        return True
    if not examples or any(sum(m["role"] == "assistant" for m in e.messages) != 1 for e in examples):
        return False
    if _json_field_counts(examples):  # structured records: balance is reported per field instead
        return False
    return _repeating_answers(examples, max_labels)


def _repeating_answers(examples: list[Example], max_labels: int) -> bool:
    distinct = len({e.text_of("assistant") for e in examples})
    return distinct <= max_labels and distinct <= len(examples) / 2


def stratum_keys(examples: list[Example], max_labels: int) -> list[str | None]:
    """What a split is stratified by: the label, or the whole answer when answers repeat from a small
    set (e.g. JSON records of a few fields); None (no stratification) otherwise."""
    if any(e.label is not None for e in examples):
        return [label_of(e, True) for e in examples]
    single = all(sum(m["role"] == "assistant" for m in e.messages) == 1 for e in examples)
    if single and _repeating_answers(examples, max_labels):
        return [e.text_of("assistant") for e in examples]
    return [None] * len(examples)


def label_stats(examples: list[Example], max_labels: int) -> dict[str, Any]:
    """Counts per label; for JSON answers, counts per value of each small-valued field (e.g. category)."""
    if answers_are_labels(examples, max_labels):
        counts = Counter(label_of(e, True) for e in examples)
        return {"kind": "labels", "labels": _balance(counts)}
    fields = _json_field_counts(examples)
    if fields:
        return {"kind": "json_fields", "fields": {name: _balance(c) for name, c in fields.items()}}
    return {"kind": "none"}


def _json_field_counts(examples: list[Example]) -> dict[str, Counter[str]]:
    counts: dict[str, Counter[str]] = {}
    parsed = 0
    for example in examples:
        try:
            answer = json.loads(example.text_of("assistant"))
        except (json.JSONDecodeError, ValueError):
            continue
        if not isinstance(answer, dict):
            continue
        parsed += 1
        for key, value in answer.items():
            if isinstance(value, (str, int, bool)) or value is None:
                counts.setdefault(key, Counter())[str(value)] += 1
    if parsed < max(1, len(examples) // 2):
        return {}
    return {k: c for k, c in counts.items() if len(c) <= FIELD_VALUES_MAX}


def _balance(counts: Counter[str]) -> dict[str, Any]:
    ordered = dict(counts.most_common())
    values = list(ordered.values())
    return {
        "counts": ordered,
        "distinct": len(values),
        "min": min(values),
        "max": max(values),
        "imbalance": round(max(values) / min(values), 2),
    }


def length_stats(lengths: list[int], max_seq_len: int) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    arr = np.asarray(lengths)
    return {
        "count": int(arr.size),
        "min": int(arr.min()),
        "p50": int(np.percentile(arr, 50)),
        "mean": round(float(arr.mean()), 1),
        "p95": int(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "total": int(arr.sum()),
        "over_max_seq_len": int((arr > max_seq_len).sum()),
        "max_seq_len": max_seq_len,
    }
