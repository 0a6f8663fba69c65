"""Entry point of each training process when `tunekit train --num-processes N` launches several."""

from __future__ import annotations

import sys

from tunekit.config import load_config
from tunekit.console import err_console, print_error
from tunekit.errors import UserError, stop_signals_interrupt


def main(argv: list[str]) -> int:
    from tunekit.quiet import offline_and_quiet
    from tunekit.train.trainer import train

    offline_and_quiet()
    config, *overrides = argv
    try:
        with stop_signals_interrupt():  # the launcher stops its workers with SIGTERM or SIGINT, never ignored
            cfg = load_config(config, overrides)
            train(cfg, say=lambda msg: err_console.print(msg, highlight=False))
    except UserError as exc:  # an interrupt during training is one too: TrainingStopped, checkpoint saved
        print_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:  # before training started: nothing to save
        err_console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
