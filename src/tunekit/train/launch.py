"""Several training processes through an existing engine, never a home-made one.

With an accelerate config file (DDP, FSDP, DeepSpeed; one or several machines) `accelerate launch`
starts the processes. Without one, torch's own launcher (torchrun, which accelerate uses for DDP
as well) starts N local processes; on CPU they talk over gloo.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunekit.errors import UserError
from tunekit.processes import signal_group, stop_when_parent_dies


def read_accelerate_config(path: Path) -> dict[str, Any]:
    """The accelerate config file, checked for what tunekit cannot run before any process starts."""
    import yaml

    fix = "write one with `accelerate config`"
    if not path.is_file():
        raise UserError("accelerate config file does not exist", where=str(path), fix=fix)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"not valid YAML: {str(error).splitlines()[0]}", where=str(path)) from None
    if not isinstance(data, dict):
        raise UserError("an accelerate config is a YAML mapping", where=str(path), fix=fix)
    kind = str(data.get("distributed_type", "NO")).upper()
    if kind == "DEEPSPEED":
        from tunekit.devices import pick_device
        from tunekit.train.sharding import refuse_deepspeed

        refuse_deepspeed(pick_device("auto").device.type, env={"ACCELERATE_USE_DEEPSPEED": "true"})
    if kind == "FSDP":
        from tunekit.train.sharding import fsdp_plan

        fsdp = data.get("fsdp_config") or {}
        fsdp_plan({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": str(fsdp.get("fsdp_version", 1))})
    several = int(data.get("num_processes") or 1) > 1 or int(data.get("num_machines") or 1) > 1
    if data.get("use_cpu") and several and not data.get("mpirun_hostfile"):
        # accelerate's CPU launcher starts one plain process unless mpirun starts them: the run would not be
        # distributed at all. Its GPU launcher is torchrun, which starts CPU processes as well.
        raise UserError("use_cpu: true starts several processes only through mpirun (mpirun_hostfile); without it "
                        "accelerate would start a single process", where=f"{path}: use_cpu",
                        fix="set use_cpu: false: accelerate then starts the processes with torchrun, and on a "
                            "machine without GPUs tunekit trains on the CPU over gloo")
    return data


def is_fsdp(accelerate: dict[str, Any]) -> bool:
    return str(accelerate.get("distributed_type", "NO")).upper() == "FSDP"


def processes_per_machine(num_processes: int | None, accelerate: dict[str, Any] | None) -> int:
    """This machine's share of the run's processes (accelerate's num_processes counts every machine's)."""
    if accelerate is None:
        return num_processes or 1
    total = num_processes or int(accelerate.get("num_processes") or 1)
    return max(1, total // max(1, int(accelerate.get("num_machines") or 1)))


@dataclass(frozen=True)
class Machine:
    """This machine's place in a multi-machine run, where the scheduler knows it only at start (Slurm's
    SLURM_NODEID, a Kubernetes pod's index): overrides the accelerate config's fields of the same names."""

    rank: int | None = None
    main_ip: str | None = None
    main_port: int | None = None

    def accelerate_args(self) -> list[str]:
        fields = {"--machine_rank": self.rank, "--main_process_ip": self.main_ip, "--main_process_port": self.main_port}
        return [part for flag, value in fields.items() if value is not None for part in (flag, str(value))]


def launch_command(config: Path, overrides: list[str], num_processes: int | None,
                   accelerate_config: Path | None, machine: Machine = Machine()) -> list[str]:
    """`num_processes`: None keeps the accelerate config's own (every machine's processes together)."""
    worker = ["-m", "tunekit.train.worker", str(config), *overrides]
    if accelerate_config is not None:
        count = ["--num_processes", str(num_processes)] if num_processes else []
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
                *count, *machine.accelerate_args(), *worker]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes or 1}",
            *worker]


def launch(config: Path, overrides: list[str], num_processes: int | None, accelerate_config: Path | None,
           machine: Machine = Machine()) -> int:
    accelerate = read_accelerate_config(accelerate_config) if accelerate_config is not None else None
    cmd = launch_command(config, overrides, num_processes, accelerate_config, machine)
    # Each process gets an equal share of the cores, or they fight over them.
    from tunekit.devices import physical_cores

    threads = max(1, physical_cores() // processes_per_machine(num_processes, accelerate))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    overrides_env = [f"training.num_threads={threads}"] if not any(
        o.startswith("training.num_threads=") for o in overrides) else []
    cmd = cmd + overrides_env
    # A session of its own, so a terminal's Ctrl-C reaches the workers once, through the launcher (which stops
    # them with the signal it got), not a second time straight from the terminal while they save a checkpoint.
    launcher = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=stop_when_parent_dies())
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
        signal_group(launcher, signal.SIGKILL)
        launcher.wait()
        raise
    # A launcher that does not pass signals on (accelerate's single-process one) leaves its worker running.
    signal_group(launcher, signal.SIGTERM)
    return launcher.wait()


def _wait_unreaped(proc: subprocess.Popen) -> None:
    """Until `proc` exits; unreaped where the OS allows, so its pid, the group's id, cannot be reused yet."""
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    else:
        proc.wait()
