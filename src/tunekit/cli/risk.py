"""`tunekit risk RUN`: the model card and risk checklist, from what tunekit measured in the run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from tunekit.console import console
from tunekit.errors import UserError


def risk(
    run: Path = typer.Argument(..., help="run folder (run_dir)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="project YAML (default: RUN/config.yaml)"),
    out: Path | None = typer.Option(None, "--out", "-o", help="card file (default: RUN/model_card.md)"),
) -> None:
    """Write a model card with a privacy, bias, security and governance checklist. Exit 0 when every required
    check passes, 1 when one fails or is not measured yet."""
    from tunekit.config import load_config
    from tunekit.io import write_text_atomic
    from tunekit.report.model_card import PASS, build_card, read_run, render_card
    from tunekit.runfolder import RunFolder

    if not run.is_dir():
        raise UserError("run folder does not exist", where=str(run), fix="pass the run_dir of a tunekit run")
    folder = RunFolder(run)
    # The config the run was made with: `tunekit train` writes the first, `data prepare` the second.
    saved = (folder.config_path, folder.data_config_path)
    config_path = config or next((path for path in saved if path.is_file()), None)
    if config_path is None:
        raise UserError(f"not a tunekit run folder (no {folder.config_path.name})", where=str(run),
                        fix="pass the project YAML with --config, or run `tunekit data prepare` first")
    card = build_card(read_run(run, load_config(config_path), config_path))
    target = out or folder.model_card_path
    write_text_atomic(target, render_card(card))
    for item in card.items:
        style = "green" if item.status == PASS else ("red" if item.required else "yellow")
        tag = "" if item.required else " (advisory)"
        console.print(f"[{style}]{item.status}[/] {item.section}: {item.title}{tag}", highlight=False)
    console.print(f"wrote {target}", highlight=False)
    if not card.passed:
        blocking = [i.title for i in card.items if i.blocking]
        console.print(f"[red]not ready[/]: {len(blocking)} required check(s) not passed, first: {blocking[0]}")
        raise typer.Exit(1)
    console.print("[green]ready[/]: every required check passes")
