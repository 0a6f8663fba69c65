"""`tunekit train`: fine-tune on the prepared data; one process, or several through accelerate/torchrun."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tunekit.config import load_config
from tunekit.console import console, err_console
from tunekit.errors import UserError
from tunekit.runfolder import RunFolder


def train(
    config: Path = typer.Argument(..., help="project YAML"),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides"),
    num_processes: int | None = typer.Option(None, "--num-processes", min=1,
                                             help="training processes (DDP; default: the accelerate config's, or 1)"),
    accelerate_config: Path | None = typer.Option(None, "--accelerate-config", help="DDP/FSDP/DeepSpeed config"),
    machine_rank: int | None = typer.Option(None, "--machine-rank", min=0,
                                            help="this machine's rank (overrides the accelerate config's)"),
    main_process_ip: str | None = typer.Option(None, "--main-process-ip", help="the rank-0 machine's address"),
    main_process_port: int | None = typer.Option(None, "--main-process-port", min=1, max=65535,
                                                 help="the port the rank-0 machine listens on"),
    resume: bool = typer.Option(False, "--resume", help="continue from the latest checkpoint"),
    reproduce: Path | None = typer.Option(None, "--reproduce", help="repeat RUN and report whether it matches"),
) -> None:
    """Fine-tune the config's model with its method on the prepared data."""
    overrides = list(overrides or [])
    if resume:
        overrides.append("training.resume=auto")
    if reproduce is not None:
        overrides += _reproduce_overrides(reproduce)
    placed = (machine_rank, main_process_ip, main_process_port) != (None, None, None)
    if placed and accelerate_config is None:
        raise UserError("--machine-rank and --main-process-ip/port place this machine in a multi-machine run",
                        where="tunekit train", fix="give them with --accelerate-config (num_machines > 1)")
    cfg = load_config(config, overrides)
    from tunekit.train.setup import validate_method

    # Bad method options fail here, before any process or weights load. One process trains with this result;
    # several each check again in their own process (they have to inspect the architecture themselves).
    validated = validate_method(cfg)
    if (num_processes or 1) > 1 or accelerate_config is not None:
        from tunekit.train.launch import Machine, is_fsdp, launch, read_accelerate_config
        from tunekit.train.setup import prepare_once

        # What cannot run fails here, before the data is prepared or any process starts.
        if accelerate_config is not None and is_fsdp(read_accelerate_config(accelerate_config)):
            from tunekit.train.sharding import check_method

            check_method(validated.method, cfg.training.optimizer)
        prepare_once(cfg, say=lambda msg: err_console.print(msg, highlight=False))  # not once per process

        machine = Machine(machine_rank, main_process_ip, main_process_port)
        code = launch(config, overrides, num_processes, accelerate_config, machine)
        if code:
            raise typer.Exit(code)
    else:
        from tunekit.train.trainer import train as run_training

        with ProgressBar() as progress:
            run_training(cfg, say=lambda msg: err_console.print(msg, highlight=False), progress=progress,
                         validated=validated)
    _report(cfg.run_path(), reproduce)


def _reproduce_overrides(run: Path) -> list[str]:
    if not RunFolder(run).manifest_path.is_file():
        raise UserError("not a finished tunekit run (no manifest.json)", where=str(run))
    return [f"run_dir={run.resolve()}-reproduce", "training.resume=never"]


class ProgressBar(Progress):
    """Loss, learning rate, tokens/s and ETA on one line."""

    def __init__(self) -> None:
        super().__init__(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("lr {task.fields[lr]:.2e}"),
            TextColumn("{task.fields[tps]:.0f} tok/s"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=err_console,
        )

    def add_task(self, *args, **kwargs):  # type: ignore[override]
        kwargs.setdefault("loss", float("nan"))
        kwargs.setdefault("lr", 0.0)
        kwargs.setdefault("tps", 0.0)
        return super().add_task(*args, **kwargs)


def _report(run_dir: Path, reproduce: Path | None) -> None:
    summary = RunFolder(run_dir).summary()
    if summary is None:
        return
    console.print(
        f"trained {summary['method']} for {summary['steps']} steps: train loss {summary['final_train_loss']}, "
        f"validation loss {summary['final_val_loss']}, {summary['useful_tokens_per_s']} useful tokens/s, "
        f"peak RSS {summary['peak_rss_mb']:.0f} MB"
    )
    console.print(f"run folder: {run_dir}")
    if reproduce is not None:
        from tunekit.train.manifest import compare_runs

        comparison = compare_runs(reproduce, run_dir)
        console.print_json(data=comparison)
        if not comparison["matches"]:
            raise typer.Exit(1)
