"""Entry point of each training process when `tunekit train --num-processes N` launches several."""

from __future__ import annotations

import sys

from tunekit.config import load_config
from tunekit.console import err_console
from tunekit.errors import UserError


def main(argv: list[str]) -> int:
    from tunekit.quiet import offline_and_quiet
    from tunekit.train.trainer import train

    offline_and_quiet()
    config, *overrides = argv
    try:
        cfg = load_config(config, overrides)
        train(cfg, say=lambda msg: err_console.print(msg, highlight=False))
    except UserError as exc:
        err_console.print(f"[bold red]error[/]: {exc.render()}", highlight=False)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
