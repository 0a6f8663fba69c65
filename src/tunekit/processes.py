"""Child processes tunekit starts and must stop: training launchers (train/launch.py) and vLLM's server
(serve/vllm.py). Each runs in a session of its own, is stopped as a group, and dies with its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def signal_group(proc: subprocess.Popen, signum: int) -> None:
    """`signum` to every process of `proc`'s group (it was started with start_new_session), if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def stop_when_parent_dies() -> Callable[[], None] | None:
    """For a child, to run before exec: be sent SIGTERM when its parent dies, even by SIGKILL.

    Its own session shields it from a kill of the caller's process group; this still stops it then. Linux
    only; libc is looked up here, in the parent, so the child between fork and exec only makes the call.
    """
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may take it before the caller binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
