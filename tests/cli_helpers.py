"""Running `tunekit`: in-process through the real entry point, or as a child process that never outlives its test."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def run_in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """`tunekit ARGS` through the real entry point (error handling included), without a process start-up."""
    from tunekit.cli.main import run

    monkeypatch.setattr(sys, "argv", ["tunekit", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        run()
    captured = capsys.readouterr()
    return exited.value.code, captured.out + captured.err


@contextmanager
def started(args: list[str], *, ignore_sigint: bool = False, **popen) -> Iterator[subprocess.Popen]:
    """`subprocess.Popen(args)` (text, stdout and stderr piped) that is killed and reaped when the block ends,
    however it ends: a test that fails half-way must not leave a training run or a server behind.

    `ignore_sigint` starts it the way a background job (`cmd &`, many CI runners) does: SIGINT ignored.
    """
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    if ignore_sigint:
        popen["preexec_fn"] = lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    proc = subprocess.Popen(args, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its pipes
