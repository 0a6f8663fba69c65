"""Write the evaluation report into an eval folder: report.md, report.html and plots/, each put in place
atomically. eval.json and the predictions are eval's own output (see eval/outcome.py); the report is rendered
from the same typed result and never writes them."""

from __future__ import annotations

from pathlib import Path

from tunekit.io import atomic_dir, write_text_atomic
from tunekit.report.html import render_html
from tunekit.report.markdown import render_markdown
from tunekit.report.plots import render_plots
from tunekit.report.view import build_view
from tunekit.results import EvalResult
from tunekit.runfolder import EvalFolder


def write_report(result: EvalResult, folder: EvalFolder) -> dict[str, Path]:
    """Render `result` into `folder`.

    Everything is rendered before anything is replaced, so a failure leaves an earlier report intact;
    plots/ is swapped as a whole so charts of candidates that no longer exist do not linger.

    Returns:
        Paths keyed by their name relative to the folder: the markdown and HTML reports, and
        "plots/<name>.png" for each chart.
    """
    view = build_view(result)
    with atomic_dir(folder.plots_dir, replace=True) as staging:
        plots = render_plots(view, staging)
        markdown = render_markdown(view, plots, folder.plots_dir.name)
        page = render_html(view, plots, staging)  # reads the PNGs from staging to embed them
    written = [folder.plots_dir / plot.name for plot in plots]
    for path, text in ((folder.report_md, markdown), (folder.report_html, page)):
        write_text_atomic(path, text)
        written.append(path)
    return {path.relative_to(folder.root).as_posix(): path for path in written}
