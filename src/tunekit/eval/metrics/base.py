"""What every metric is: a name, a direction, the context it needs, and `compute`.

A metric sees whole lists rather than one pair at a time because some (macro-F1, per-field accuracy)
are not means over examples; those that are return `per_example` too, which lets the paired bootstrap
resample without recomputing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

# Where each context field comes from in the config, for messages that tell the user what to set.
CONTEXT_KEYS = {
    "labels": "eval.labels",
    "label_field": "eval.label_field",
    "json_schema": "eval.json_schema",
}


@dataclass
class MetricContext:
    """Task knowledge some metrics need, filled from the config (and the train split) before scoring."""

    labels: list[str] | None = None
    label_field: str | None = None
    json_schema: dict | None = None
    fields: list[str] | None = None  # default: keys of the JSON references
    retrieved: list[list[str]] | None = None  # per example, the chunk ids given as sources [1], [2], ...
    citation_field: str | None = "sources"  # JSON answers may cite in this field as well as with [n]


@dataclass
class MetricResult:
    value: float
    per_example: list[float] | None  # set when `value` is the mean of these
    details: dict = field(default_factory=dict)  # e.g. a confusion matrix, per-field accuracies


class Metric(ABC):
    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ()  # MetricContext fields that must be set
    # Scores the raw output, citations included; the others score the answer without a JSON citation field.
    reads_citations: ClassVar[bool] = False
    description: ClassVar[str] = ""

    @abstractmethod
    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        """Score model outputs against references; both lists are in test-set order."""

    def check(self, ctx: MetricContext) -> list[str]:
        """Problems with the context, as messages; run before any model loads. Empty means ready."""
        return [
            f"metric '{self.name}' needs {CONTEXT_KEYS.get(need, need)}, which is not set in the config"
            for need in self.requires
            if getattr(ctx, need, None) is None
        ]


def mean_result(scores: list[float], **details: object) -> MetricResult:
    """A metric that is the mean of per-example scores (0 for an empty test set)."""
    value = sum(scores) / len(scores) if scores else 0.0
    return MetricResult(value=value, per_example=list(scores), details=dict(details))


def check_lengths(metric: str, predictions: list[str], references: list[str]) -> None:
    # A mismatch means outputs were dropped or reordered upstream; scoring would silently pair the wrong rows.
    if len(predictions) != len(references):
        raise ValueError(f"{metric}: {len(predictions)} predictions but {len(references)} references")
