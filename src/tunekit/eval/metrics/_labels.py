"""Shared by `accuracy` and `macro_f1`: turning outputs into labels, and the confusion matrix.

A prediction becomes a label of the label set or OTHER. Matching ignores case, spacing and punctuation
(`normalize_for_match`, as exact match does), so "Billing." and " billing" are both the label "billing".
"""

from __future__ import annotations

from dataclasses import dataclass

from tunekit.data.answers import extract_label, label_collisions
from tunekit.data.dedupe import normalize_for_match
from tunekit.eval.metrics.base import MetricContext

OTHER = "<other>"


@dataclass
class LabelledOutputs:
    """Row i: the reference's label index, the prediction's; index len(labels) means OTHER."""

    labels: list[str]
    reference_ids: list[int]
    prediction_ids: list[int]

    @property
    def other(self) -> int:
        return len(self.labels)

    def confusion(self) -> dict:
        """Rows: reference labels (an OTHER row only when some reference is outside the set);
        columns: predicted labels plus OTHER for predictions outside the set."""
        size = len(self.labels) + 1
        matrix = [[0] * size for _ in range(size)]
        for ref, pred in zip(self.reference_ids, self.prediction_ids):
            matrix[ref][pred] += 1
        rows = list(self.labels)
        if any(matrix[self.other]):
            rows.append(OTHER)
        else:
            matrix.pop()
        return {"labels": rows, "columns": [*self.labels, OTHER], "matrix": matrix}


def label_outputs(predictions: list[str], references: list[str], ctx: MetricContext) -> LabelledOutputs:
    """Map both sides onto the label set; without one, the distinct reference labels are the set."""
    ref_texts = [extract_label(r, ctx.label_field) for r in references]
    pred_texts = [extract_label(p, ctx.label_field) for p in predictions]
    labels = list(ctx.labels) if ctx.labels is not None else sorted({t for t in ref_texts if t})
    index = {normalize_for_match(label): i for i, label in reversed(list(enumerate(labels)))}
    other = len(labels)
    return LabelledOutputs(
        labels=labels,
        reference_ids=[index.get(t, other) if t else other for t in ref_texts],
        prediction_ids=[index.get(t, other) if t else other for t in pred_texts],
    )


def check_label_context(name: str, ctx: MetricContext) -> list[str]:
    problems = []
    if ctx.labels is not None:
        if not ctx.labels:
            problems.append(f"metric '{name}' needs a non-empty eval.labels")
        if blank := [label for label in ctx.labels if not normalize_for_match(label)]:
            problems.append(f"eval.labels: {blank} have no letters or digits, so no output can match them")
        if clashes := label_collisions(ctx.labels):
            problems.append(
                f"eval.labels: {', '.join(clashes)} differ only in case, spacing or punctuation, "
                f"so '{name}' cannot tell them apart"
            )
    return problems
