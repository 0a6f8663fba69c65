"""The `tunekit` command. Each command lives in its own module; this file only wires them up.

User errors (bad files, bad config, unknown models) end with a one-line message and exit 2;
a traceback is reserved for bugs in tunekit itself.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from tunekit.cli import chat, data, init, iterate, merge, models, train
from tunekit.cli.eval import eval_command
from tunekit.cli.export import export as export_command
from tunekit.cli.index import index as index_command
from tunekit.cli.monitor import app as monitor_app
from tunekit.cli.risk import risk
from tunekit.cli.serve import serve as serve_command
from tunekit.console import err_console, print_error
from tunekit.errors import UserError, missing_dependency, stop_signals_interrupt
from tunekit.quiet import offline_and_quiet

app = typer.Typer(
    name="tunekit",
    help="From examples to a fine-tuned open LLM that provably beats prompting and RAG.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
app.add_typer(monitor_app, name="monitor")
app.command("init")(init.init)
app.command("train")(train.train)
app.command("merge")(merge.merge)
app.command("export")(export_command)
app.command("chat")(chat.chat)
app.command("eval")(eval_command)
app.command("iterate")(iterate.iterate)
app.command("index")(index_command)
app.command("risk")(risk)
app.command("serve")(serve_command)


def run() -> None:
    offline_and_quiet()
    try:
        with stop_signals_interrupt():
            app()
    except UserError as exc:
        _fail(exc)
    except ImportError as exc:
        missing = missing_dependency(exc)  # an optional package that an import site did not `require`
        if missing is None:
            raise
        _fail(missing)
    except KeyboardInterrupt:  # Ctrl-C, SIGINT or SIGTERM outside typer's own handling (which exits 130 too)
        err_console.print("interrupted")
        sys.exit(130)


def _fail(exc: UserError) -> NoReturn:
    print_error(exc)
    sys.exit(exc.exit_code)


if __name__ == "__main__":
    run()
