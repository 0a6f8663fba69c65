"""What every fine-tuning method shares: the model's architecture, seen without loading weights, and the
`Method` interface the trainer drives (validate -> load_kwargs -> apply -> describe).

Validation runs against the real architecture before any weights load, so a bad `method.*` value is a
ConfigError in about a second instead of a stack trace after minutes of loading.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError

ALL_LINEAR = "all-linear"


@dataclass
class ModelArch:
    model_type: str
    architectures: list[str]
    num_layers: int
    hidden_size: int
    linear_names: list[str]  # sorted, unique leaf names of the Linear modules (q_proj, ..., lm_head)
    layer_prefix: str  # dotted path of the decoder layer list, e.g. "model.layers"
    tied_embeddings: bool
    vocab_size: int
    head_name: str = "lm_head"  # leaf name of the output projection: never an adapter target
    num_attention_heads: int = 0
    num_key_value_heads: int = 0
    cache_kwarg: str | None = None  # the forward() argument that takes a KV cache, if any
    layer_types: list[str] = field(default_factory=list)  # e.g. full_attention / linear_attention
    model_dir: str = ""

    @property
    def projection_names(self) -> list[str]:
        """Linear leaf names except the output head: what adapters and checkpoint policies may name."""
        return [n for n in self.linear_names if n not in (self.head_name, "lm_head")]


def inspect_architecture(model_dir: Path, trust_remote_code: bool = False) -> ModelArch:
    """Read the config and build the model on the meta device: module names and shapes, no weights."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head = model.get_output_embeddings()
    head_name = next((n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is head), "lm_head")
    num_layers = int(getattr(text, "num_hidden_layers", 0) or 0)
    params = inspect.signature(model.forward).parameters
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    return ModelArch(
        model_type=str(config.model_type),
        architectures=list(getattr(config, "architectures", None) or [type(model).__name__]),
        num_layers=num_layers,
        hidden_size=int(getattr(text, "hidden_size", 0) or 0),
        linear_names=sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)}),
        layer_prefix=_layer_prefix(model, num_layers),
        tied_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        vocab_size=int(getattr(text, "vocab_size", 0) or 0),
        head_name=head_name,
        num_attention_heads=heads,
        num_key_value_heads=int(getattr(text, "num_key_value_heads", 0) or heads),
        cache_kwarg=next((k for k in ("cache", "past_key_values") if k in params), None),
        layer_types=list(getattr(text, "layer_types", None) or []),
        model_dir=str(model_dir),
    )


def _is_linear(module: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2 style models use Conv1D as their Linear

    return isinstance(module, (torch.nn.Linear, Conv1D))


def _layer_prefix(model: torch.nn.Module, num_layers: int) -> str:
    """The ModuleList that holds the decoder layers: the one with one entry per hidden layer."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m)]
    for name, module in lists:
        if len(module) == num_layers:
            return name
    return max(lists, key=lambda item: len(item[1]))[0] if lists else ""


class Method(ABC):
    """One fine-tuning method. Subclasses live one per module and register with `@register`; the trainer
    decides by these traits, never by a method's name."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    # The MethodConfig fields (besides `name`) the method reads; setting another one is an error
    # (check_options_read), not a value that silently does nothing.
    options: ClassVar[tuple[str, ...]] = ()
    # Trains a PEFT adapter: the run saves adapter/ (PEFT's format) instead of model/.
    uses_peft: ClassVar[bool] = False
    # Trains the model's own weights (all, or some layers): they load in fp32, where small updates are not
    # rounded away, and training.optimizer=auto keeps them in bf16 with compensation where it can.
    trains_base_weights: ClassVar[bool] = False
    # PEFT prompt learning (virtual tokens before the input or in the KV cache): the loss needs the wrapper's
    # own forward, not the decoder-then-head shortcut, and its logits include the virtual positions.
    prompt_learning: ClassVar[bool] = False
    # When training.learning_rate is unset. Adapters start from zero and take large steps; the model's
    # own weights need small ones.
    default_learning_rate: ClassVar[float] = 2e-4
    # False where training with activation checkpointing breaks the method; see check_gradient_checkpointing.
    supports_gradient_checkpointing: ClassVar[bool] = True
    # Whether the trainer returns the heap's free pages inside each step (StepRunner.trim_within_step):
    # a lower peak, for up to ~12% of the step's speed with eager layers (nothing measurable compiled).
    trim_heap_within_step: ClassVar[bool] = True
    # False where the method's forward does not run under torch.compile (training.compile).
    compiles: ClassVar[bool] = True

    @abstractmethod
    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        """Raise ConfigError (key, bad value, what is allowed) for options this architecture cannot take."""

    def load_kwargs(self, opts: MethodConfig, dtype: torch.dtype) -> dict[str, Any]:
        """Extra keyword arguments for `from_pretrained` (e.g. a quantization config)."""
        return {}

    @abstractmethod
    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        """Return the model ready to train: exactly the method's parameters require grad."""

    def describe(self, model: torch.nn.Module) -> dict[str, Any]:
        trainable, total = count_parameters(model)
        return {
            "method": self.name,
            "trainable_params": trainable,
            "total_params": total,
            "trainable_percent": round(100.0 * trainable / total, 4) if total else 0.0,
        }


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total). 4-bit weights are stored packed, two values per byte, so count them twice
    (the same correction PEFT applies), otherwise QLoRA totals would read as half the model."""
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if type(param).__name__ == "Params4bit":
            n *= 2 * getattr(getattr(param, "quant_storage", None), "itemsize", 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def resolve_target_modules(opts: MethodConfig, arch: ModelArch) -> list[str]:
    """`all-linear` -> every Linear leaf name except the output head; a list -> checked against the model."""
    value = opts.target_modules
    candidates = arch.projection_names
    if isinstance(value, str):
        if value == ALL_LINEAR:
            if not candidates:
                from tunekit.methods.registry import methods_where

                whole = ", ".join(methods_where(lambda cls: cls.trains_base_weights))
                raise ConfigError(
                    f"{arch.model_type} has no Linear layers besides its output head",
                    where="method.target_modules",
                    fix=f"choose a method that trains the model's own weights: {whole}",
                )
            return candidates
        value = [value]
    if not value:
        raise ConfigError("is empty", where="method.target_modules", fix=_allowed_targets(candidates))
    unknown = [name for name in value if name not in arch.linear_names]
    if unknown:
        raise ConfigError(
            f"{unknown} not among this model's Linear layers ({arch.model_type})",
            where="method.target_modules",
            fix=_allowed_targets(candidates),
        )
    return list(dict.fromkeys(value))


def _allowed_targets(candidates: list[str]) -> str:
    return f"use '{ALL_LINEAR}' or a list from: {', '.join(candidates)}"


def check_options_read(method: Method, opts: MethodConfig) -> None:
    """ConfigError for `method.*` keys the user set that this method does not read (`method.r=8` with ia3).

    Only values that differ from the default count. A run's saved config.yaml lists every field, defaults
    included (dump_config), and was checked when it was written, so reading it back (eval, serve, or as the
    config of a new run) never trips this; a key set to its default value changes nothing either way."""
    defaults = MethodConfig()
    unread = sorted(
        key for key in opts.model_fields_set - {"name"} - set(method.options)
        if getattr(opts, key) != getattr(defaults, key)
    )
    if not unread:
        return
    reads = f"reads: {', '.join(method.options)}" if method.options else "reads no method.* option but name"
    it, option = ("it", "this option") if len(unread) == 1 else ("them", "these options")
    raise ConfigError(
        f"'{method.name}' does not read {option}",
        where=", ".join(f"method.{key}" for key in unread),
        fix=f"{method.name} {reads}; remove {it}, or choose a method that reads {it}",
    )


def check_gradient_checkpointing(method: Method, enabled: bool) -> None:
    """The trainer calls this before loading: some methods cannot train with activation checkpointing."""
    if enabled and not method.supports_gradient_checkpointing:
        raise ConfigError(
            f"method '{method.name}' cannot train with gradient checkpointing",
            where="training.gradient_checkpointing",
            fix="set training.gradient_checkpointing=false",
        )


def require_bitsandbytes(feature: str, where: str, instead: str) -> None:
    """Before any model loads: `feature` (QLoRA, 8-bit AdamW) needs bitsandbytes, an optional install."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{feature} needs the bitsandbytes package, which is not installed", where=where,
                          fix=f"pip install 'tunekit[qlora]', or use {instead}")


def require_positive(value: int, key: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"must be a positive integer, got {value!r}", where=f"method.{key}", fix=what)


def set_trainable(model: torch.nn.Module, predicate: Any) -> None:
    """requires_grad = predicate(name) for every parameter."""
    for name, param in model.named_parameters():
        param.requires_grad_(bool(predicate(name)))
