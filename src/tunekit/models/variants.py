"""Copies of a model's weights stored the way training reads them, made once in the cache.

Training with frozen bf16 weights from an fp32 checkpoint would read the whole fp32 file (its pages
count towards the process's memory) and convert it on every start. A bf16 copy is half the size and
is mapped straight from disk, so loading costs neither time nor memory.

QLoRA's copy is quantized too (bitsandbytes' own serialization of NF4/FP4 weights). Quantizing while
loading costs each start ~1.5 s, and its temporaries leave the heap fragmented: the same load of
SmolLM2 peaked anywhere between 0.8 and 1.3 GB, against a steady 0.58 GB from the quantized copy.

Copies are written by a separate process, so the one-off conversion's peak memory never lands in a
training run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from tunekit.errors import UserError
from tunekit.io import atomic_dir
from tunekit.models.resolve import ResolvedModel, models_cache

VARIANTS = ".variants"
DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}
HALF_DTYPES = (torch.bfloat16, torch.float16)
DONE = "tunekit_variant.json"


def stored_dtype(folder: Path) -> str | None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return config.get("dtype") or config.get("torch_dtype")


def variant_dir(resolved: ResolvedModel, dtype: torch.dtype, quantization: dict[str, Any] | None = None) -> Path:
    weights = sorted(resolved.path.glob("*.safetensors"))
    stamps = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in weights]
    key = "|".join([str(resolved.path.resolve()), *stamps])
    name = f"{resolved.path.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}-{DTYPE_NAMES[dtype]}"
    if quantization:
        spec = json.dumps(quantization, sort_keys=True, default=str)
        name += f"-{quantization.get('quant_method', 'quantized')}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"
    return models_cache() / VARIANTS / name


def weights_in(resolved: ResolvedModel, dtype: torch.dtype) -> Path:
    """A folder holding the model's weights in `dtype`: the model itself, or a cached copy."""
    if dtype not in HALF_DTYPES or stored_dtype(resolved.path) == DTYPE_NAMES[dtype]:
        return resolved.path
    return _cached_copy(resolved.path, variant_dir(resolved, dtype), dtype, None)


def quantized_weights_in(resolved: ResolvedModel, dtype: torch.dtype, quantization: Any) -> Path:
    """A cached copy of the model quantized with `quantization` (a transformers quantization config) from
    its `dtype` weights; from_pretrained reads the quantization back from the copy's config.json."""
    spec = quantization.to_dict()
    source = weights_in(resolved, dtype)
    return _cached_copy(source, variant_dir(resolved, dtype, spec), dtype, spec)


def _cached_copy(source: Path, target: Path, dtype: torch.dtype, quantization: dict[str, Any] | None) -> Path:
    if not (target / DONE).is_file():
        args = [str(source), str(target), DTYPE_NAMES[dtype], json.dumps(quantization, default=str)]
        proc = subprocess.run([sys.executable, "-m", "tunekit.models.variants", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            what = "quantized" if quantization else DTYPE_NAMES[dtype]
            raise UserError(f"could not write a {what} copy of the model: {proc.stderr[-500:]}", where=str(source))
    return target


def _write_copy(source: Path, target: Path, dtype_name: str, quantization: dict[str, Any] | None) -> None:
    from transformers import AutoModelForCausalLM

    from tunekit.quiet import offline_and_quiet

    offline_and_quiet()
    if (target / DONE).is_file():
        return
    kwargs: dict[str, Any] = {}
    if quantization:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig.from_dict(quantization)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype_name), use_safetensors=True,
                                                 local_files_only=True, **kwargs)
    with atomic_dir(target, replace=True) as tmp:
        model.save_pretrained(str(tmp))
        record = {"source": str(source), "dtype": dtype_name, "quantization": quantization}
        (tmp / DONE).write_text(json.dumps(record, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    _write_copy(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]))
