"""Write the evaluation report: report.md, report.html, eval.json and plots/, each put in place atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunekit.io import atomic_dir, write_text_atomic
from tunekit.report.html import render_html
from tunekit.report.markdown import render_markdown
from tunekit.report.plots import render_plots
from tunekit.report.view import build_view


def write_report(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Render the evaluation `result` (the dict `tunekit eval` produces) into `out_dir`.

    Everything is rendered before anything is replaced, so a failure leaves an earlier report intact;
    plots/ is swapped as a whole so charts of candidates that no longer exist do not linger.

    Returns:
        Paths keyed by their name relative to `out_dir`: "report.md", "report.html", "eval.json" and
        "plots/<name>.png" for each chart.
    """
    out_dir = Path(out_dir)
    view = build_view(result)
    eval_json = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    with atomic_dir(out_dir / "plots", replace=True) as staging:
        plots = render_plots(view, staging)
        markdown = render_markdown(view, plots)
        page = render_html(view, plots, staging)  # reads the PNGs from staging to embed them
    written = {f"plots/{p.name}": out_dir / "plots" / p.name for p in plots}
    for name, text in (("eval.json", eval_json), ("report.md", markdown), ("report.html", page)):
        write_text_atomic(out_dir / name, text)
        written[name] = out_dir / name
    return written
