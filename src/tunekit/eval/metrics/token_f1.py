"""token_f1: SQuAD-style word-overlap F1, partial credit for partly right free-text answers.

Tokens are lower-cased words without punctuation or articles; overlap counts repeated words as often
as both sides have them. Two empty answers agree (1.0); one empty side scores 0.
"""

from __future__ import annotations

from collections import Counter

from tunekit.eval.metrics import register
from tunekit.eval.metrics._tokens import answer_tokens, f_measure
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result


def token_f1(prediction: str, reference: str) -> float:
    pred = answer_tokens(prediction, drop_articles=True)
    ref = answer_tokens(reference, drop_articles=True)
    if not pred or not ref:
        return float(pred == ref)
    return f_measure(sum((Counter(pred) & Counter(ref)).values()), len(pred), len(ref))


@register
class TokenF1(Metric):
    name = "token_f1"
    description = "mean SQuAD-style word-overlap F1"

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        return mean_result([token_f1(p, r) for p, r in zip(predictions, references)])
