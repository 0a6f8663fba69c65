"""accuracy: share of outputs whose label is the reference's label (classification tasks).

Labels come from the whole answer, or from one field of a JSON answer (`eval.label_field`); a
prediction outside the label set is always wrong and shows in the confusion matrix's "<other>" column.
"""

from __future__ import annotations

from tunekit.eval.metrics import register
from tunekit.eval.metrics._labels import check_label_context, label_outputs
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result


@register
class Accuracy(Metric):
    name = "accuracy"
    description = "share of outputs with the reference's label, with a confusion matrix"

    def check(self, ctx: MetricContext) -> list[str]:
        return super().check(ctx) + check_label_context(self.name, ctx)

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        outputs = label_outputs(predictions, references, ctx)
        # A reference outside the label set cannot be predicted right: OTHER == OTHER is not a hit.
        hits = [float(p == r != outputs.other) for p, r in zip(outputs.prediction_ids, outputs.reference_ids)]
        return mean_result(hits, confusion=outputs.confusion())
