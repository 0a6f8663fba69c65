"""Decode-speed linear layers for the engine's own weight copy: oneDNN-prepacked bf16 weights on CPU, and a
lone LoRA adapter folded into them.

Why by hand: decoding one stream multiplies a single row by every weight matrix, so its speed is how fast
the weights are read. aten's bf16 `linear` reads them at 11-14 GB/s on the 2-core EPYC machines of
docs/benchmarks.md, where one pass over memory runs at ~33 GB/s; the same oneDNN kernel fed a weight
reordered once ahead of time (`mkldnn._reorder_linear_weight`, what torch.compile's freezing pass does)
reads at ~23 GB/s, bit-identical, from one row up to 2048-token prefill chunks. torch.compile would
get the same kernels but costs minutes of compiling per model and shape on 2 cores.

Folding: with one LoRA adapter loaded, every request uses it, so `W + scale * B @ A` (computed in fp32,
rounded once) replaces the base weight plus two extra small matmuls per layer (~200 PEFT forwards per
token on SmolLM2). The model's own weights stay untouched (the folded weight lives only in the packed
copy), so unfolding for a second adapter is exact: drop the override.

Only on the Generator's own dtype copy (model_prep.inference_model), never on a model the caller still
holds: forwards are replaced on the modules themselves. fp32 keeps aten's kernels, so fp32 greedy outputs
stay exactly as before. Costs one more copy of the linear weights in memory (skipped when that would
not fit comfortably).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

# The packed copies may take at most this share of the memory still free.
MEMORY_SHARE = 0.25


def supported(dtype: torch.dtype, device: torch.device) -> bool:
    return (device.type == "cpu" and dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class FastLinears:
    """Installs packed forwards on every bf16 `nn.Linear` of `model` and, when the model holds exactly one
    plain LoRA adapter, a folded forward on each of its LoRA layers. Call `refresh()` after adapters change."""

    def __init__(self, model: Any):
        self.model = model
        self.linears = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight.dtype == torch.bfloat16]
        self.folded: str | None = None
        for linear in self.linears:
            linear.forward = functools.partial(_packed_forward, _pack(linear.weight), linear.bias)
        self.refresh()

    @staticmethod
    def affordable(model: Any, free_bytes: int) -> bool:
        weights = sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
                      if type(m) is torch.nn.Linear)
        return weights <= MEMORY_SHARE * free_bytes

    def refresh(self) -> None:
        """Fold the model's adapter when it has exactly one plain LoRA adapter; else run LoRA layers as PEFT does.

        New LoRA A/B layers (small, decoded through PEFT's forward) stay on aten's kernels."""
        layers = _lora_layers(self.model)
        for layer in layers:
            layer.__dict__.pop("forward", None)  # back to PEFT's forward (and its base layer's packed one)
        self.folded = None
        names = list(getattr(self.model, "peft_config", {}))
        if len(names) != 1 or not layers or not all(_foldable(layer, names[0]) for layer in layers):
            return
        for layer in layers:
            weight = layer.base_layer.weight
            merged = (weight.float() + layer.get_delta_weight(names[0]).float()).to(weight.dtype)
            layer.forward = functools.partial(_packed_forward, _pack(merged), layer.base_layer.bias)
        self.folded = names[0]


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 1)


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, *args: Any,
                    **kwargs: Any) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


def _lora_layers(model: Any) -> list[Any]:
    try:
        from peft.tuners.lora.layer import LoraLayer
    except ImportError:  # PEFT is a dependency; without it there are no adapters to fold
        return []
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _foldable(layer: Any, name: str) -> bool:
    """Plain LoRA on a bf16 nn.Linear (DoRA and other variants rescale the weight per input: left to PEFT)."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    return (type(layer) is LoraLinear and type(layer.base_layer) is torch.nn.Linear and not layer.lora_variant
            and not layer.merged and name in layer.lora_A and layer.base_layer.weight.dtype == torch.bfloat16)
