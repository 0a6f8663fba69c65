"""Shared rich consoles: results to stdout, progress and messages to stderr (so `--json` stays clean)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def print_error(error: Any) -> None:
    """A UserError (anything with `render()`) as one `error: ...` line on stderr. Escaped: a message's own
    brackets, as in `pip install 'tunekit[serve]'`, are text, not rich markup."""
    err_console.print(f"[bold red]error[/]: {escape(error.render())}", highlight=False, soft_wrap=True)
