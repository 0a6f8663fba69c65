"""Fine-tuning methods, one module each behind a small registry: adding a method is adding one file
and one line to BUILTIN below.

    method = get_method(cfg.method.name)
    arch = inspect_architecture(model_dir)  # meta device, no weights
    method.validate(cfg.method, arch)  # ConfigError before any weights load
    extra = method.load_kwargs(cfg.method, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **extra)
    model = method.apply(model, cfg.method, arch)
"""

import importlib

from tunekit.methods.base import (
    Method,
    ModelArch,
    check_gradient_checkpointing,
    count_parameters,
    inspect_architecture,
    resolve_target_modules,
)
from tunekit.methods.peft_generate import fix_prompt_learning_generate
from tunekit.methods.registry import available_methods, get_method, register

# Each module registers its method on import (@register).
BUILTIN = (
    "full",
    "lora",
    "dora",
    "qlora",
    "ia3",
    "prefix",
    "prompt",
    "freeze",
)
for _module in BUILTIN:
    importlib.import_module(f"tunekit.methods.{_module}")

__all__ = [
    "Method",
    "ModelArch",
    "available_methods",
    "check_gradient_checkpointing",
    "count_parameters",
    "fix_prompt_learning_generate",
    "get_method",
    "inspect_architecture",
    "register",
    "resolve_target_modules",
]
