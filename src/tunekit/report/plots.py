"""The report's charts as PNG files: a bar chart per gated or quality metric, latencies, label confidence,
confusion matrices.

Figures are built with `matplotlib.figure.Figure` on an Agg canvas rather than through pyplot, so no
global figure state is touched: reports can be rendered from a server thread or next to other plots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.report.view import ReportView, format_value, is_number

PASS_COLOUR, FAIL_COLOUR, THRESHOLD_COLOUR = "#2e7d32", "#c62828", "#212121"
MAX_HIST_BINS = 50
MAX_ANNOTATED_LABELS = 25  # beyond this the numbers in a confusion matrix cell are unreadable


@dataclass(frozen=True)
class Plot:
    name: str  # file name inside plots/
    caption: str


def render_plots(view: ReportView, folder: Path) -> list[Plot]:
    """Write every chart the result has data for into `folder`; return them in report order."""
    figure_cls, canvas_cls = _matplotlib()
    palette = _palette(view)
    plots = []

    def save(fig: Any, name: str, caption: str) -> None:
        canvas_cls(fig)  # attach the Agg canvas: the figure renders with it, no backend switch needed
        fig.tight_layout()
        fig.savefig(folder / name, format="png", dpi=100)
        plots.append(Plot(name, caption))

    for metric in view.plot_metrics:
        fig = _metric_bars(figure_cls, view, metric, palette)
        if fig is not None:
            save(fig, f"metric_{_slug(metric)}.png", f"{metric} by candidate")
    fig = _latency_histogram(figure_cls, view, palette)
    if fig is not None:
        save(fig, "latency.png", "Latency per request, all candidates")
    fig = _confidence_histogram(figure_cls, view)
    if fig is not None:
        save(fig, "confidence.png", "Confidence in the label written, right and wrong answers (ECE bins)")
    for name in dict.fromkeys(n for n in (view.finetune, view.baseline) if n):
        found = _confusion(view, name)
        if found:
            metric, confusion = found
            save(
                _confusion_heatmap(figure_cls, name, metric, confusion),
                f"confusion_{_slug(name)}.png",
                f"Confusion matrix of {name} ({metric})",
            )
    return plots


def _matplotlib() -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # a core dependency, but a trimmed environment may lack it
        raise ImportError("the evaluation report draws its charts with matplotlib: pip install matplotlib") from exc
    return Figure, FigureCanvasAgg


def _palette(view: ReportView) -> dict[str, str]:
    """One colour per candidate, the same in every chart."""
    colours = [f"C{i % 10}" for i in range(len(view.candidates))]
    return {c.name: colour for c, colour in zip(view.candidates, colours)}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "unnamed"


def _metric_bars(figure_cls: Any, view: ReportView, metric: str, palette: dict[str, str]) -> Any:
    scored = [(c, c.metrics[metric]) for c in view.candidates if is_number(c.metrics.get(metric))]
    if not scored:
        return None
    gates = [g for g in view.gates if g.metric == metric]
    names = [c.name for c, _ in scored]
    values = [float(v) for _, v in scored]
    if gates:  # colour says pass/fail, as eval recorded it; the legend carries the gate line
        colours = [PASS_COLOUR if c.passes_gates_on(metric) else FAIL_COLOUR for c, _ in scored]
    else:
        colours = [palette.get(n, "C0") for n in names]
    fig = figure_cls(figsize=(max(4.5, 1.2 * len(names) + 2), 3.6))
    ax = fig.add_subplot()
    bars = ax.bar(names, values, color=colours)
    ax.bar_label(bars, labels=[format_value(metric, v) for v in values], padding=2, fontsize=8)
    for gate in gates:
        ax.axhline(gate.threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1, label=gate.text)
    if gates:
        ax.legend(loc="best", fontsize=8)
    limits = values + [g.threshold for g in gates]
    if all(0 <= v <= 1 for v in limits):  # a score: keep the 0..1 scale so charts compare at a glance
        ax.set_ylim(0, 1.08)
    else:
        ax.set_ylim(0, max(limits) * 1.12 or 1)
    ax.set_title(metric)
    ax.set_ylabel(metric)
    ax.tick_params(axis="x", labelrotation=15)
    return fig


def _latency_histogram(figure_cls: Any, view: ReportView, palette: dict[str, str]) -> Any:
    import numpy as np

    series = [(c.name, c.latencies_ms) for c in view.candidates if c.latencies_ms]
    if not series:
        return None
    everything = np.concatenate([np.asarray(v) for _, v in series])
    # Shared edges so the overlaid histograms compare bar for bar.
    edges = np.histogram_bin_edges(everything, bins=min(MAX_HIST_BINS, max(5, int(np.sqrt(everything.size)))))
    fig = figure_cls(figsize=(7, 3.6))
    ax = fig.add_subplot()
    for name, values in series:
        colour = palette.get(name, "C0")
        ax.hist(values, bins=edges, histtype="stepfilled", alpha=0.3, color=colour)
        ax.hist(values, bins=edges, histtype="step", linewidth=1.2, color=colour, label=f"{name} (n={len(values)})")
    for gate in view.gates:
        if gate.metric.startswith("latency"):
            ax.axvline(gate.threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1, label=gate.text)
    ax.set_xlabel("latency per request (ms)")
    ax.set_ylabel("requests")
    ax.legend(fontsize=8)
    return fig


def _confidence_histogram(figure_cls: Any, view: ReportView) -> Any:
    """Per candidate, answers by confidence bin, right ones stacked under wrong ones: a calibrated candidate's
    bars are mostly right on the right and mostly wrong on the left."""
    calibrated = [c for c in view.candidates if c.calibration]
    if not calibrated:
        return None
    fig = figure_cls(figsize=(min(3.2 * len(calibrated) + 1, 16), 3.4))
    axes = fig.subplots(1, len(calibrated), squeeze=False, sharey=True)[0]
    for ax, candidate in zip(axes, calibrated):
        cal = candidate.calibration
        width = 1 / cal.bins
        centres = [(b + 0.5) * width for b in range(cal.bins)]
        ax.bar(centres, cal.correct, width=width * 0.9, color=PASS_COLOUR, label="right")
        ax.bar(centres, cal.wrong, width=width * 0.9, bottom=cal.correct, color=FAIL_COLOUR, label="wrong")
        ax.set_xlim(0, 1)
        ax.set_title(f"{candidate.name} (ECE {format_value('ece', cal.ece)})", fontsize=9)
        ax.set_xlabel("confidence in its label")
    axes[0].set_ylabel("answers")
    axes[0].legend(fontsize=8)
    return fig


def _confusion(view: ReportView, name: str) -> tuple[str, dict[str, Any]] | None:
    """The candidate's first well-formed confusion matrix (rows: reference labels, columns: predictions)."""
    candidate = next((c for c in view.candidates if c.name == name), None)
    details = candidate.details if candidate else {}
    for metric, detail in details.items():
        confusion = detail.get("confusion")  # a metric's own details: free-form, so checked before drawing
        if not isinstance(confusion, dict):
            continue
        labels, matrix = confusion.get("labels") or [], confusion.get("matrix") or []
        columns = confusion.get("columns") or labels
        if labels and len(matrix) == len(labels) and all(len(row) == len(columns) for row in matrix):
            return metric, {"labels": labels, "columns": columns, "matrix": matrix}
    return None


def _confusion_heatmap(figure_cls: Any, name: str, metric: str, confusion: dict[str, Any]) -> Any:
    import numpy as np

    counts = np.asarray(confusion["matrix"], dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    # Colour by share of each reference row, so rare labels are as visible as common ones.
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    rows, cols = counts.shape
    fig = figure_cls(figsize=(min(3 + 0.7 * cols, 16), min(2.5 + 0.55 * rows, 14)))
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="share of reference row")
    ax.set_xticks(range(cols), labels=[str(c) for c in confusion["columns"]], rotation=35, ha="right")
    ax.set_yticks(range(rows), labels=[str(label) for label in confusion["labels"]])
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    ax.set_title(f"{name}: {metric}")
    if max(rows, cols) <= MAX_ANNOTATED_LABELS:
        for (i, j), count in np.ndenumerate(counts):
            ax.text(
                j,
                i,
                f"{count:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[i, j] > 0.6 else "black",
            )
    return fig
