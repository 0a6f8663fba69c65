"""(IA)^3 (Liu et al. 2022): learned vectors that rescale keys, values and the feed-forward input.
Fewer parameters than LoRA by ~100x; best for small data, weaker on larger shifts.

`method.target_modules: all-linear` (the shared default) means the paper's choice here: k_proj, v_proj
and down_proj (or PEFT's mapping for other architectures), since scaling every linear adds little."""

from __future__ import annotations

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods.base import ALL_LINEAR, Method, ModelArch, resolve_target_modules
from tunekit.methods.lora import wrap
from tunekit.methods.registry import register

PAPER_TARGETS = ("k_proj", "v_proj", "down_proj")
# Layers whose *input* is scaled (the FFN activation), not their output. Names used across model families.
FEEDFORWARD_NAMES = {"down_proj", "fc2", "w2", "dense_4h_to_h", "fc_out", "wo"}


def ia3_targets(opts: MethodConfig, arch: ModelArch) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) for this model."""
    if opts.target_modules == ALL_LINEAR:
        targets = [n for n in PAPER_TARGETS if n in arch.linear_names]
        if len(targets) != len(PAPER_TARGETS):
            from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as MAPPING

            targets = [n for n in MAPPING.get(arch.model_type, []) if n in arch.linear_names]
        if not targets:
            raise ConfigError(
                f"no default (IA)^3 targets for model type '{arch.model_type}'",
                where="method.target_modules",
                fix=f"list the key/value and FFN output layers from: {', '.join(arch.linear_names)}",
            )
    else:
        targets = resolve_target_modules(opts, arch)
    return targets, [n for n in targets if n in FEEDFORWARD_NAMES]


@register
class IA3(Method):
    name = "ia3"
    uses_peft = True
    summary = "learned rescaling vectors on keys, values and FFN"
    options = ("target_modules",)

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        ia3_targets(opts, arch)

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        from peft import IA3Config, TaskType

        targets, feedforward = ia3_targets(opts, arch)
        config = IA3Config(
            task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=feedforward
        )
        return wrap(model, config)
