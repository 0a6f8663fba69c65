"""`tunekit index DOCS... --out INDEX`: build or update the retrieval index the rag baseline and the server use."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from tunekit.console import console, err_console
from tunekit.errors import UserError


def index(
    docs: list[Path] = typer.Argument(None, help="files or folders (.md .txt .html .pdf); default: rag.docs"),
    out: Path | None = typer.Option(None, "--out", "-o", help="the SQLite index file; default: rag.index"),
    config: Path | None = typer.Option(None, "--config", "-c", help="project YAML for the rag section"),
    overrides: list[str] = typer.Option([], "--set", help="config override key=value (repeatable)"),
) -> None:
    """Chunk, embed and store documents; unchanged files are skipped, removed ones dropped."""
    from tunekit.config import load_config
    from tunekit.rag.index import build_index

    cfg = load_config(config, overrides)
    docs = list(docs or [cfg.base_dir / doc for doc in cfg.rag.docs])
    if not docs:
        raise UserError("no documents to index", fix="pass files or folders, or set rag.docs in the config")
    if out is None:
        if cfg.rag.index is None:
            raise UserError("no index file given", fix="pass --out FILE, or set rag.index in the config")
        out = cfg.base_dir / cfg.rag.index
    report = build_index(
        docs, out, chunk_chars=cfg.rag.chunk_chars, chunk_overlap=cfg.rag.chunk_overlap, say=err_console.print
    )
    table = Table(title=f"index {report.index}", show_header=True, title_justify="left")
    for column in ("added", "changed", "skipped", "removed", "chunks written", "chunks in index"):
        table.add_column(column, justify="right")
    table.add_row(
        *(str(n) for n in (len(report.added), len(report.changed), len(report.skipped), len(report.removed))),
        str(report.chunks_written),
        str(report.chunks_total),
    )
    console.print(table)
    for label, paths in (("added", report.added), ("changed", report.changed), ("removed", report.removed)):
        for path in paths:
            console.print(f"  {label:<8}{path}", highlight=False, soft_wrap=True)
    console.print(f"done in {report.seconds:.1f} s")
