"""report.html: one self-contained page (inline CSS, charts as data URIs) that opens offline and can be mailed.

Everything from the result is passed through `html.escape`: inputs, references and predictions are
user data, and candidate names, reasons and warnings may quote them.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path

from tunekit.report.plots import Plot
from tunekit.report.view import CALIBRATION_NOTE, VERDICTS, Cell, Example, ReportView, structured_headers

VERDICT_CLASS = {"ship_finetune": "good", "use_prompting": "info", "use_rag": "info", "nothing_meets": "bad"}

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; background: #fff; }
h1 { font-size: 1.5em; margin: 0.2em 0; } h2 { border-bottom: 1px solid #d0d7de; padding-bottom: 4px; margin-top: 2em; }
.subtitle { color: #59636e; margin: 0; }
.decision { border-left: 6px solid #59636e; background: #f6f8fa; padding: 12px 18px; border-radius: 4px; }
.decision.good { border-color: #1a7f37; background: #dafbe1; }
.decision.bad { border-color: #cf222e; background: #ffebe9; }
.decision.info { border-color: #0969da; background: #ddf4ff; }
.verdict { font-weight: 600; text-transform: uppercase; letter-spacing: .04em; font-size: .85em; margin: 0; }
.warnings { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 4px; padding: 8px 18px 8px 36px; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f6f8fa; }
td.pass { background: #dafbe1; color: #116329; } td.fail { background: #ffebe9; color: #a40e26; font-weight: 600; }
tr.chosen td:first-child { font-weight: 700; }
figure { margin: 16px 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { color: #59636e; font-size: .9em; }
.example { border: 1px solid #d0d7de; border-radius: 4px; padding: 4px 14px; margin: 12px 0; }
.example dt { font-weight: 600; margin-top: 6px; } .example dd { margin: 0; }
pre { white-space: pre-wrap; word-break: break-word; background: #f6f8fa; padding: 6px 10px; margin: 2px 0;
      border-radius: 4px; font-size: .9em; }
code { font-size: .9em; } footer { margin-top: 2em; color: #59636e; font-size: .9em; }
"""


def render_html(view: ReportView, plots: list[Plot], plots_folder: Path) -> str:
    sections = [
        _decision(view),
        _warnings(view),
        _candidates(view),
        _structured(view),
        _calibration(view),
        _comparisons(view),
        _rounds(view),
        _charts(plots, plots_folder),
        _disagreements(view),
    ]
    body = "\n".join(s for s in sections if s)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(view.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n{_provenance(view)}\n</main>\n</body>\n</html>\n"
    )


def _decision(view: ReportView) -> str:
    chosen = f": {escape(view.chosen)}" if view.chosen else ""
    verdict = f'<p class="verdict">{escape(VERDICTS[view.verdict])}{chosen}</p>'
    reasons = _list(view.reasons)
    gaps = ""
    if view.gaps:
        items = [
            f"<code>{escape(gate)}</code>: " + ", ".join(f"{escape(n)} short by {escape(gap)}" for n, gap in shortfalls)
            for gate, shortfalls in view.gaps
        ]
        gaps = "<p>How far from the gates:</p><ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"
    css = VERDICT_CLASS[view.verdict]
    return (
        f'<section class="decision {css}">{verdict}<h1>{escape(view.headline)}</h1>'
        f'<p class="subtitle">{escape(view.subtitle)}</p>{reasons}{gaps}</section>'
    )


def _warnings(view: ReportView) -> str:
    if not view.warnings:
        return ""
    return f'<h2>Warnings</h2><div class="warnings">{_list(view.warnings)}</div>'


def _candidates(view: ReportView) -> str:
    out = ["<h2>Candidates</h2>"]
    if view.rows:
        gated = ["all gates"] if view.has_gates else []
        head = "".join(f"<th>{escape(h)}</th>" for h in ["candidate", *view.headers, *gated])
        rows = []
        for row in view.rows:
            name = escape(row.name) + (" <small>(chosen)</small>" if row.chosen else "")
            cells = "".join(_cell(c) for c in row.cells)
            if view.has_gates:
                verdict = "all met" if row.passed_all else "not all"
                cells += _cell(Cell(verdict, row.passed_all))
            opening = '<tr class="chosen">' if row.chosen else "<tr>"
            rows.append(f"{opening}<td>{name}</td>{cells}</tr>")
        out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        if view.has_gates:
            out.append(
                '<p class="subtitle">Green ✓ meets its gate, red ✗ misses it; uncoloured metrics have no gate.</p>'
            )
    else:
        out.append("<p>No candidate was evaluated.</p>")
    if view.skipped:
        items = [f"<code>{escape(n)}</code> ({escape(s)}): {escape(r)}" for n, s, r in view.skipped]
        out.append("<p>Not evaluated:</p><ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>")
    return "\n".join(out)


def _structured(view: ReportView) -> str:
    if not view.structured:
        return ""
    rows = [[r.name, r.constraint, r.constrained, r.unconstrained, r.rows, r.seconds] for r in view.structured]
    notes = [f"<code>{escape(r.name)}</code>: {escape(r.note)}" for r in view.structured if r.note]
    return (f"<h2>Structured outputs</h2><p>{escape(view.constraint)}</p>{_table(structured_headers(view), rows)}"
            + ("<ul>" + "".join(f"<li>{n}</li>" for n in notes) + "</ul>" if notes else ""))


def _calibration(view: ReportView) -> str:
    if not view.calibration:
        return ""
    head = ["candidate", "ECE", "mean confidence", "accuracy", "answers", "without a label"]
    rows = [[r.name, r.ece, r.confidence, r.accuracy, r.rows, r.missing] for r in view.calibration]
    return f"<h2>Calibration</h2><p>{escape(CALIBRATION_NOTE)}</p>{_table(head, rows)}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _comparisons(view: ReportView) -> str:
    if not view.comparisons:
        return ""
    head = ["a − b", "metric", "difference", "interval", "confidence", "resamples", "excludes 0"]
    keys = ["pair", "metric", "diff", "ci", "confidence", "samples", "excludes_zero"]
    rows = "".join("<tr>" + "".join(f"<td>{escape(c[k])}</td>" for k in keys) + "</tr>" for c in view.comparisons)
    return (
        "<h2>Paired comparisons</h2><p>Paired bootstrap over the same test rows: the difference and its "
        "confidence interval.</p><table><thead><tr>"
        + "".join(f"<th>{escape(h)}</th>" for h in head)
        + f"</tr></thead><tbody>{rows}</tbody></table>"
    )


def _charts(plots: list[Plot], folder: Path) -> str:
    if not plots:
        return ""
    figures = []
    for plot in plots:
        data = base64.b64encode((folder / plot.name).read_bytes()).decode("ascii")
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{escape(plot.caption)}">'
            f"<figcaption>{escape(plot.caption)}</figcaption></figure>"
        )
    return "<h2>Charts</h2>" + "\n".join(figures)


def _disagreements(view: ReportView) -> str:
    if not view.examples:
        return ""
    pair = " and ".join(f"<code>{escape(n)}</code>" for n in (view.finetune, view.baseline) if n) or "the candidates"
    parts = [f"<h2>Where they disagree</h2><p>Test rows where {pair} answer differently.</p>"]
    parts += [_example(e) for e in view.examples]
    return "\n".join(parts)


def _example(example: Example) -> str:
    entries = [("input", example.input), ("reference", example.reference), *example.predictions]
    items = "".join(f"<dt>{escape(label)}</dt><dd><pre>{escape(text)}</pre></dd>" for label, text in entries)
    return f'<article class="example"><h3>Test row {escape(str(example.index))}</h3><dl>{items}</dl></article>'


def _rounds(view: ReportView) -> str:
    if not view.rounds:
        return ""
    head = "".join(f"<th>{escape(m)}</th>" for m in view.round_metrics)
    rows = "".join(f"<tr><td>{escape(n)}</td><td><code>{escape(run)}</code></td>"
                   + "".join(f"<td>{escape(v)}</td>" for v in values) + "</tr>" for n, run, values in view.rounds)
    return (f"<h2>Rounds</h2><p>Each round's fine-tune on this same test set (<code>tunekit iterate</code>).</p>"
            f"<table><tr><th>round</th><th>run</th>{head}</tr>{rows}</table>")


def _provenance(view: ReportView) -> str:
    if not view.provenance:
        return ""
    rows = "".join(f"<tr><td>{escape(k)}</td><td><code>{escape(v)}</code></td></tr>" for k, v in view.provenance)
    return f"<footer><h2>Provenance</h2><table>{rows}</table></footer>"


def _cell(cell: Cell) -> str:
    if cell.passed is None:
        return f"<td>{escape(cell.text)}</td>"
    mark, css = ("✓", "pass") if cell.passed else ("✗", "fail")
    return f'<td class="{css}">{escape(cell.text)} {mark}</td>'


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>" if items else ""
