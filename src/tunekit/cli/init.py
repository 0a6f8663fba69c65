"""`tunekit init`: write a commented starter config."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import typer

from tunekit.console import console
from tunekit.errors import UserError
from tunekit.io import write_text_atomic


def init(
    path: Path = typer.Argument(Path("tunekit.yaml"), help="where to write the config"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a commented starter tunekit.yaml."""
    if path.exists() and not force:
        raise UserError("already exists", where=str(path), fix="pass --force to overwrite it")
    text = resources.files("tunekit").joinpath("templates/tunekit.yaml").read_text(encoding="utf-8")
    write_text_atomic(path, text)
    console.print(f"wrote {path}; edit data.files, then run `tunekit data check` on your files")
