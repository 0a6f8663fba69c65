"""DoRA (Liu et al. 2024): LoRA on the direction of each weight plus a trainable per-output-channel
magnitude. Same options as LoRA; often better at low rank, ~1.5-2x slower per step. Works on CPU."""

from __future__ import annotations

import torch

from tunekit.config import MethodConfig
from tunekit.methods.base import Method, ModelArch
from tunekit.methods.lora import LORA_OPTIONS, lora_config, validate_lora, wrap
from tunekit.methods.registry import register


@register
class Dora(Method):
    name = "dora"
    uses_peft = True
    summary = "weight-decomposed LoRA (magnitude + direction)"
    options = LORA_OPTIONS
    # PEFT's DoRA caches each weight's norm in a dict during forward: a side effect that torch.compile
    # refuses inside a checkpointed layer, so the layers would run eagerly anyway, after a failed trace.
    compiles = False

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        validate_lora(opts, arch)

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        return wrap(model, lora_config(opts, arch, use_dora=True))
