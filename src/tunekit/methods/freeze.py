"""Partial fine-tuning: train only the last `trainable_layers` decoder layers and the final norm; the
embeddings, earlier layers and output head stay frozen. No adapter to merge: the result is a full model.
The output head stays frozen because with tied embeddings it *is* the embedding matrix."""

from __future__ import annotations

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods.base import Method, ModelArch, set_trainable
from tunekit.methods.registry import methods_where, register

FINAL_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "norm_f")


@register
class Freeze(Method):
    name = "freeze"
    summary = "train only the last N decoder layers"
    options = ("trainable_layers",)
    trains_base_weights = True
    default_learning_rate = 5e-5

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        n = opts.trainable_layers
        if not arch.layer_prefix or arch.num_layers < 1:
            raise ConfigError(
                f"cannot find the decoder layers of model type '{arch.model_type}'",
                where="method.name",
                fix=f"use another method: {', '.join(methods_where(lambda cls: cls is not Freeze))}",
            )
        if isinstance(n, bool) or not 1 <= n <= arch.num_layers:
            raise ConfigError(
                f"got {n!r}, but this model has {arch.num_layers} decoder layers",
                where="method.trainable_layers",
                fix=f"use 1..{arch.num_layers}",
            )

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        first = arch.num_layers - opts.trainable_layers
        layer_root = arch.layer_prefix + "."
        # The final norm is the norm module next to the layer list (e.g. model.norm beside model.layers).
        norm_prefixes = tuple(
            f"{arch.layer_prefix.rpartition('.')[0]}.{name}.".lstrip(".") for name in FINAL_NORM_NAMES
        )

        def trainable(name: str) -> bool:
            if name.startswith(layer_root):
                return int(name[len(layer_root) :].split(".", 1)[0]) >= first
            return name.startswith(norm_prefixes)

        set_trainable(model, trainable)
        return model
