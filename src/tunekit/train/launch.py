"""Several training processes through an existing engine, never a home-made one.

With an accelerate config file (DDP, FSDP, DeepSpeed; one or several machines) `accelerate launch`
starts the processes. Without one, torch's own launcher (torchrun, which accelerate uses for DDP
as well) starts N local processes; on CPU they talk over gloo.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tunekit.errors import UserError


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
    import os

    from tunekit.devices import physical_cores

    threads = max(1, physical_cores() // num_processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    overrides_env = [f"training.num_threads={threads}"] if not any(
        o.startswith("training.num_threads=") for o in overrides) else []
    cmd = cmd + overrides_env
    return subprocess.run(cmd, env=env).returncode
