"""refusal_rate: share of outputs that decline to answer (lower is better).

A refusal is recognised by the stock phrases chat models use; the list below is the whole definition,
so a reader can see what counts. The search is case-insensitive, anywhere in the output (models often
open politely, then refuse), and curly apostrophes count as straight ones. It says nothing about
whether refusing was right: for that, the safety evaluation runs a red-team set.
"""

from __future__ import annotations

from tunekit.data.answers import is_refusal
from tunekit.eval.metrics import register
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result


@register
class RefusalRate(Metric):
    name = "refusal_rate"
    higher_is_better = False
    description = "share of outputs that refuse ('I can't', 'I'm sorry, but', 'As an AI', ...)"

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        return mean_result([float(is_refusal(p)) for p in predictions])
