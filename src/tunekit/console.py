"""Shared rich consoles: results to stdout, progress and messages to stderr (so `--json` stays clean)."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
