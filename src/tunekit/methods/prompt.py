"""Prompt tuning (Lester et al. 2021): trained "soft prompt" embeddings prepended to the input; nothing
inside the model changes. Initialising from text (`method.prompt_init_text`) trains faster than random.

Like prefix tuning it needs the transformers 5.x generate() patch (see _peft_generate.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods._peft_generate import fix_prompt_learning_generate
from tunekit.methods.base import Method, ModelArch, require_positive
from tunekit.methods.lora import wrap
from tunekit.methods.registry import register

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@register
class Prompt(Method):
    name = "prompt"
    uses_peft = True
    summary = "trained soft-prompt embeddings before the input"
    options = ("num_virtual_tokens", "prompt_init_text")
    prompt_learning = True

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        require_positive(opts.num_virtual_tokens, "num_virtual_tokens", "e.g. 8-32 soft-prompt tokens")
        text = opts.prompt_init_text
        if text is None:
            return
        if not text.strip():
            # PEFT would divide by the token count (0) while repeating the text to fill the prompt.
            raise ConfigError(
                "is empty", where="method.prompt_init_text", fix="give some text, or remove the key"
            )
        folder = Path(arch.model_dir)
        if arch.model_dir and folder.is_dir() and not any((folder / f).exists() for f in TOKENIZER_FILES):
            raise ConfigError(
                f"needs a tokenizer, and {folder} has none",
                where="method.prompt_init_text",
                fix="remove method.prompt_init_text to initialise from random vocabulary",
            )

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        from peft import PromptTuningConfig, PromptTuningInit, TaskType

        if opts.prompt_init_text:
            config = PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=opts.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.TEXT,
                prompt_tuning_init_text=opts.prompt_init_text,
                tokenizer_name_or_path=arch.model_dir or getattr(model, "name_or_path", None),
            )
        else:
            # Random vocabulary rows, not random vectors: starts in the embedding distribution.
            config = PromptTuningConfig(
                task_type=TaskType.CAUSAL_LM,
                num_virtual_tokens=opts.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
            )
        return fix_prompt_learning_generate(wrap(model, config))
