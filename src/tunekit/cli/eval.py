"""`tunekit eval CONFIG`: every candidate on the fixed test set, gates, a decision, and a report.

Exit 0 when the chosen candidate passes every gate, 1 when nothing does, 2 on a user error (which is
found before any model loads).
"""

from __future__ import annotations

from pathlib import Path

import typer

from tunekit.config import load_config
from tunekit.console import console, err_console

VERDICT_STYLE = {"ship_finetune": "bold green", "use_prompting": "bold yellow", "use_rag": "bold yellow",
                 "nothing_meets": "bold red"}


def eval_command(
    config: Path = typer.Argument(..., help="project YAML"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. eval.max_samples=50"),
) -> None:
    """Evaluate zero-shot, few-shot, RAG and the fine-tune on the test split and decide which to ship."""
    from tunekit.eval.runner import check_eval, run_eval
    from tunekit.report import write_report

    cfg = load_config(config, list(overrides or []))
    plan = check_eval(cfg)  # every config and data error surfaces here, before a model loads
    result = run_eval(plan, say=lambda msg: err_console.print(msg, highlight=False))  # eval.json, predictions
    write_report(result, plan.folder)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning[/]: {warning}", highlight=False)
    decision = result.decision
    console.print(f"[{VERDICT_STYLE[decision.verdict]}]{decision.headline}[/]", highlight=False)
    for reason in decision.reasons:
        console.print(f"  - {reason}", highlight=False)
    folder = plan.folder
    console.print(f"report: {folder.report_md} (also {folder.report_html.name}, {folder.result_path.name})",
                  highlight=False)
    if decision.verdict == "nothing_meets":
        raise typer.Exit(1)
