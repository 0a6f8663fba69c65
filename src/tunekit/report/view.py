"""What the evaluation report says, worked out once from the typed eval result; markdown.py and html.py only
lay it out.

Nothing eval decided is worked out again here: gate marks are the recorded gate outcomes, and the fine-tune
and baseline the report puts side by side are the pair eval compared row by row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tunekit.gates import Gate
from tunekit.results import CandidateResult, Comparison, Disagreement, Disagreements, EvalResult

VERDICTS = {
    "ship_finetune": "Ship the fine-tune",
    "use_prompting": "Use prompting",
    "use_rag": "Use RAG",
    "nothing_meets": "Nothing meets the gates",
}
# Serving figures the runner measures for every candidate; they follow the quality metrics in the table.
OPERATIONAL = {
    "latency_p50_ms": "latency p50 (ms)",
    "latency_p95_ms": "latency p95 (ms)",
    "ttft_p50_ms": "time to first token p50 (ms)",
    "input_tokens_mean": "input tokens (mean)",
    "output_tokens_mean": "output tokens (mean)",
    "tokens_per_s": "tokens/s",
    "requests_per_s": "requests/s",
    "cost_per_1k": "USD per 1k requests",
}
MAX_TEXT_CHARS = 2000
CALIBRATION_NOTE = ("How far each candidate's confidence in its label (the probability it gave the label it wrote) "
                    "is from how often it is right: expected calibration error over 10 equal-width confidence "
                    "bins, 0 when confidence matches accuracy in every bin (lower is better).")


@dataclass(frozen=True)
class Cell:
    text: str
    passed: bool | None  # None: no gate on this metric


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    chosen: bool
    cells: list[Cell]
    passed_all: bool


@dataclass(frozen=True)
class StructuredRow:
    """One candidate's validity rate under its constraint and without it (formatted)."""

    name: str
    constraint: str
    constrained: str
    unconstrained: str
    rows: str
    seconds: str
    note: str | None


@dataclass(frozen=True)
class CalibrationRow:
    name: str
    ece: str
    confidence: str  # mean confidence in the label written
    accuracy: str  # of the same answers
    rows: str
    missing: str  # answers that state no label


@dataclass(frozen=True)
class Example:
    index: int
    input: str
    reference: str
    predictions: list[tuple[str, str]]  # (candidate, prediction): fine-tune and best baseline first


@dataclass
class ReportView:
    title: str
    headline: str
    verdict: str
    chosen: str | None
    reasons: list[str]
    gaps: list[tuple[str, list[tuple[str, str]]]]  # gate text -> (candidate, how far short)
    warnings: list[str]
    subtitle: str
    metrics: list[str]  # the table's columns, in order
    headers: list[str]
    rows: list[Row]
    skipped: list[tuple[str, str, str]]  # (name, status, reason)
    has_gates: bool
    comparisons: list[dict[str, str]]
    finetune: str | None
    baseline: str | None
    examples: list[Example]
    provenance: list[tuple[str, str]]
    rounds: list[tuple[str, str, list[str]]]  # (round, run, formatted metrics) on this test set
    round_metrics: list[str]  # the rounds table's metric columns
    constraint: str = ""  # what eval.constrained decided, when it constrained the candidates
    structured_metric: str = ""  # json_valid or label_valid
    structured: list[StructuredRow] = field(default_factory=list)
    calibration: list[CalibrationRow] = field(default_factory=list)
    # Raw material for the plots.
    plot_metrics: list[str] = field(default_factory=list)
    gates: list[Gate] = field(default_factory=list)
    candidates: list[CandidateResult] = field(default_factory=list)


def build_view(result: EvalResult) -> ReportView:
    decision, pair = result.decision, result.disagreements
    metrics = table_metrics(result)
    gated = {g.metric for g in result.gates}
    return ReportView(
        title=f"Evaluation: {result.project}",
        headline=decision.headline,
        verdict=decision.verdict,
        chosen=decision.candidate,
        reasons=decision.reasons,
        gaps=_gaps(decision.gaps, result.gates),
        warnings=result.warnings,
        subtitle=_subtitle(result),
        metrics=metrics,
        headers=[OPERATIONAL.get(m, m) for m in metrics],
        rows=[_row(c, metrics, decision.candidate) for c in result.ran],
        skipped=[(c.name, c.status, c.skip_reason or "no reason given") for c in result.candidates if not c.ran],
        has_gates=bool(result.gates),
        comparisons=[_comparison(c) for c in result.comparisons],
        finetune=pair.finetune,
        baseline=pair.baseline,
        examples=[_example(row, pair) for row in pair.rows],
        provenance=_provenance(result),
        rounds=[(str(r.round), r.run, [format_value(m, r.metrics.get(m)) for m in result.metrics])
                for r in result.rounds],
        round_metrics=list(result.metrics),
        constraint=_constraint_text(result),
        structured_metric=next((c.structured.metric for c in result.ran if c.structured and c.structured.metric), ""),
        structured=[_structured(c) for c in result.ran if c.structured],
        calibration=[_calibration(c) for c in result.ran if c.calibration],
        plot_metrics=[m for m in metrics if m in result.metrics or m in gated],
        gates=result.gates,
        candidates=result.ran,
    )


def table_metrics(result: EvalResult) -> list[str]:
    """Primary metric, the other declared metrics, anything else measured, then the serving figures."""
    gated = [g.metric for g in result.gates]
    measured = [name for c in result.ran for name in c.metrics]
    order = [result.primary_metric, *result.metrics, *gated, *measured]
    quality = list(dict.fromkeys(m for m in order if m not in OPERATIONAL))
    return quality + [m for m in OPERATIONAL if m in {*measured, *gated}]


def _row(candidate: CandidateResult, metrics: list[str], chosen: str | None) -> Row:
    cells = [Cell(format_value(m, candidate.metrics.get(m)), candidate.passes_gates_on(m)) for m in metrics]
    return Row(candidate.name, candidate.kind, candidate.name == chosen, cells, candidate.passed_all)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(metric: str, value: Any, signed: bool = False) -> str:
    if value is None:
        return "–"
    if not is_number(value):
        return str(value)
    if not math.isfinite(value):
        return "n/a"
    sign = "+" if signed else ""
    if metric.endswith("_ms"):
        return f"{value:{sign},.0f}"
    if metric.startswith("cost"):
        return f"{value:{sign}.4g}"
    if isinstance(value, int):
        return f"{value:{sign},d}"
    if abs(value) <= 1:
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.2f}" if abs(value) < 10 else f"{value:{sign},.1f}"


def _gaps(gaps: dict[str, dict[str, float | None]], gates: list[Gate]) -> list[tuple[str, list[tuple[str, str]]]]:
    metric_of = {g.text: g.metric for g in gates}
    return [(text, [(name, format_value(metric_of.get(text, ""), gap)) for name, gap in short.items()])
            for text, short in gaps.items() if short]


def _subtitle(result: EvalResult) -> str:
    split = result.test_split
    return " · ".join([result.project, result.created, f"tunekit {result.tunekit_version}",
                       f"{split.evaluated} of {split.rows} test rows evaluated"])


def _comparison(comp: Comparison) -> dict[str, str]:
    signed = {name: format_value(comp.metric, getattr(comp, name), signed=True) for name in ("diff", "low", "high")}
    return {
        "pair": f"{comp.a} − {comp.b}",
        "metric": comp.metric,
        "diff": signed["diff"],
        "ci": f"{signed['low']} … {signed['high']}",
        "confidence": f"{comp.confidence:.0%}",
        "samples": format_value("", comp.samples),
        "excludes_zero": "yes" if comp.excludes_zero else "no",
    }


def _example(row: Disagreement, pair: Disagreements) -> Example:
    first = [n for n in (pair.finetune, pair.baseline) if n in row.predictions]
    order = first + [n for n in row.predictions if n not in first]
    return Example(index=row.index, input=clip(row.input), reference=clip(row.reference),
                   predictions=[(name, clip(row.predictions[name])) for name in order])


def clip(text: str) -> str:
    if len(text) <= MAX_TEXT_CHARS:
        return text
    return text[:MAX_TEXT_CHARS] + f"… [{len(text) - MAX_TEXT_CHARS} more chars]"


def structured_headers(view: ReportView) -> list[str]:
    metric = view.structured_metric or "validity"
    return ["candidate", "decoded under", f"{metric} with the constraint", f"{metric} without it", "rows",
            "time without it (s)"]


def _constrained(result: EvalResult) -> bool:
    return bool(result.constraint and result.constraint.kind)


def _constraint_text(result: EvalResult) -> str:
    if not _constrained(result):
        return ""
    setting = result.constraint
    rows = len(setting.unconstrained_rows)
    text = (f"With eval.constrained: {setting.mode}, the candidates were decoded under one {setting.description}, "
            f"{setting.source}: every answer has the task's format by construction.")
    if rows:
        text += (f" Beside each rate under the constraint is the same rate without it, on the same {rows} test rows "
                 "(seeded, the same for every candidate): what the model writes on its own.")
    return text


def _structured(candidate: CandidateResult) -> StructuredRow:
    out = candidate.structured
    seconds = "–" if out.seconds is None else f"{out.seconds:,.1f}"
    return StructuredRow(candidate.name, out.constraint or "none", format_value("", out.constrained),
                         format_value("", out.unconstrained), format_value("", out.rows), seconds, out.note)


def _calibration(candidate: CandidateResult) -> CalibrationRow:
    cal = candidate.calibration
    return CalibrationRow(candidate.name, format_value("ece", cal.ece), format_value("", cal.confidence_mean),
                          format_value("", cal.accuracy), format_value("", cal.rows), format_value("", cal.missing))


def _provenance(result: EvalResult) -> list[tuple[str, str]]:
    latency = result.latency
    rows = [
        ("test split", result.test_split.path),
        ("test split sha256", result.test_split.sha256),
        ("chat template sha256", result.chat_template_sha256),
        ("previous test split sha256", result.previous_test_sha256),
        ("generation", f"{result.dtype}, greedy, at most {result.max_new_tokens} new tokens"),
        ("latency", f"{latency.samples} requests per candidate, {latency.concurrency} in flight, {latency.how}"),
        ("output constraint", _constraint_provenance(result)),
        ("tunekit version", result.tunekit_version),
        ("created", result.created),
    ]
    return [(label, value) for label, value in rows if value]


def _constraint_provenance(result: EvalResult) -> str | None:
    setting = result.constraint
    if setting is None:
        return None
    what = setting.description or "none"
    return f"eval.constrained {setting.mode}: {what} ({setting.source})"
