"""citation_accuracy: share of answers that cite at least one source and only sources they were given.

An answer passes when it cites one or more sources ([n] markers, or the numbers in the JSON answer's
`ctx.citation_field`) and every n names one of the sources retrieved for
that example ([1] is the first). `ctx.retrieved` holds those sources' chunk ids per example; a candidate
that retrieved nothing (no `ctx.retrieved`) can cite nothing validly and scores 0.
"""

from __future__ import annotations

from tunekit.eval.metrics import register
from tunekit.eval.metrics.base import Metric, MetricContext, MetricResult, check_lengths, mean_result


@register
class CitationAccuracy(Metric):
    name = "citation_accuracy"
    reads_citations = True
    description = "share of answers whose [n] citations are non-empty and all name a retrieved source"

    def compute(self, predictions: list[str], references: list[str], ctx: MetricContext) -> MetricResult:
        from tunekit.rag.cite import check_citations

        check_lengths(self.name, predictions, references)
        retrieved = ctx.retrieved if ctx.retrieved is not None else [[] for _ in predictions]
        if len(retrieved) != len(predictions):
            raise ValueError(f"{self.name}: {len(predictions)} predictions but {len(retrieved)} retrieval lists")
        checks = [check_citations(text, ids, required=True, field=ctx.citation_field)
                  for text, ids in zip(predictions, retrieved)]
        n = max(len(checks), 1)
        return mean_result(
            [float(check.ok) for check in checks],
            missing=sum(check.missing for check in checks) / n,
            invalid=sum(bool(check.invalid) for check in checks) / n,
        )
