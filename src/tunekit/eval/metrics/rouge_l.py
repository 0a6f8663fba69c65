"""rouge_l: F-measure of the longest common word subsequence (ROUGE-L, sentence level).

Hand-written rather than taken from `rouge-score`: that package pulls in nltk and absl for a
dynamic-programming table of a few lines, and its tokenizer differs from the normalisation the other
metrics use. Scores equal rouge-score's `rougeL` fmeasure (beta = 1) on non-empty lower-case
alphanumeric text. Two empty answers agree (1.0), as in token_f1; one empty side scores 0.
"""

from __future__ import annotations

from tunekit.eval.metrics import register
from tunekit.eval.metrics._tokens import answer_tokens, f_measure
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, one table row at a time (O(len(b)) memory)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = answer_tokens(prediction), answer_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    return f_measure(lcs_length(pred, ref), len(pred), len(ref))


@register
class RougeL(Metric):
    name = "rouge_l"
    description = "mean ROUGE-L F-measure (longest common word subsequence)"

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        return mean_result([rouge_l(p, r) for p, r in zip(predictions, references)])
