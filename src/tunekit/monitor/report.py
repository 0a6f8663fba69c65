"""The monitoring report: monitor.md and monitor.html (self-contained, charts as data URIs) and monitor.json.

Charts are embedded rather than written beside the report, so one file can be mailed, attached to a ticket
or opened from a CI artefact without its folder. The HTML is the Markdown rendered by markdown-it-py
(already installed with rich), so the two never say different things.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunekit.io import atomic_dir
from tunekit.monitor.checks import Check, MonitorResult

REPORT_FILES = ("monitor.md", "monitor.html", "monitor.json")
_COLOURS = {"reference": "#1565c0", "live": "#ef6c00", "line": "#c62828"}
_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3rem .5rem;vertical-align:top}"
    "img{max-width:100%}code{background:#f4f4f4;padding:0 .2rem}"
)


@dataclass(frozen=True)
class Chart:
    caption: str
    data_uri: str


def write_report(result: MonitorResult, out_dir: Path) -> dict[str, Path]:
    """Write the three report files into `out_dir` (replaced as a whole); return their paths."""
    charts = render_charts(result)
    markdown = render_markdown(result, charts)
    with atomic_dir(out_dir, replace=True) as tmp:
        (tmp / "monitor.md").write_text(markdown, encoding="utf-8")
        (tmp / "monitor.html").write_text(render_html(markdown), encoding="utf-8")
        (tmp / "monitor.json").write_text(json.dumps(result.to_json(), indent=2) + "\n", encoding="utf-8")
    return {name: out_dir / name for name in REPORT_FILES}


def render_markdown(result: MonitorResult, charts: list[Chart]) -> str:
    summary = result.to_json()
    period = summary["period"]
    statuses = ", ".join(f"{k}: {v}" for k, v in summary["status_counts"].items())
    lines = [
        "# Monitoring report",
        "",
        f"- Request log: `{result.log_path}`, **{len(result.records)}** requests from {period['first']} "
        f"to {period['last']} (HTTP {statuses})",
        f"- Reference: `{result.reference.path}`, {len(result.reference.texts)} training inputs",
        "",
        _alert_line(result.alerts),
        "",
        "## Checks",
        "",
        "| | check | value | threshold | detail |",
        "|---|---|---|---|---|",
    ]
    lines += [_check_row(c) for c in result.checks]
    lines += ["", "✗ alert, ✓ within threshold, ? not measured.", ""]
    if charts:
        lines += ["## Charts", ""]
        for chart in charts:
            lines += [f"![{chart.caption}]({chart.data_uri})", "", f"*{chart.caption}*", ""]
    lines += _next_steps(result)
    return "\n".join(lines).rstrip() + "\n"


def render_html(markdown: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Monitoring report</title>'
            f"<style>{_CSS}</style></head><body>\n{body}</body></html>\n")


def _alert_line(alerts: list[Check]) -> str:
    if not alerts:
        return "**No alerts.**"
    return f"**{len(alerts)} alert(s):** " + ", ".join(f"`{c.name}`" for c in alerts)


def _check_row(check: Check) -> str:
    mark = "?" if check.value is None else ("✗" if check.alert else "✓")
    value = "-" if check.value is None else _number(check.value)
    sign = ">" if check.alert_when == "above" else "<"
    detail = " ".join(check.detail.split()).replace("|", "\\|")
    return f"| {mark} | {check.title} (`{check.name}`) | {value} | alert {sign} {_number(check.threshold)} | {detail} |"


def _number(value: float) -> str:
    return f"{value:.4g}"


_ADVICE = {
    "input_length_psi": "inputs are longer or shorter than in training",
    "embedding_drift": "users ask about different things than the training data covers",
    "new_vocabulary": "inputs use words the model never saw in training",
    "label_shift": "the model predicts labels in different proportions than training had",
    "guard_block_rate": "many requests are blocked: check the guard policies and the blocked inputs",
    "schema_failure_rate": "outputs often break the JSON schema: more structured examples or a stricter prompt",
    "latency_p95": "requests are slow: lower serve.max_concurrency, use a GPU, or a smaller model",
}


def _next_steps(result: MonitorResult) -> list[str]:
    if not result.alerts:
        return []
    lines = ["## What to do", ""]
    lines += [f"- `{c.name}`: {_ADVICE.get(c.name, c.title)}." for c in result.alerts]
    lines += [
        "",
        "Collect the failed and drifted requests for labelling and the next fine-tune:",
        "",
        f"    tunekit monitor export {result.log_path} --reference {result.reference.path} --out to_label.jsonl",
    ]
    return lines


def render_charts(result: MonitorResult) -> list[Chart]:
    """Every chart the result has data for, as PNG data URIs."""
    figure_cls, canvas_cls = _matplotlib()
    charts = []
    for caption, draw in _chart_builders(result):
        fig = figure_cls(figsize=(7, 3.2))
        canvas_cls(fig)  # Agg canvas, no pyplot: no global figure state, safe from any thread
        draw(fig.add_subplot())
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        charts.append(Chart(caption, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()))
    return charts


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the monitoring report draws its charts with matplotlib: pip install matplotlib") from exc
    return Figure, FigureCanvasAgg


def _chart_builders(result: MonitorResult) -> list[tuple[str, Any]]:
    series = result.series
    builders: list[tuple[str, Any]] = []
    lengths = series.get("lengths", {})
    if lengths.get("reference") and lengths.get("live"):
        builders.append(("Words per input: training vs live", lambda ax: _two_histograms(
            ax, lengths["reference"], lengths["live"], "words per input")))
    sim = result.similarity
    if sim is not None:
        def draw_similarity(ax: Any) -> None:
            _two_histograms(ax, sim.reference_loo, sim.live_max, "cosine similarity to nearest training input")
            ax.axvline(sim.unusual_below, color=_COLOURS["line"], linestyle="--", label="unusual below")
            ax.legend()
        builders.append(("Closeness to the training inputs", draw_similarity))
    if "labels" in series:
        builders.append(("Label shares: training vs predicted", lambda ax: _label_bars(ax, series["labels"])))
    slo = next((c.threshold for c in result.checks if c.name == "latency_p95"), None)
    if series.get("latency_ms") and slo is not None:
        def draw_latency(ax: Any) -> None:
            ax.hist(series["latency_ms"], bins=40, color=_COLOURS["live"])
            ax.axvline(slo, color=_COLOURS["line"], linestyle="--", label="SLO (p95)")
            ax.set_xlabel("latency (ms)")
            ax.set_ylabel("requests")
            ax.legend()
        builders.append(("Latency of served requests", draw_latency))
    return builders


def _two_histograms(ax: Any, reference: Any, live: Any, xlabel: str) -> None:
    both = np.concatenate([np.asarray(reference, dtype=float), np.asarray(live, dtype=float)])
    bins = np.histogram_bin_edges(both, bins=min(40, max(5, len(np.unique(both)))))
    ax.hist(reference, bins=bins, density=True, alpha=0.55, color=_COLOURS["reference"], label="training")
    ax.hist(live, bins=bins, density=True, alpha=0.55, color=_COLOURS["live"], label="live")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share (density)")
    ax.legend()


def _label_bars(ax: Any, labels: dict[str, Any]) -> None:
    ref, live = labels["reference"], labels["live"]
    keys = [k for k, _ in (ref + live).most_common(20)]
    x = np.arange(len(keys))
    ax.bar(x - 0.2, [ref[k] / sum(ref.values()) for k in keys], 0.4, color=_COLOURS["reference"], label="training")
    ax.bar(x + 0.2, [live[k] / sum(live.values()) for k in keys], 0.4, color=_COLOURS["live"], label="live")
    ax.set_xticks(x, keys, rotation=30, ha="right")
    ax.set_ylabel("share")
    ax.legend()
