"""`tunekit monitor LOG_DB` (drift and failure report) and `tunekit monitor export LOG_DB` (rows to label)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import typer
from typer.core import TyperGroup

from tunekit.console import console, err_console
from tunekit.errors import UserError


class _ReportByDefault(TyperGroup):
    """A group whose first argument may be a subcommand or the log itself.

    `tunekit monitor LOG_DB ...` reads as `tunekit monitor report LOG_DB ...`. A plain group with an optional
    argument cannot do this: click would take the word `export` as LOG_DB before looking for subcommands.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["report", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_ReportByDefault,
    no_args_is_help=True,
    help="Drift and failure report on the request log (`tunekit monitor LOG_DB --reference TRAIN`), "
    "and `tunekit monitor export` of failed and drifted requests for labelling.",
)

_REFERENCE_HELP = "the training split the model learnt from: RUN/data/train.jsonl"


@app.command("report")
def report(
    log_db: Path = typer.Argument(..., help="request log (serve.log_db, default RUN/serve/requests.db)"),
    reference: Path = typer.Option(..., "--reference", "-r", help=_REFERENCE_HELP),
    config: Path | None = typer.Option(None, "--config", "-c", help="project YAML (monitor thresholds)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="report folder (default: LOG_DB's folder/monitor)"),
    since: str | None = typer.Option(None, "--since", help="only requests at or after this ISO 8601 time"),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="skip the embedding drift test (faster)"),
) -> None:
    """Compare live requests with the training data. Exit 0 no alerts, 1 alerts, 2 bad input."""
    from tunekit.monitor.checks import load_reference, run_checks
    from tunekit.monitor.report import write_report

    cfg = _config(config)
    records = _read_log(log_db, since)
    ref = load_reference(reference, cfg.eval.label_field)
    err_console.print(f"{len(records)} requests vs {len(ref.texts)} training inputs", highlight=False)
    result = run_checks(records, ref, cfg.monitor, embeddings=not no_embeddings, log_path=log_db)
    paths = write_report(result, out or log_db.parent / "monitor")
    for check in result.checks:
        mark = "[dim]?[/]" if check.value is None else ("[red]✗[/]" if check.alert else "[green]✓[/]")
        value = "not measured" if check.value is None else f"{check.value:.4g}"
        console.print(f"{mark} {check.name}: {value} (threshold {check.threshold:g})", highlight=False)
    console.print(f"wrote {paths['monitor.md']}, monitor.html, monitor.json", highlight=False)
    if result.alerts:
        console.print(f"[red]{len(result.alerts)} alert(s)[/]: " + ", ".join(c.name for c in result.alerts))
        raise typer.Exit(1)
    console.print("[green]no alerts[/]")


@app.command("export")
def export(
    log_db: Path = typer.Argument(..., help="request log"),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write"),
    reference: Path | None = typer.Option(None, "--reference", "-r", help=_REFERENCE_HELP + " (to find drift)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="project YAML (monitor thresholds)"),
    since: str | None = typer.Option(None, "--since", help="only requests at or after this ISO 8601 time"),
    no_embeddings: bool = typer.Option(False, "--no-embeddings", help="find drift by vocabulary only"),
) -> None:
    """Write failed and drifted requests as training rows with a draft answer and "needs_label": true.

    Replace each draft with the right answer and delete "needs_label", then add the file to data.files.
    `tunekit data check` reads the file as it is (the extra fields are ignored).
    """
    from tunekit.monitor.checks import load_reference
    from tunekit.monitor.export import export_for_labelling

    cfg = _config(config)
    records = _read_log(log_db, since)
    ref = load_reference(reference, cfg.eval.label_field) if reference is not None else None
    summary = export_for_labelling(records, out, ref, cfg.monitor, embeddings=not no_embeddings)
    reasons = ", ".join(f"{k} {v}" for k, v in summary.reasons.most_common()) or "none"
    if summary.rows:
        console.print(f"wrote {summary.rows} rows to {out} (reasons: {reasons})", highlight=False)
    else:
        console.print("no failed or drifted requests: nothing to label, no file written", highlight=False)
    console.print(f"skipped: {summary.duplicates} repeated inputs, {summary.unusable} without a usable user turn; "
                  f"{summary.drift_note}", highlight=False)
    if summary.rows:
        console.print('next: replace each draft answer, delete "needs_label", then `tunekit data check ' f'{out}`',
                      highlight=False)


def _config(path: Path | None) -> Any:
    from tunekit.config import load_config

    return load_config(path)


def _read_log(log_db: Path, since: str | None) -> list[Any]:
    from tunekit.monitor.logdb import RequestLog

    with RequestLog.open_existing(log_db) as log:
        records = log.read(since)
    if not records:
        window = f" since {since}" if since else ""
        raise UserError(f"the request log holds no requests{window}", where=str(log_db),
                        fix="serve some requests first, or widen --since")
    return records
