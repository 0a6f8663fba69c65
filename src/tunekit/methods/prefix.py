"""Prefix tuning (Li & Liang 2021): trained key/value vectors prepended to every attention layer's KV
cache; the model itself is untouched. Needs a decoder whose attention reads a standard KV cache.

With transformers 5.x + PEFT 0.21, `generate()` ignores the prefix unless patched (see _peft_generate.py);
`apply` patches the returned model, and adapter loaders must call `fix_prompt_learning_generate` too.
Gradient checkpointing is unsupported: transformers 5 decoder layers drop the cache under checkpointing
("Caching is incompatible with gradient checkpointing ... Setting cache=None"), which removes the prefix
and then fails on the attention-mask size."""

from __future__ import annotations

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods._peft_generate import fix_prompt_learning_generate
from tunekit.methods.base import Method, ModelArch, require_positive
from tunekit.methods.lora import wrap
from tunekit.methods.registry import methods_where, register

ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention", "chunked_attention", "attention"}


@register
class Prefix(Method):
    name = "prefix"
    summary = "trained key/value prefix in every attention layer"
    options = ("num_virtual_tokens",)
    uses_peft = True
    prompt_learning = True
    supports_gradient_checkpointing = False

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        require_positive(opts.num_virtual_tokens, "num_virtual_tokens", "e.g. 10-30 prefix positions")
        unsupported = None
        if arch.cache_kwarg is None:
            unsupported = "its forward() takes no KV cache"
        elif not (arch.num_layers and arch.hidden_size and arch.num_attention_heads):
            unsupported = "its config lacks layer/hidden/attention-head counts PEFT needs"
        elif other := sorted(set(arch.layer_types) - ATTENTION_LAYER_TYPES):
            unsupported = f"it has non-attention layers ({', '.join(other)}) with no key/value cache"
        if unsupported:
            raise ConfigError(
                f"prefix tuning does not work with model type '{arch.model_type}': {unsupported}",
                where="method.name",
                fix=f"use another method: {', '.join(methods_where(lambda cls: cls is not Prefix))}",
            )

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        from peft import PrefixTuningConfig, TaskType

        # No reparameterising MLP (prefix_projection=False): the saved adapter is the prefix itself.
        config = PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=opts.num_virtual_tokens)
        return fix_prompt_learning_generate(wrap(model, config))
