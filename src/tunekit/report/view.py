"""What the evaluation report says, worked out once from the result dict; markdown.py and html.py only lay it out.

Every part of the result except the candidates is optional: a missing section is left out of the report
rather than crashing it, because a partial result is still worth reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tunekit.errors import UserError
from tunekit.gates import OPERATORS

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
# Metrics where smaller is better when no gate says which way they point.
_LOWER_IS_BETTER_PREFIXES = ("latency", "cost", "loss", "perplexity", "error")
MAX_DISAGREEMENTS = 25  # the rest stay in eval.json; a report of hundreds of examples is not read
MAX_TEXT_CHARS = 2000


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
    passed_all: bool | None


@dataclass(frozen=True)
class Example:
    index: Any
    input: str
    reference: str
    predictions: list[tuple[str, str]]  # (candidate, prediction): fine-tune and best baseline first


@dataclass
class ReportView:
    title: str
    headline: str
    verdict: str | None
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
    more_examples: int
    provenance: list[tuple[str, str]]
    # Raw material for the plots.
    plot_metrics: list[str] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)


def build_view(result: dict[str, Any]) -> ReportView:
    candidates = _checked_candidates(result)
    ok = [c for c in candidates if c.get("status", "ok") == "ok"]
    gates = [g for g in result.get("gates") or [] if isinstance(g, dict) and g.get("metric")]
    primary = result.get("primary_metric") or next(iter(result.get("metrics") or []), None)
    metrics = table_metrics(result, ok, gates, primary)
    decision = result.get("decision") or {}
    chosen = None if decision.get("candidate") is None else str(decision["candidate"])
    finetune = find_finetune(ok)
    baseline = best_baseline(result, ok, finetune, primary, gates)
    examples = result.get("disagreements") or []
    return ReportView(
        title=f"Evaluation: {result.get('project') or 'tunekit'}",
        headline=decision.get("headline") or "No decision was recorded for this evaluation.",
        verdict=decision.get("verdict"),
        chosen=chosen,
        reasons=_strings(decision.get("reasons")),
        gaps=_gaps(decision.get("gaps") or {}, gates),
        warnings=_warnings(result),
        subtitle=_subtitle(result),
        metrics=metrics,
        headers=[OPERATIONAL.get(m, m) for m in metrics],
        rows=[_row(c, metrics, gates, chosen) for c in ok],
        skipped=[
            (str(c.get("name")), str(c.get("status")), str(c.get("skip_reason") or "no reason given"))
            for c in candidates
            if c.get("status", "ok") != "ok"
        ],
        has_gates=bool(gates),
        comparisons=[_comparison(c) for c in result.get("comparisons") or [] if isinstance(c, dict)],
        finetune=finetune,
        baseline=baseline,
        examples=[_example(e, finetune, baseline) for e in examples[:MAX_DISAGREEMENTS]],
        more_examples=max(0, len(examples) - MAX_DISAGREEMENTS),
        provenance=_provenance(result),
        plot_metrics=[m for m in metrics if m in (result.get("metrics") or []) or any(g["metric"] == m for g in gates)],
        gates=gates,
        candidates=ok,
    )


def _checked_candidates(result: Any) -> list[dict[str, Any]]:
    fix = "pass the dict `tunekit eval` writes to eval.json"
    if not isinstance(result, dict):
        raise UserError(f"an evaluation result must be a JSON object, not {type(result).__name__}", fix=fix)
    candidates = result.get("candidates") or []
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        raise UserError("'candidates' must be a list of objects", where="eval result", fix=fix)
    return candidates


def table_metrics(
    result: dict[str, Any], ok: list[dict[str, Any]], gates: list[dict[str, Any]], primary: str | None
) -> list[str]:
    """Primary metric, the other declared metrics, anything else measured, then the serving figures."""
    order: list[str] = [primary] if primary else []
    order += list(result.get("metrics") or [])
    order += [g["metric"] for g in gates]
    order += [name for c in ok for name in (c.get("metrics") or {})]
    seen = list(dict.fromkeys(m for m in order if m and m not in OPERATIONAL))
    measured = {name for c in ok for name in (c.get("metrics") or {})} | {g["metric"] for g in gates}
    return seen + [m for m in OPERATIONAL if m in measured]


def find_finetune(ok: list[dict[str, Any]]) -> str | None:
    for test in (lambda c: c.get("kind") in ("finetuned", "finetune"), lambda c: c.get("name") == "finetuned"):
        match = next((c for c in ok if test(c)), None)
        if match:
            return match.get("name")
    return None


def lower_is_better(metric: str, gates: list[dict[str, Any]]) -> bool:
    ops = {g.get("op") for g in gates if g["metric"] == metric}
    if ops:
        return bool(ops & {"<", "<="})
    return metric.startswith(_LOWER_IS_BETTER_PREFIXES)


def best_baseline(
    result: dict[str, Any],
    ok: list[dict[str, Any]],
    finetune: str | None,
    primary: str | None,
    gates: list[dict[str, Any]],
) -> str | None:
    """The baseline the runner compared the fine-tune with, else the best other candidate on the primary metric."""
    names = {c.get("name") for c in ok} - {finetune}
    for comp in result.get("comparisons") or []:
        if comp.get("a") == finetune and comp.get("b") in names and comp.get("metric") in (primary, None):
            return comp["b"]
    scored = [
        (c["metrics"][primary], c["name"])
        for c in ok
        if c.get("name") in names and is_number((c.get("metrics") or {}).get(primary))
    ]
    if not scored:
        return None
    pick = min if lower_is_better(primary or "", gates) else max
    return pick(scored, key=lambda pair: pair[0])[1]


def gate_passed(candidate: dict[str, Any], gate: dict[str, Any]) -> bool:
    """The runner's verdict on this gate; recomputed from the value only when the runner left none."""
    for outcome in candidate.get("gate_results") or []:
        if outcome.get("text") == gate.get("text") and "passed" in outcome:
            return bool(outcome["passed"])
    value = (candidate.get("metrics") or {}).get(gate["metric"])
    op = OPERATORS.get(gate.get("op", ""))
    return bool(is_number(value) and op and is_number(gate.get("threshold")) and op(value, gate["threshold"]))


def _row(candidate: dict[str, Any], metrics: list[str], gates: list[dict[str, Any]], chosen: str | None) -> Row:
    values = candidate.get("metrics") or {}
    cells = []
    for metric in metrics:
        on_metric = [g for g in gates if g["metric"] == metric]
        passed = all(gate_passed(candidate, g) for g in on_metric) if on_metric else None
        cells.append(Cell(format_value(metric, values.get(metric)), passed))
    passed_all = candidate.get("passed_all")
    if passed_all is None and gates:
        passed_all = all(gate_passed(candidate, g) for g in gates)
    name = str(candidate.get("name"))
    return Row(name, str(candidate.get("kind") or ""), name == chosen, cells, passed_all)


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


def _gaps(gaps: dict[str, Any], gates: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    metric_of = {g.get("text"): g["metric"] for g in gates}
    out = []
    for text, per_candidate in gaps.items():
        if isinstance(per_candidate, dict) and per_candidate:
            metric = metric_of.get(text, "")
            out.append((str(text), [(str(n), format_value(metric, v)) for n, v in per_candidate.items()]))
    return out


def _warnings(result: dict[str, Any]) -> list[str]:
    warnings = []
    previous = result.get("previous_test_sha256")
    current = (result.get("test_split") or {}).get("sha256")
    if previous and previous != current:
        warnings.append(
            f"The test split changed since the previous evaluation (sha256 {str(previous)[:12]}… then, "
            f"{str(current)[:12]}… now): these scores are not comparable with earlier reports."
        )
    return warnings + _strings(result.get("warnings"))


def _strings(value: Any) -> list[str]:
    """A list of messages; a lone string is one message, not a list of characters."""
    if not value:
        return []
    return [str(value)] if isinstance(value, str) else [str(item) for item in value]


def _subtitle(result: dict[str, Any]) -> str:
    parts = [str(result[k]) for k in ("project", "created") if result.get(k)]
    if result.get("tunekit_version"):
        parts.append(f"tunekit {result['tunekit_version']}")
    split = result.get("test_split") or {}
    if split.get("evaluated") is not None:
        parts.append(f"{split['evaluated']} of {split.get('rows', '?')} test rows evaluated")
    return " · ".join(parts)


def _comparison(comp: dict[str, Any]) -> dict[str, str]:
    metric = str(comp.get("metric") or "")
    low, high = comp.get("low"), comp.get("high")
    significant = "–"
    if is_number(low) and is_number(high):
        significant = "yes" if low > 0 or high < 0 else "no"
    confidence = comp.get("confidence")
    return {
        "pair": f"{comp.get('a')} − {comp.get('b')}",
        "metric": metric,
        "diff": format_value(metric, comp.get("diff"), signed=True),
        "ci": f"{format_value(metric, low, signed=True)} … {format_value(metric, high, signed=True)}",
        "confidence": f"{confidence:.0%}" if is_number(confidence) else "–",
        "samples": format_value("", comp.get("samples")),
        "excludes_zero": significant,
    }


def _example(entry: dict[str, Any], finetune: str | None, baseline: str | None) -> Example:
    predictions = entry.get("predictions") or {}
    order = [n for n in (finetune, baseline) if n in predictions] + [
        n for n in predictions if n not in (finetune, baseline)
    ]
    return Example(
        index=entry.get("index", "?"),
        input=clip(entry.get("input")),
        reference=clip(entry.get("reference")),
        predictions=[(str(n), clip(predictions[n])) for n in order],
    )


def clip(text: Any) -> str:
    text = "" if text is None else str(text)
    return (
        text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + f"… [{len(text) - MAX_TEXT_CHARS} more chars]"
    )


def _generation(result: dict[str, Any]) -> str | None:
    if not result.get("dtype"):
        return None
    return f"{result['dtype']}, greedy, at most {result.get('max_new_tokens', '?')} new tokens"


def _latency_note(latency: Any) -> str | None:
    if not isinstance(latency, dict):
        return None
    return (f"{latency.get('samples', '?')} requests per candidate, {latency.get('concurrency', '?')} in flight, "
            f"{latency.get('how', '')}".rstrip(", "))


def _provenance(result: dict[str, Any]) -> list[tuple[str, str]]:
    split = result.get("test_split") or {}
    rows = [
        ("test split", split.get("path")),
        ("test split sha256", split.get("sha256")),
        ("chat template sha256", result.get("chat_template_sha256")),
        ("previous test split sha256", result.get("previous_test_sha256")),
        ("generation", _generation(result)),
        ("latency", _latency_note(result.get("latency"))),
        ("tunekit version", result.get("tunekit_version")),
        ("created", result.get("created")),
    ]
    return [(label, str(value)) for label, value in rows if value]
