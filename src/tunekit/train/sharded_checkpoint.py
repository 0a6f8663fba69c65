"""Checkpoints of a sharded (FSDP) run: each process writes its own shards with torch distributed checkpoint.

A step folder holds `sharded/` (DCP: the trainable weights and the optimizer state, a file per process and
the metadata), `rng/rank-K/` (each process's random states: dropout differs per process), the scheduler and
trainer state, and for PEFT methods `adapter/`, the consolidated adapter in PEFT's format, usable as is.
DCP reshards on load, so a run may resume on another number of processes (then only the random states
differ from an uninterrupted run).

Atomic across processes as for one process: all write into one temporary folder, and the main process
renames it into place only after every process has finished its part. Several machines need the run folder
on a shared filesystem, as DCP does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tunekit.errors import UserError
from tunekit.io import move_into_place, require_free_space
from tunekit.runfolder import RunFolder
from tunekit.train.checkpoint import TrainState, load_rng, prune_checkpoints, save_rng

SHARDED = "sharded"


def _options(**extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, **extra)


def trainable_only(model: torch.nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """`state` without frozen weights. torch's ignore_frozen_params misses a frozen weight tied to another (the
    output layer tied to the embeddings), which put the whole embedding matrix into every LoRA checkpoint."""
    names = {name for name, param in model.named_parameters() if param.requires_grad}
    return {name: value for name, value in state.items() if name in names}


def full_state(model: torch.nn.Module, trainable: bool) -> dict[str, torch.Tensor]:
    """The whole (unsharded) weights on the main process, an empty dict elsewhere; every process must call it.
    `trainable`: only the weights that train."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable)
    state = get_model_state_dict(model, options=options)
    return trainable_only(model, state) if trainable else state


def save_sharded_checkpoint(run_dir: Path, acc: Any, model: torch.nn.Module, optimizer: Any, scheduler: Any,
                            state: TrainState, keep: int, peft: bool) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    folder = RunFolder(run_dir).checkpoints_dir
    target = folder / f"step-{state.step:06d}"
    tmp = folder / f".{target.name}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # a run killed while writing this step left it
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    model_state = trainable_only(model, model_state)
    local = [t.to_local() if hasattr(t, "to_local") else t for t in _tensors(model_state, optim_state)]
    require_free_space(run_dir, local, f"checkpoint step {state.step}", fix="free disk space or set "
                       "training.keep_checkpoints lower, then resume with training.resume=auto")
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDED))
    rng = tmp / "rng" / f"rank-{acc.process_index}"
    rng.mkdir(parents=True)
    save_rng(rng)
    adapter = full_state(model, trainable=True) if peft else None
    if acc.is_main_process:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        if adapter is not None:
            model.save_pretrained(str(tmp / "adapter"), state_dict=adapter)
    acc.wait_for_everyone()  # every process's shards are on disk
    if acc.is_main_process:
        move_into_place(tmp, target)
        prune_checkpoints(run_dir, keep)
    acc.wait_for_everyone()
    return target


def _tensors(*states: dict[str, Any]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    for value in states:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            found += _tensors(*value.values())
        elif isinstance(value, (list, tuple)):
            found += _tensors(*value)
    return found


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / SHARDED).is_dir()


def load_sharded_checkpoint(path: Path, acc: Any, model: torch.nn.Module, optimizer: Any,
                            scheduler: Any) -> TrainState:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not is_sharded_checkpoint(path):
        raise UserError("this checkpoint was written by a run without FSDP; it cannot resume a sharded run",
                        where=str(path), fix="resume with the launcher the run was started with")
    model_state, optim_state = get_state_dict(model, optimizer, options=_options())
    states = {"model": trainable_only(model, model_state), "optimizer": optim_state}
    try:
        dcp.load(states, checkpoint_id=str(path / SHARDED))
    except Exception as error:  # DCP's own message names the missing keys
        raise UserError(f"checkpoint does not match this model/method: {str(error).splitlines()[0][:300]}",
                        where=str(path), fix="resume with the config the run was started with") from None
    # Not strict: the frozen weights are not in a checkpoint (they come from the base model); dcp.load above
    # already failed if any trainable one was missing.
    set_state_dict(model, optimizer, model_state_dict=states["model"], optim_state_dict=states["optimizer"],
                   options=_options(strict=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / "rng" / f"rank-{acc.process_index}"
    if rng.is_dir():  # absent when resuming on more processes than wrote it: those start from the seed
        load_rng(rng)
    return TrainState(**json.loads((path / "trainer_state.json").read_text(encoding="utf-8")))
