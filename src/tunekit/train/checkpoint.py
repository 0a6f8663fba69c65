"""Checkpoints that resume exactly: trainable weights, optimizer, scheduler, RNG states and data position.

Each checkpoint is written into a temporary folder and renamed into place, so a run killed at any
moment leaves only whole checkpoints behind. Trainable weights are safetensors; optimizer, scheduler
and RNG states hold only tensors and plain values and are read back with `weights_only=True`.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tunekit.errors import UserError
from tunekit.io import atomic_dir, require_free_space
from tunekit.runfolder import RunFolder

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    tokens: int = 0
    supervised_tokens: int = 0
    best_val_loss: float | None = None
    evals_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable weights themselves, not copies: safetensors writes straight from their memory, and a
    copy would cost as much again as the weights (540 MB for full fine-tuning of SmolLM2-135M)."""
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_rng(folder: Path) -> None:
    """RNG states as JSON and safetensors: nothing in a checkpoint needs pickle to load."""
    np_state = np.random.get_state()
    plain = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    (folder / "rng.json").write_text(json.dumps(plain), encoding="utf-8")
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    save_file(tensors, str(folder / "rng.safetensors"))


def load_rng(folder: Path) -> None:
    plain = json.loads((folder / "rng.json").read_text(encoding="utf-8"))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    tensors = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    run_dir: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any, state: TrainState, keep: int,
    peft_model: Any = None,
) -> Path:
    target = RunFolder(run_dir).checkpoints_dir / f"step-{state.step:06d}"
    weights = trainable_state(model)
    optimizer_state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    require_free_space(
        run_dir, [*weights.values(), *optimizer_state], f"checkpoint step {state.step}",
        fix="free disk space or set training.keep_checkpoints lower, then resume with training.resume=auto",
    )
    with atomic_dir(target, replace=True) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        save_rng(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")
        if peft_model is not None:  # the adapter in PEFT's own format, usable straight from a checkpoint
            peft_model.save_pretrained(str(tmp / "adapter"))
    prune_checkpoints(run_dir, keep)
    return target


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = RunFolder(run_dir).checkpoints_dir
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def find_resume_point(run_dir: Path, resume: str) -> Path | None:
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise UserError("not a tunekit checkpoint folder", where=str(path), fix="use training.resume=auto")
    return path


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: Any, scheduler: Any) -> TrainState:
    if (path / "sharded").is_dir():
        raise UserError("this checkpoint was written by an FSDP run (sharded weights); it resumes only sharded",
                        where=str(path), fix="resume with the accelerate FSDP config the run was started with")
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = sorted(set(weights) ^ {n for n, p in params.items() if p.requires_grad})
    if missing:
        raise UserError(
            f"checkpoint does not match this model/method ({len(missing)} parameter names differ, "
            f"e.g. {missing[0]})", where=str(path), fix="resume with the config the run was started with",
        )
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    load_rng(path)
    data = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    return TrainState(**data)
