"""A PEFT LoRA adapter as a GGUF adapter file for llama.cpp's `--lora` (and Ollama's `ADAPTER`).

The file holds, per adapted weight W, `W.lora_a` (r x in) and `W.lora_b` (out x r) under W's GGUF name, and
`adapter.lora.alpha`; llama.cpp adds (alpha / r) * B @ A to W. PEFT's own scale (alpha / r, alpha / sqrt(r)
with rsLoRA, per-module ranks and alphas) is folded into B wherever it differs from llama.cpp's, so the update
is PEFT's exactly. B's rows of q/k projections get the same rotary permutation as the base weights they update.

Only plain LoRA fits that format: DoRA's magnitude vectors, IA3's scalings, prompt/prefix tuning's virtual
tokens, trained biases and whole modules saved beside the adapter have no place in it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunekit.export.gguf_model import ARCHITECTURES, add_general_strings, finish_file, qk_to_gguf, unpermute_rotary


@dataclass
class LoraModule:
    hf_name: str  # e.g. model.layers.0.self_attn.q_proj
    gguf_name: str  # e.g. blk.0.attn_q.weight
    a: Any  # r x in (torch, fp32)
    b: Any  # out x r with PEFT's whole scale folded in: the update is exactly b @ a
    layer: Any  # the PEFT layer, whose own get_delta_weight checks the file


@dataclass
class WrittenAdapter:
    path: Path
    modules: int
    alpha: float
    max_rel_error: float


def unsupported_reason(peft_model: Any) -> str | None:
    """Why this adapter cannot be a llama.cpp LoRA file, or None when it can."""
    config = next(iter(getattr(peft_model, "peft_config", {}).values()), None)
    if config is None:
        return "the run has no PEFT adapter"
    if str(getattr(config.peft_type, "value", config.peft_type)) != "LORA":
        return f"{config.peft_type.value} adapters have no llama.cpp adapter format (LoRA only)"
    for flag, why in (("use_dora", "DoRA's magnitude vectors"), ("modules_to_save", "modules saved in full"),
                      ("trainable_token_indices", "trained token embeddings")):
        if getattr(config, flag, None):
            return f"{why} have no place in a llama.cpp LoRA file"
    if getattr(config, "bias", "none") != "none":
        return "trained biases have no place in a llama.cpp LoRA file"
    for hf_name, _, gguf_name in _adapted(peft_model):
        if gguf_name is None or gguf_name.startswith(("token_embd.", "output.")):
            return f"{hf_name} is adapted, which a llama.cpp LoRA file cannot express"
    return None


def lora_modules(peft_model: Any) -> list[LoraModule]:
    """Every adapted weight with its update as b @ a (PEFT's scale folded into b)."""
    adapter = peft_model.active_adapter
    modules = []
    for hf_name, layer, gguf_name in _adapted(peft_model):
        a = layer.lora_A[adapter].weight.detach().float().clone()
        b = layer.lora_B[adapter].weight.detach().float() * float(layer.scaling[adapter])
        modules.append(LoraModule(hf_name, gguf_name, a, b, layer))
    return modules


def _adapted(peft_model: Any) -> Iterator[tuple[str, Any, str | None]]:
    """(Hugging Face name, LoRA layer, GGUF weight name or None) for every module the active adapter adapts."""
    import gguf

    adapter = peft_model.active_adapter
    model = peft_model.base_model.model
    config = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHITECTURES[config.architectures[0]]),
                                     config.num_hidden_layers)
    for hf_name, module in model.named_modules():
        if hasattr(module, "lora_A") and adapter in module.lora_A:
            yield hf_name, module, names.get_name(f"{hf_name}.weight", try_suffixes=(".weight",))


def write_adapter(path: Path, peft_model: Any, general: dict[str, str],
                  modules: list[LoraModule] | None = None) -> WrittenAdapter:
    """Write the adapter and read it back: `max_rel_error` is how far the update in the file is from PEFT's."""
    import gguf

    modules = lora_modules(peft_model) if modules is None else modules
    adapter = peft_model.active_adapter
    alpha = float(peft_model.peft_config[adapter].lora_alpha)
    config = peft_model.base_model.model.config
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[
        getattr(gguf.MODEL_ARCH, ARCHITECTURES[config.architectures[0]])])
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    add_general_strings(writer, general)
    for module in modules:
        # llama.cpp scales b @ a by alpha / rank; b carries PEFT's scale, so divide llama.cpp's back out of it.
        b = module.b.numpy() * (module.a.shape[0] / alpha)
        writer.add_tensor(f"{module.gguf_name}.lora_a", module.a.numpy())
        writer.add_tensor(f"{module.gguf_name}.lora_b", qk_to_gguf(f"{module.hf_name}.weight", b, config))
    finish_file(writer, Path(path))
    error = adapter_error(Path(path), modules, config, adapter)
    return WrittenAdapter(Path(path), len(modules), alpha, error)


def adapter_error(path: Path, modules: list[LoraModule], config: Any, adapter: str) -> float:
    """The worst relative difference between the update llama.cpp will add, read from the file, and PEFT's own
    (`get_delta_weight`, one module at a time: all of them at once would be another copy of the model)."""
    import gguf
    import torch

    reader = gguf.GGUFReader(path)
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    worst = 0.0
    for module in modules:
        a = tensors[f"{module.gguf_name}.lora_a"]
        b = tensors[f"{module.gguf_name}.lora_b"]
        heads = _rotary_heads(module.hf_name, config)
        b = unpermute_rotary(b, heads) if heads else b
        delta = torch.from_numpy((alpha / a.shape[0]) * (b @ a))
        peft = module.layer.get_delta_weight(adapter).detach().float()
        worst = max(worst, float((delta - peft).norm() / peft.norm().clamp_min(1e-12)))
    return worst


def _rotary_heads(hf_name: str, config: Any) -> int | None:
    if hf_name.endswith("self_attn.q_proj"):
        return config.num_attention_heads
    if hf_name.endswith("self_attn.k_proj"):
        return config.num_key_value_heads
    return None
