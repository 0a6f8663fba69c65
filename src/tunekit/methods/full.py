"""Full fine-tuning: every weight trains. The strongest and the most memory-hungry method (weights, grads
and two AdamW moments: ~16 bytes per parameter in fp32)."""

from __future__ import annotations

import torch

from tunekit.config import MethodConfig
from tunekit.methods.base import Method, ModelArch, set_trainable
from tunekit.methods.registry import register


@register
class Full(Method):
    name = "full"
    summary = "train every weight"
    trains_base_weights = True
    default_learning_rate = 2e-5

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        return None  # it reads no method.* option (options is empty, so setting one is an error)

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        set_trainable(model, lambda name: True)
        return model
