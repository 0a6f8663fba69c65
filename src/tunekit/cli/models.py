"""`tunekit models list`: what can be used offline."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from tunekit.console import console

app = typer.Typer(help="Models usable offline: the embedded default and the local cache.", no_args_is_help=True)


@app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
    """List the embedded default model and every model in the cache."""
    from tunekit.models.resolve import list_models

    rows = list_models()
    if as_json:
        print(json.dumps(rows, default=str))
        return
    table = Table(title="Models available offline")
    for column in ("name", "kind", "converted", "size MB", "path"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["name"]), str(row["kind"]), "yes" if row.get("converted") else "not yet",
            f"{row.get('size_mb') or 0:.0f}", str(row["path"]),
        )
    console.print(table)
