"""report.md: the evaluation for people reading it in a terminal, an editor or a code review."""

from __future__ import annotations

import re

from tunekit.report.plots import Plot
from tunekit.report.view import CALIBRATION_NOTE, VERDICTS, Cell, Example, ReportView, structured_headers

PASS, FAIL = "✓", "✗"


def render_markdown(view: ReportView, plots: list[Plot], plots_dir: str = "plots") -> str:
    parts = [
        _decision(view),
        _warnings(view),
        _candidates(view),
        _structured(view),
        _calibration(view),
        _comparisons(view),
        _rounds(view),
        _plots(plots, plots_dir),
        _disagreements(view),
        _provenance(view),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _decision(view: ReportView) -> str:
    lines = [f"# {_inline(view.headline)}", ""]
    if view.subtitle:
        lines += [_inline(view.subtitle), ""]
    chosen = f" (`{view.chosen}`)" if view.chosen else ""
    lines += [f"**Decision: {VERDICTS[view.verdict]}**{chosen}", ""]
    lines += [f"- {_inline(reason)}" for reason in view.reasons]
    if view.gaps:
        lines += ["", "**How far from the gates:**", ""]
        for gate, shortfalls in view.gaps:
            short = ", ".join(f"`{name}` short by {gap}" for name, gap in shortfalls)
            lines.append(f"- `{gate}`: {short}")
    return "\n".join(lines).rstrip()


def _warnings(view: ReportView) -> str:
    if not view.warnings:
        return ""
    return "## Warnings\n\n" + "\n".join(f"- ⚠ {_inline(w)}" for w in view.warnings)


def _candidates(view: ReportView) -> str:
    lines = ["## Candidates", ""]
    if view.rows:
        gated = ["all gates"] if view.has_gates else []
        lines += [
            _table_row(["candidate", *view.headers, *gated]),
            _table_row(["---"] * (1 + len(view.headers) + len(gated))),
        ]
        for row in view.rows:
            name = f"**{row.name}** (chosen)" if row.chosen else row.name
            verdict = [_mark(row.passed_all)] if view.has_gates else []
            lines.append(_table_row([name, *(_cell(c) for c in row.cells), *verdict]))
        if view.has_gates:
            lines += ["", f"{PASS} meets its gate, {FAIL} misses it; unmarked metrics have no gate."]
    else:
        lines.append("No candidate was evaluated.")
    if view.skipped:
        lines += ["", "Not evaluated:", ""]
        lines += [f"- `{name}` ({status}): {_inline(reason)}" for name, status, reason in view.skipped]
    return "\n".join(lines)


def _structured(view: ReportView) -> str:
    if not view.structured:
        return ""
    lines = ["## Structured outputs", "", _inline(view.constraint), "", _table_row(structured_headers(view)),
             _table_row(["---"] * 6)]
    for row in view.structured:
        lines.append(_table_row([row.name, row.constraint, row.constrained, row.unconstrained, row.rows, row.seconds]))
    notes = [f"- `{row.name}`: {_inline(row.note)}" for row in view.structured if row.note]
    return "\n".join(lines + (["", *notes] if notes else []))


def _calibration(view: ReportView) -> str:
    if not view.calibration:
        return ""
    lines = ["## Calibration", "", CALIBRATION_NOTE, "",
             _table_row(["candidate", "ECE", "mean confidence", "accuracy", "answers", "without a label"]),
             _table_row(["---"] * 6)]
    lines += [_table_row([r.name, r.ece, r.confidence, r.accuracy, r.rows, r.missing]) for r in view.calibration]
    return "\n".join(lines)


def _comparisons(view: ReportView) -> str:
    if not view.comparisons:
        return ""
    lines = [
        "## Paired comparisons",
        "",
        "Paired bootstrap over the same test rows: the difference and its confidence interval.",
        "",
        _table_row(["a − b", "metric", "difference", "interval", "confidence", "resamples", "excludes 0"]),
        _table_row(["---"] * 7),
    ]
    for c in view.comparisons:
        lines.append(
            _table_row([c["pair"], c["metric"], c["diff"], c["ci"], c["confidence"], c["samples"], c["excludes_zero"]])
        )
    return "\n".join(lines)


def _plots(plots: list[Plot], plots_dir: str) -> str:
    if not plots:
        return ""
    return "## Charts\n\n" + "\n\n".join(f"![{p.caption}]({plots_dir}/{p.name})" for p in plots)


def _disagreements(view: ReportView) -> str:
    if not view.examples:
        return ""
    pair = " and ".join(f"`{n}`" for n in (view.finetune, view.baseline) if n) or "the candidates"
    lines = ["## Where they disagree", "", f"Test rows where {pair} answer differently."]
    for example in view.examples:
        lines += ["", *_example(example)]
    return "\n".join(lines)


def _example(example: Example) -> list[str]:
    lines = [
        f"### Test row {example.index}",
        "",
        "Input:",
        "",
        _fenced(example.input),
        "",
        "Reference:",
        "",
        _fenced(example.reference),
    ]
    for name, prediction in example.predictions:
        lines += ["", f"`{name}`:", "", _fenced(prediction)]
    return lines


def _rounds(view: ReportView) -> str:
    if not view.rounds:
        return ""
    metrics = view.round_metrics
    lines = ["## Rounds", "", "Each round's fine-tune on this same test set (`tunekit iterate`).", "",
             "| round | run | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    lines += [f"| {n} | `{run}` | " + " | ".join(values) + " |" for n, run, values in view.rounds]
    return "\n".join(lines)


def _provenance(view: ReportView) -> str:
    if not view.provenance:
        return ""
    return "## Provenance\n\n" + "\n".join(f"- {label}: `{value}`" for label, value in view.provenance)


def _mark(passed: bool | None) -> str:
    return "" if passed is None else (PASS if passed else FAIL)


def _cell(cell: Cell) -> str:
    return f"{cell.text} {_mark(cell.passed)}".rstrip()


def _table_row(cells: list[str]) -> str:
    return "| " + " | ".join(_inline(c).replace("|", "\\|") for c in cells) + " |"


def _inline(text: str) -> str:
    """One line of text; a newline would break a table row or a list item."""
    return " ".join(str(text).split())


def _fenced(text: str) -> str:
    """A code block that `text` cannot close early: the fence is longer than any backtick run inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"
