"""Running `tunekit` in-process: the real entry point and its error handling, without a process start-up."""

from __future__ import annotations

import sys

import pytest


def run_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """`tunekit ARGS` through the real entry point (error handling included), without a process start-up."""
    from tunekit.cli.main import run

    monkeypatch.setattr(sys, "argv", ["tunekit", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        run()
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err
