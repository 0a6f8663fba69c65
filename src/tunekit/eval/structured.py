"""What a constrained candidate writes without its constraint: the rate that says what the model itself learnt.

Under a constraint, json_valid (or, for a label choice, label_valid) is 1.0 by construction, unless
max_new_tokens cuts an answer short, so the number alone says nothing about the model. When candidates are
constrained, a seeded sample of test rows (`eval.unconstrained_samples`, the same rows for every candidate) is
decoded a second time without the constraint, and the same rate is measured both ways on those rows.

A sample and not the whole test set because the second pass costs about what the quality pass costs on the same
rows. Measured on the demo (SmolLM2-135M on 2 shared CPU cores, the first 64 pinned test rows, 40 new tokens, under
the schema inferred from train): without the constraint the pass took 1.06x the constrained one's time for
zero-shot (it rambles to the token limit) and 1.14x for few-shot. Over the whole 186-row test set that doubles each
candidate's generation time; 64 rows add about a third. A rate on 64 rows is within about +-0.12 of the whole
set's (95%, at a rate of 0.5; closer near 0 or 1): enough to tell "writes JSON" from "does not". The seconds the
pass took are recorded with the rate.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from tunekit.data.answers import is_json, parse_json_output
from tunekit.data.dedupe import normalize_for_match
from tunekit.results import StructuredOutput


def validity(metric: str, texts: list[str], labels: list[str] | None) -> float:
    """json_valid: the share of texts that are JSON (as the json_valid metric reads them); label_valid: the share
    that are one of `labels` (case, spacing and punctuation ignored, as accuracy reads them)."""
    if not texts:
        return 0.0
    if metric == "json_valid":
        hits = [is_json(parse_json_output(text)) for text in texts]
    else:
        allowed = {normalize_for_match(label) for label in labels or ()}
        hits = [normalize_for_match(text) in allowed for text in texts]
    return round(sum(hits) / len(texts), 6)


def decode_unconstrained(generator: Any, prompts: list[Any], params: Any,
                         rows: list[int]) -> tuple[dict[int, str], float]:
    """The raw text of `rows` decoded as `params` says but without its constraint, and the seconds it took."""
    free = replace(params, constraint=None, logprobs=None)
    start = time.perf_counter()
    generations = generator.generate([prompts[i] for i in rows], free)
    return {i: g.text for i, g in zip(rows, generations)}, time.perf_counter() - start


def structured_output(constraint: Any, note: str | None, metric: str | None, scored: list[str],
                      unconstrained: dict[int, str] | None, seconds: float | None,
                      labels: list[str] | None) -> StructuredOutput:
    """The candidate's record: its constraint, and the rate on the rows decoded both ways (`unconstrained`, already
    read the way the metrics read answers)."""
    described = constraint.describe() if constraint is not None else None
    if constraint is None or metric is None or not unconstrained:
        return StructuredOutput(constraint=described, note=note, metric=metric if constraint is not None else None)
    rows = sorted(unconstrained)
    return StructuredOutput(
        constraint=described, note=note, metric=metric,
        constrained=validity(metric, [scored[i] for i in rows], labels),
        unconstrained=validity(metric, [unconstrained[i] for i in rows], labels),
        rows=len(rows), seconds=round(seconds, 3) if seconds is not None else None,
    )
