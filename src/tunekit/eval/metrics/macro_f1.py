"""macro_f1: the unweighted mean of per-label F1, so rare labels count as much as common ones.

Averaged over the labels of the set that occur among references or predictions (as scikit-learn does
by default): a label absent from the test set says nothing about the model. A prediction outside the
set is a miss for the reference's label, not a class of its own. F1 of a label with no true and no
predicted positives does not arise (such labels are not averaged); a label with predictions but no
hits scores 0.
"""

from __future__ import annotations

from tunekit.eval.metrics import register
from tunekit.eval.metrics._labels import check_label_context, label_outputs
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths


def f1_per_label(matrix: list[list[int]], n_labels: int) -> dict[int, float]:
    """F1 of each label index that occurs as a reference or a prediction."""
    scores = {}
    for label in range(n_labels):
        true_pos = matrix[label][label]
        predicted = sum(row[label] for row in matrix)
        actual = sum(matrix[label])
        if predicted == 0 and actual == 0:
            continue
        scores[label] = 2 * true_pos / (predicted + actual)  # = 2PR / (P + R), defined when either is > 0
    return scores


@register
class MacroF1(Metric):
    name = "macro_f1"
    description = "mean of per-label F1 over the labels that occur"

    def check(self, ctx: MetricContext) -> list[str]:
        return super().check(ctx) + check_label_context(self.name, ctx)

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        outputs = label_outputs(predictions, references, ctx)
        confusion = outputs.confusion()
        scores = f1_per_label(confusion["matrix"], len(outputs.labels))
        value = sum(scores.values()) / len(scores) if scores else 0.0
        per_label = {outputs.labels[i]: round(f1, 6) for i, f1 in scores.items()}
        return MetricResult(value=value, per_example=None, details={"per_label_f1": per_label, "confusion": confusion})
