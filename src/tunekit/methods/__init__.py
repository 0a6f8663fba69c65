"""Fine-tuning methods, one module each. Adding a method is adding one file: the registry imports every
public module of this package the first time a method is looked up (helpers start with `_`; `base` and
`registry` are not methods), and each registers its `Method` subclass with `@register`. Another package
can ship methods too, as modules named by entry points in the `tunekit.methods` group:

    [project.entry-points."tunekit.methods"]
    loha = "my_package.loha"

A method is described by traits on its class, and the trainer decides by those, never by a method's name:
`options` (the `method.*` keys it reads; setting another is a ConfigError), `uses_peft`,
`trains_base_weights`, `prompt_learning`, `default_learning_rate`, `supports_gradient_checkpointing`,
`compiles` and `trim_heap_within_step` (see base.py). A run checks its method once, before any weights load:

    method = get_method(cfg.method.name)
    check_options_read(method, cfg.method)  # ConfigError for a key the method ignores
    arch = inspect_architecture(model_dir)  # meta device, no weights
    method.validate(cfg.method, arch)  # ConfigError for a value this architecture cannot take
    extra = method.load_kwargs(cfg.method, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **extra)
    model = method.apply(model, cfg.method, arch)
"""

from tunekit.methods._peft_generate import fix_prompt_learning_generate
from tunekit.methods.base import (
    Method,
    ModelArch,
    check_gradient_checkpointing,
    check_options_read,
    count_parameters,
    inspect_architecture,
    resolve_target_modules,
)
from tunekit.methods.registry import available_methods, get_method, methods_where, register

__all__ = [
    "Method",
    "ModelArch",
    "available_methods",
    "check_gradient_checkpointing",
    "check_options_read",
    "count_parameters",
    "fix_prompt_learning_generate",
    "get_method",
    "inspect_architecture",
    "methods_where",
    "register",
    "resolve_target_modules",
]
