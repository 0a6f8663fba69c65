"""exact_match: the answer equals the reference once case, punctuation and spacing are ignored.

The same normalisation as training's answer evaluation (`normalize_for_match`), so the number a run
printed while training and the number the evaluation reports mean the same thing. JSON answers are
compared as parsed JSON, so key order and formatting do not count as differences.
"""

from __future__ import annotations

from tunekit.data.answers import is_json, json_equal, parse_json_output
from tunekit.data.dedupe import normalize_for_match
from tunekit.eval.metrics import register
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result


def answers_match(prediction: str, reference: str) -> bool:
    ref_json = parse_json_output(reference)
    # A JSON object or array must come back as JSON (a truncated '{"a": 1' is wrong even though its
    # words match); a bare JSON string or number is just an answer: '"Paris"' matches 'paris'.
    if isinstance(ref_json, (dict, list)):
        pred_json = parse_json_output(prediction)
        return is_json(pred_json) and json_equal(pred_json, ref_json)
    return normalize_for_match(prediction) == normalize_for_match(reference)


@register
class ExactMatch(Metric):
    name = "exact_match"
    description = "share of answers equal to the reference (case, punctuation, spacing and JSON layout ignored)"

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        return mean_result([float(answers_match(p, r)) for p, r in zip(predictions, references)])
