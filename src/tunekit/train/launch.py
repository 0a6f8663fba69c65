"""Several training processes through an existing engine, never a home-made one.

With an accelerate config file (DDP, FSDP, DeepSpeed; one or several machines) `accelerate launch`
starts the processes. Without one, torch's own launcher (torchrun, which accelerate uses for DDP
as well) starts N local processes; on CPU they talk over gloo.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tunekit.errors import UserError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def launch_command(config: Path, overrides: list[str], num_processes: int, accelerate_config: Path | None) -> list[str]:
    worker = ["-m", "tunekit.train.worker", str(config), *overrides]
    if accelerate_config is not None:
        if not accelerate_config.is_file():
            raise UserError("accelerate config file does not exist", where=str(accelerate_config),
                            fix="write one with `accelerate config`")
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                "--num_processes", str(num_processes), *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
            *worker]


def launch(config: Path, overrides: list[str], num_processes: int, accelerate_config: Path | None) -> int:
    cmd = launch_command(config, overrides, num_processes, accelerate_config)
    # Each process gets an equal share of the cores, or they fight over them.
    from tunekit.devices import physical_cores

    threads = max(1, physical_cores() // num_processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    overrides_env = [f"training.num_threads={threads}"] if not any(
        o.startswith("training.num_threads=") for o in overrides) else []
    cmd = cmd + overrides_env
    # A session of its own, so a terminal's Ctrl-C reaches the workers once, through the launcher (which stops
    # them with the signal it got), not a second time straight from the terminal while they save a checkpoint.
    launcher = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_stop_when_parent_dies())
    try:
        return launcher.wait()
    except KeyboardInterrupt:  # SIGINT or SIGTERM here (the CLI makes both this)
        return _stop(launcher)


def _stop(launcher: subprocess.Popen) -> int:
    """Stop the run as Ctrl-C stops one process: each worker saves a checkpoint. A second Ctrl-C kills it."""
    launcher.send_signal(signal.SIGTERM)
    try:
        _wait_unreaped(launcher)
    except KeyboardInterrupt:
        _signal_group(launcher, signal.SIGKILL)
        launcher.wait()
        raise
    # A launcher that does not pass signals on (accelerate's single-process one) leaves its worker running.
    _signal_group(launcher, signal.SIGTERM)
    return launcher.wait()


def _wait_unreaped(proc: subprocess.Popen) -> None:
    """Until `proc` exits; unreaped where the OS allows, so its pid, the group's id, cannot be reused yet."""
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    else:
        proc.wait()


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)


def _stop_when_parent_dies() -> Callable[[], None] | None:
    """For the launcher, to run before exec: be sent SIGTERM when `tunekit train` dies, even by SIGKILL.

    Its own session shields it from a kill of the caller's process group; this still stops it then. Linux
    only; libc is looked up here, in the parent, so the child between fork and exec only makes the call.
    """
    if sys.platform != "linux":
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
