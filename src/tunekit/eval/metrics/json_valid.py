"""json_valid: share of outputs that are JSON (one surrounding Markdown code fence is allowed).

Strict on purpose: "Here is the JSON: {...}" fails, because a program reading the output would fail.
"""

from __future__ import annotations

from tunekit.data.answers import is_json, parse_json_output
from tunekit.eval.metrics import register
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result


@register
class JsonValid(Metric):
    name = "json_valid"
    description = "share of outputs that parse as JSON (code fences allowed)"

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        return mean_result([float(is_json(parse_json_output(p))) for p in predictions])
