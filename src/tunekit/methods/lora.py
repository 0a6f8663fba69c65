"""LoRA (Hu et al. 2021): frozen base weights plus a trainable low-rank update B·A per target Linear,
scaled by alpha / r. Defaults r=16, alpha=32, dropout 0.05 follow the LoRA/QLoRA papers' common setting,
and all linear layers are targeted because QLoRA found that matters more than the rank."""

from __future__ import annotations

from typing import Any

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods.base import Method, ModelArch, require_positive, resolve_target_modules
from tunekit.methods.registry import register

LORA_OPTIONS = ("r", "alpha", "dropout", "target_modules")  # what validate_lora and lora_config read


def validate_lora(opts: MethodConfig, arch: ModelArch) -> None:
    require_positive(opts.r, "r", "the LoRA rank, e.g. 8, 16 or 64")
    require_positive(opts.alpha, "alpha", "the LoRA scale numerator, usually 2 x r")
    if opts.r > arch.hidden_size:
        raise ConfigError(
            f"rank {opts.r} is larger than the model's hidden size {arch.hidden_size}",
            where="method.r",
            fix=f"use 1..{arch.hidden_size}; 8-64 is typical",
        )
    resolve_target_modules(opts, arch)


def lora_config(opts: MethodConfig, arch: ModelArch, **extra: Any) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=opts.r,
        lora_alpha=opts.alpha,
        lora_dropout=opts.dropout,
        # The resolved list (not "all-linear") so adapter_config.json records exactly what was adapted.
        target_modules=resolve_target_modules(opts, arch),
        bias="none",
        **extra,
    )


def wrap(model: torch.nn.Module, config: Any) -> torch.nn.Module:
    """get_peft_model freezes the base and leaves only the adapter trainable."""
    from peft import get_peft_model

    from tunekit.methods._dropout import use_fast_dropout

    wrapped = get_peft_model(model, config)  # type: ignore[arg-type]
    use_fast_dropout(wrapped)
    return wrapped


@register
class Lora(Method):
    name = "lora"
    summary = "low-rank adapters on the linear layers"
    options = LORA_OPTIONS
    uses_peft = True

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        validate_lora(opts, arch)

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        return wrap(model, lora_config(opts, arch))
