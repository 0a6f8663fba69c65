"""`tunekit data check | prepare | preview`: is this data fit to train on, and what will the model see."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tunekit.config import DATA_FORMATS, ProjectConfig, load_config
from tunekit.console import console, err_console
from tunekit.data.problems import Problems
from tunekit.runfolder import DataFolder

app = typer.Typer(help="Check, prepare and preview training data.", no_args_is_help=True)


def load_tokenizer_for(cfg: ProjectConfig, model: str | None = None) -> Any:
    from tunekit.models.load import load_chat_tokenizer
    from tunekit.models.resolve import resolve_model

    resolved = resolve_model(model or cfg.model.name, trust_remote_code=cfg.model.trust_remote_code)
    return load_chat_tokenizer(resolved, cfg.model.trust_remote_code, say=err_console.print)


def _config(config: Path | None, overrides: list[str], fmt: str | None) -> ProjectConfig:
    if fmt is not None:
        overrides = [*overrides, f"data.format={fmt}"]
    return load_config(config, overrides)


@app.command("check")
def check(
    files: list[Path] = typer.Argument(..., help="data files (.jsonl .json .csv .tsv .parquet)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="project YAML for data options"),
    fmt: str | None = typer.Option(None, "--format", help=f"override detection: {', '.join(DATA_FORMATS)}"),
    model: str | None = typer.Option(None, "--model", help="tokenizer for length checks (default: config's)"),
    no_tokens: bool = typer.Option(False, "--no-tokens", help="skip token-length checks (no tokenizer load)"),
    as_json: bool = typer.Option(False, "--json", help="print a machine-readable report on stdout"),
    show_all: bool = typer.Option(False, "--all", help="print every problem, not the first 20 of each kind"),
    overrides: list[str] = typer.Option([], "--set", help="config override key=value (repeatable)"),
) -> None:
    """Validate data files and report every problem as file:line. Exit 0 clean, 1 warnings, 2 errors."""
    from tunekit.data.check import check_files

    cfg = _config(config, overrides, fmt)
    tokenizer = None if no_tokens else load_tokenizer_for(cfg, model)
    report = check_files(files, cfg.data, tokenizer=tokenizer, max_seq_len=cfg.model.max_seq_len)
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False))
    else:
        print_problems(report.problems, limit=None if show_all else 20)
        _print_summary(report)
    raise typer.Exit(report.problems.exit_code())


def print_problems(problems: Problems, limit: int | None) -> None:
    shown: dict[str, int] = {}
    for problem in problems.items:
        shown[problem.code] = shown.get(problem.code, 0) + 1
        if limit is None or shown[problem.code] <= limit:
            style = "red" if problem.severity == "error" else "yellow"
            console.print(f"[{style}]{problem.render()}[/]", highlight=False, markup=True, soft_wrap=True)
    for code, count in shown.items():
        if limit is not None and count > limit:
            console.print(f"… and {count - limit} more '{code}' (use --all or --json)", highlight=False)


def _print_summary(report: Any) -> None:
    problems = report.problems
    table = Table(title="data check", show_header=False)
    table.add_row("files", ", ".join(report.files))
    table.add_row("rows read / examples", f"{report.rows_read} / {len(report.examples)}")
    table.add_row("formats", ", ".join(f"{k}: {v}" for k, v in report.formats.items()) or "-")
    table.add_row("errors / warnings", f"{len(problems.errors)} / {len(problems.warnings)}")
    table.add_row("duplicates", f"exact {report.duplicates.get('exact', 0)}, near {report.duplicates.get('near', 0)}")
    table.add_row("PII", ", ".join(f"{k}: {v['count']}" for k, v in report.pii.items()) or "none found")
    if report.lengths.get("count"):
        t = report.lengths
        table.add_row(
            "tokens", f"min {t['min']} p50 {t['p50']} p95 {t['p95']} max {t['max']}; "
            f"{t['over_max_seq_len']} over max_seq_len {t['max_seq_len']}",
        )
    _add_label_rows(table, report.labels)
    console.print(table)
    verdict = {0: "[green]clean[/]", 1: "[yellow]warnings only[/]", 2: "[red]errors: fix before training[/]"}
    console.print(f"result: {verdict[problems.exit_code()]}")


def _add_label_rows(table: Table, labels: dict[str, Any]) -> None:
    groups = {"labels": labels["labels"]} if labels.get("kind") == "labels" else labels.get("fields", {})
    for name, info in groups.items():
        top = ", ".join(f"{k} {v}" for k, v in list(info["counts"].items())[:12])
        more = f", … ({info['distinct']} in all)" if info["distinct"] > 12 else ""
        table.add_row(
            f"balance: {name}", f"{top}{more}; min {info['min']}, max {info['max']}, ratio {info['imbalance']}"
        )


@app.command("prepare")
def prepare(
    config: Path = typer.Argument(..., help="project YAML"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides"),
    new_test: bool = typer.Option(False, "--new-test", help="replace the project's pinned test set with the "
                                  "test split this run makes (later eval reports say earlier ones are not comparable)"),
) -> None:
    """Clean, dedupe and split the config's data into the run folder, with a report.

    The first run pins its test split beside the config (tunekit-pinned/PROJECT/); later runs keep it byte for
    byte and send new rows to train and validation only, so every round is scored on the same rows."""
    from tunekit.data.pinned import describe
    from tunekit.data.prepare import DataErrors
    from tunekit.data.prepare import prepare as run_prepare
    from tunekit.runfolder import ProjectFolder

    cfg = load_config(config, overrides or [])
    tokenizer = load_tokenizer_for(cfg)
    try:
        folder, result = run_prepare(cfg, tokenizer, new_test=new_test)
    except DataErrors as exc:
        print_problems(exc.problems, limit=20)
        raise
    counts = ", ".join(f"{name} {len(rows)}" for name, rows in result.splits.items())
    dropped = ", ".join(f"{k} {v}" for k, v in result.dropped.items() if v) or "none"
    console.print(f"read {result.rows_read} rows; dropped: {dropped}; redacted PII in {result.redacted}",
                  soft_wrap=True)
    console.print(f"splits: {counts}")
    if result.pin is not None:
        console.print(describe(result.pin, ProjectFolder.of(cfg), kept=result.test_data is not None),
                      highlight=False, soft_wrap=True)
    data = DataFolder(folder)
    console.print(f"wrote {folder} ({data.report_md.name}, {data.report_json.name}, {data.lengths_plot.name})")


@app.command("preview")
def preview(
    file: Path = typer.Argument(..., help="a data file"),
    n: int = typer.Option(3, "-n", help="how many examples"),
    config: Path | None = typer.Option(None, "--config", "-c", help="project YAML for data options"),
    fmt: str | None = typer.Option(None, "--format", help="override format detection"),
    model: str | None = typer.Option(None, "--model", help="whose tokenizer and chat template to use"),
    overrides: list[str] = typer.Option([], "--set", help="config override key=value (repeatable)"),
) -> None:
    """Show examples exactly as the model will see them; trained (unmasked) tokens highlighted."""
    from tunekit.data.load import load_examples
    from tunekit.data.preview import render_preview

    cfg = _config(config, overrides, fmt)
    loaded = load_examples([file], cfg.data)
    tokenizer = load_tokenizer_for(cfg, model)
    print_problems(Problems([p for p in loaded.problems.items if p.severity == "error"]), limit=5)
    for renderable in render_preview(loaded.examples[:n], tokenizer, cfg):
        console.print(renderable)
    if loaded.problems.errors and not loaded.examples:
        sys.exit(2)
