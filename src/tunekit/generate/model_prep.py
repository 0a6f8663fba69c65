"""Getting a model ready for the engine: its weights in the inference dtype, its stop tokens, whether the
fast path supports it, and how many rows fit in memory."""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

from tunekit.devices import DeviceInfo
from tunekit.generate.kv_batch import ModelShape

# Architectures whose attention calls transformers' attention interface with the standard arguments and
# no extras (soft-capping, sinks, sliding windows), so the engine's grouped-query attention is exact for them.
FAST_PATH_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Share of free memory the KV cache may take: the rest is for weights, activations and other processes.
KV_MEMORY_SHARE = 0.25
# Rows per decode step by default. On CPU, tokens/s grows little beyond this while each step (and
# so every row's latency) keeps getting longer (docs/benchmarks.md, Generation).
DEFAULT_BATCH_ROWS = {"cpu": 32, "cuda": 128}


def base_model(model: Any) -> Any:
    return model.get_base_model() if is_peft(model) else model


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def fallback_reason(model: Any, adapter: str | None) -> str | None:
    """Why this model (with this adapter active) must go through HF generate, or None for the fast path."""
    if is_peft(model):
        name = adapter or model.active_adapter
        if model.peft_config[name].is_prompt_learning:
            return "prefix/prompt tuning feeds virtual tokens through PEFT's own generate"
    if is_quantized(model):
        return "quantized (bitsandbytes) weights compute in their own dtypes"
    config = base_model(model).config
    if config.model_type not in FAST_PATH_MODEL_TYPES:
        return f"model type '{config.model_type}' is not one the batched engine was checked on"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "the model has sliding-window or other non-full attention layers"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    return None


def mixes_adapters(model: Any) -> bool:
    """Whether rows of different adapters can decode in one batch: PEFT's LoRA layers (DoRA and QLoRA
    included) take a per-row `adapter_names` and add each row's own low-rank update to the shared base
    output (the approach of S-LoRA and vLLM's multi-LoRA batching). Other adapter kinds rescale or
    replace weights for the whole batch, so their rows run one adapter at a time."""
    return is_peft(model) and all(str(c.peft_type).rsplit(".", 1)[-1] == "LORA" for c in model.peft_config.values())


def is_quantized(model: Any) -> bool:
    return bool(getattr(base_model(model), "is_quantized", False))


def inference_device(model: Any) -> torch.device:
    """Where to decode: the model's own device when it is an accelerator, else a GPU when there is one (eval
    and serve load models on the CPU), else the CPU. Quantized weights stay where bitsandbytes put them."""
    own = model_device(model)
    if own.type != "cpu" or is_quantized(model) or not torch.cuda.is_available():
        return own
    return torch.device("cuda")


def inference_model(model: Any, dtype: torch.dtype, device: torch.device | None = None) -> Any:
    """`model` itself when its weights already are `dtype` on `device` (or quantized), else a copy with them in
    `dtype` on `device` (default: the model's own).

    A copy rather than autocast: autocast converts every weight again on every forward, while decoding
    runs hundreds of forwards. Only parameters are converted; buffers such as rotary frequencies keep
    their precision. The copy is made through deepcopy's memo, pre-filled with the converted
    parameters, so the full-precision weights are never duplicated on the way (and tied weights stay tied).
    """
    device = device or model_device(model)
    floating = [p for p in model.parameters() if p.is_floating_point()]
    if is_quantized(model) or all(p.dtype == dtype and p.device == device for p in floating):
        return model
    memo: dict[int, Any] = {id(p): torch.nn.Parameter(p.detach().to(device=device, dtype=dtype), requires_grad=False)
                            for p in floating}
    return copy.deepcopy(model, memo).to(device).eval()  # .to: the buffers, which deepcopy left where they were


def convert_new_parameters(model: Any, before: set[int], dtype: torch.dtype) -> None:
    """Put the floating parameters of `model` not in `before` (ids) in `dtype`, frozen: an adapter added to a
    model that `inference_model` already converted (quantized models keep the dtypes PEFT chose)."""
    if is_quantized(model):
        return
    for param in model.parameters():
        if id(param) not in before:
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
            param.requires_grad_(False)


def eos_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """The tokenizer's EOS and every EOS of the model's generation config (chat models often list several)."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)


def kv_token_budget(shape: ModelShape, info: DeviceInfo) -> int:
    """Tokens of KV cache (prompt + answer, over all running rows) that fit in KV_MEMORY_SHARE of free memory."""
    return max(1, int(KV_MEMORY_SHARE * available_memory(info.device) // shape.kv_bytes_per_token()))


def default_batch_rows(info: DeviceInfo) -> int:
    return DEFAULT_BATCH_ROWS.get(info.device.type, DEFAULT_BATCH_ROWS["cpu"])


def available_memory(device: torch.device) -> int:
    """Bytes free for new tensors on `device` (RAM the kernel could hand out, for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # not Linux: physical memory as a coarse upper bound
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30
