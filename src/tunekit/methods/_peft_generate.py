"""Workaround: PEFT prompt learning (prefix and prompt tuning) under transformers' renamed KV cache argument.

transformers 5.x renamed the cache argument `past_key_values` -> `cache` (the old name is deprecated until
5.40). PEFT 0.21's `PeftModelForCausalLM.prepare_inputs_for_generation` still reads and writes
`past_key_values`, so during `generate()`:
  * prefix tuning: PEFT injects its prefix as `past_key_values`, transformers also passes its own empty
    `cache`, and the model keeps `cache` -- the trained prefix is silently ignored (output == base model);
  * prompt tuning: PEFT never sees the filled cache, so it re-prepends the virtual tokens on every
    decoding step, and every token after the first is wrong.
Training forwards are unaffected (the deprecation shim maps `past_key_values` to `cache`). The fix renames
the key on the way into PEFT's logic and back out. It is per instance, so call it again after
`PeftModel.from_pretrained` wherever a prompt-learning adapter is loaded for generation.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

import torch


def fix_prompt_learning_generate(model: torch.nn.Module) -> torch.nn.Module:
    """Patch a PEFT prompt-learning model in place so `generate()` uses its prefix/prompt; no-op otherwise."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning or getattr(model, "_tunekit_generate_fix", False):
        return model
    base = model.get_base_model()  # type: ignore[operator]
    if "cache" not in inspect.signature(base.forward).parameters:
        return model  # transformers that still call it past_key_values: PEFT works as is
    original_base = model.base_model_prepare_inputs_for_generation

    def renamed_base(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = original_base(*args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    def prepare(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # PEFT calls self.base_model_prepare_inputs_for_generation inside: swap in the renaming one
        self.base_model_prepare_inputs_for_generation = renamed_base
        try:
            inputs = type(self).prepare_inputs_for_generation(self, *args, **kwargs)
        finally:
            self.base_model_prepare_inputs_for_generation = original_base
        if "past_key_values" in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    model.prepare_inputs_for_generation = types.MethodType(prepare, model)
    model._tunekit_generate_fix = True
    return model
