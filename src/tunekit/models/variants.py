"""Copies of a model's weights stored in the compute dtype, made once in the cache.

Training with frozen bf16 weights from an fp32 checkpoint would read the whole fp32 file (its pages
count towards the process's memory) and convert it on every start. A bf16 copy is half the size and
is mapped straight from disk, so loading costs neither time nor memory. The copy is written by a
separate process, so the one-off conversion's peak memory never lands in a training run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from tunekit.errors import UserError
from tunekit.io import atomic_dir
from tunekit.models.resolve import ResolvedModel, models_cache

VARIANTS = ".variants"
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
DONE = "tunekit_variant.json"


def stored_dtype(folder: Path) -> str | None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return config.get("dtype") or config.get("torch_dtype")


def variant_dir(resolved: ResolvedModel, dtype: torch.dtype) -> Path:
    weights = sorted(resolved.path.glob("*.safetensors"))
    stamps = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights]
    key = "|".join([str(resolved.path.resolve()), *stamps])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return models_cache() / VARIANTS / f"{resolved.path.name}-{digest}-{DTYPE_NAMES[dtype]}"


def weights_in(resolved: ResolvedModel, dtype: torch.dtype) -> Path:
    """A folder holding the model's weights in `dtype`: the model itself, or a cached copy."""
    if dtype not in DTYPE_NAMES or stored_dtype(resolved.path) == DTYPE_NAMES[dtype]:
        return resolved.path
    target = variant_dir(resolved, dtype)
    if not (target / DONE).is_file():
        proc = subprocess.run(
            [sys.executable, "-m", "tunekit.models.variants", str(resolved.path), str(target), DTYPE_NAMES[dtype]],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise UserError(f"could not write a {DTYPE_NAMES[dtype]} copy of the model: {proc.stderr[-500:]}",
                            where=str(resolved.path))
    return target


def _write_copy(source: Path, target: Path, dtype_name: str) -> None:
    from transformers import AutoModelForCausalLM

    from tunekit.quiet import offline_and_quiet

    offline_and_quiet()
    if (target / DONE).is_file():
        return
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype_name), use_safetensors=True,
                                                 local_files_only=True)
    with atomic_dir(target, replace=True) as tmp:
        model.save_pretrained(str(tmp))
        (tmp / DONE).write_text(json.dumps({"source": str(source), "dtype": dtype_name}) + "\n", encoding="utf-8")


if __name__ == "__main__":
    _write_copy(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])
