"""The reproducibility manifest: what a run was made of, and a check that a rerun matches it."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from tunekit.config import dump_config
from tunekit.io import write_json_atomic
from tunekit.runfolder import RunFolder, chat_template_hash

LIBRARIES = ("tunekit", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "datasketch")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_manifest(run: Any, full: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """`full`: a sharded model's gathered weights (the model itself holds only this process's shards)."""
    folder = RunFolder(run.run_dir)
    splits = folder.splits_manifest() or {}
    manifest = {
        "seed": run.cfg.training.seed,
        "data": splits,
        "config": dump_config(run.cfg),
        "chat_template_sha256": chat_template_hash(run.tokenizer),
        "base_model": {"name": run.cfg.model.name, "path": str(run.model_path)},
        "method": run.method.name,
        "dtype": run.device.dtype_name,
        "libraries": library_versions(),
        "machine": machine(),
        "weights_sha256": weights_hash(run.model, full),
    }
    write_json_atomic(folder.manifest_path, manifest)
    return manifest


def weights_hash(model: torch.nn.Module, full: dict[str, torch.Tensor] | None = None) -> str:
    """Hash of the trained weights, in name order: equal hashes mean bit-identical results."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            value = full[name] if full is not None else param
            # .cpu(): numpy reads host memory only (a GPU run failed here, after training, before this)
            digest.update(name.encode())
            digest.update(value.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def compare_runs(original: Path, rerun: Path) -> dict[str, Any]:
    """Compare two runs' manifests and summaries: same data, config, template, and results?"""
    first, second = RunFolder(original), RunFolder(rerun)
    a, b = _read(first.manifest_path), _read(second.manifest_path)
    sa, sb = _read(first.summary_path), _read(second.summary_path)
    checks = {
        "data": a["data"].get("splits") == b["data"].get("splits"),
        "chat_template": a["chat_template_sha256"] == b["chat_template_sha256"],
        "libraries": a["libraries"] == b["libraries"],
        "weights_identical": a["weights_sha256"] == b["weights_sha256"],
        "final_train_loss": _close(sa.get("final_train_loss"), sb.get("final_train_loss")),
        "final_val_loss": _close(sa.get("final_val_loss"), sb.get("final_val_loss")),
    }
    return {"matches": checks["data"] and checks["final_train_loss"] and checks["final_val_loss"], "checks": checks}


def _read(path: Path) -> dict[str, Any]:
    # Not RunFolder.manifest(): both runs have finished, so a missing or broken file is an error, not a None.
    return json.loads(path.read_text(encoding="utf-8"))


def _close(x: float | None, y: float | None, rel: float = 1e-3) -> bool:
    if x is None or y is None:
        return x is y
    return abs(x - y) <= rel * max(abs(x), abs(y), 1e-8)
