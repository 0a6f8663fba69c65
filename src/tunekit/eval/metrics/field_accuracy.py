"""field_accuracy: for JSON answers, how often each field of the reference is reproduced.

The value is the mean over fields of each field's accuracy, so a field that is hard to get right
weighs as much as an easy one; details give every field's accuracy. Fields are `ctx.fields`, or every
key of the JSON-object references in order of first appearance. A field is scored on the examples
whose reference has it; an output that is not JSON (code fences allowed) misses all of them. Values
compare like exact match: strings normalised, numbers by value, objects regardless of key order.
"""

from __future__ import annotations

from functools import lru_cache

from tunekit.data.answers import json_equal, parse_json_output
from tunekit.errors import UserError
from tunekit.eval.metrics import register
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths


def reference_fields(references: list[dict | None]) -> list[str]:
    """Keys of the reference objects, in order of first appearance."""
    fields: dict[str, None] = {}  # insertion-ordered set
    for ref in references:
        fields.update(dict.fromkeys(ref or ()))
    return list(fields)


def as_object(text: str) -> dict | None:
    value = parse_json_output(text)
    return value if isinstance(value, dict) else None


@lru_cache(maxsize=65536)  # the bootstrap recomputes on resampled lists: the same pairs, many times
def field_hits(prediction: str, reference: str) -> dict[str, bool] | None:
    """For each field of the reference object, whether the prediction has the same value; None when
    the reference is not a JSON object."""
    ref = as_object(reference)
    if ref is None:
        return None
    pred = as_object(prediction) or {}
    return {name: name in pred and json_equal(pred[name], value) for name, value in ref.items()}


@register
class FieldAccuracy(Metric):
    name = "field_accuracy"
    description = "mean over JSON fields of the share of outputs that reproduce the reference's value"

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        rows = [field_hits(p, r) for p, r in zip(predictions, references)]
        if references and all(row is None for row in rows):
            raise UserError(
                "field_accuracy compares JSON objects, but no reference answer is one",
                where="eval.metrics",
                fix="use exact_match or token_f1 for plain-text answers",
            )
        fields = ctx.fields or reference_fields(rows)
        per_field = {}
        for name in fields:
            if hits := [row[name] for row in rows if row is not None and name in row]:
                per_field[name] = sum(hits) / len(hits)
        value = sum(per_field.values()) / len(per_field) if per_field else 0.0
        details = {
            "per_field": {k: round(v, 6) for k, v in per_field.items()},
            "references_not_objects": sum(row is None for row in rows),
            "fields_in_no_reference": [name for name in fields if name not in per_field],
        }
        return MetricResult(value=value, per_example=None, details=details)
