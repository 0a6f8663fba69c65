"""json_schema: share of outputs that are JSON and conform to the schema in `eval.json_schema`.

The schema is checked when the metrics are checked, before any model loads, so a broken schema file
fails in seconds rather than after generation. Details count the most common violations, which
usually say what the model gets wrong (a missing key, a value outside an enum).
"""

from __future__ import annotations

from collections import Counter

from tunekit.data.answers import is_json, parse_json_output
from tunekit.eval.metrics import register
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result

NOT_JSON = "not JSON"


def schema_validator(schema: dict):
    from jsonschema.validators import validator_for

    cls = validator_for(schema)  # the draft the schema's $schema names; the latest draft without one
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def schema_problems(schema: object) -> list[str]:
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, dict):
        return [f"eval.json_schema must hold a JSON object, not {type(schema).__name__}"]
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        return [f"eval.json_schema is not a valid JSON schema: {exc.message}"]
    return []


def violation(error) -> str:
    """A short, countable description: where in the output and what kind of rule failed."""
    where = "/".join(str(p) for p in error.absolute_path) or "<root>"
    return f"{where}: {error.validator}"


@register
class JsonSchema(Metric):
    name = "json_schema"
    requires = ("json_schema",)
    description = "share of outputs that conform to eval.json_schema"

    def check(self, ctx: MetricContext) -> list[str]:
        return super().check(ctx) or schema_problems(ctx.json_schema)

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        check_lengths(self.name, predictions, references)
        validator = schema_validator(ctx.json_schema)
        scores, failures = [], Counter()
        for prediction in predictions:
            value = parse_json_output(prediction)
            if not is_json(value):
                failures[NOT_JSON] += 1
                scores.append(0.0)
                continue
            errors = [violation(e) for e in validator.iter_errors(value)]
            failures.update(set(errors))
            scores.append(float(not errors))
        return mean_result(scores, failures=dict(failures.most_common(10)))
