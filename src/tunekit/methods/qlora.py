"""QLoRA (Dettmers et al. 2023): the base model loaded in 4-bit NF4 (double-quantized constants), LoRA
adapters trained in the compute dtype on top. Cuts weight memory ~4x; bitsandbytes >= 0.45 runs NF4 on
CPU too (slower per step than fp32 LoRA there: every matmul dequantizes).

bitsandbytes 0.50 CPU pitfall, worked around in `apply`: on CPUs with AVX512-BF16, the first eval-mode,
no-grad forward (a validation pass) repacks each 4-bit weight into an inference layout, for good, and the
kernel it then uses (gemv_4bit) has no autograd: later training steps silently drop the gradient through
every frozen 4-bit layer, so all but the last adapters get wrong gradients (measured: off by ~50%).

After wrapping, each 4-bit layer computes through one custom op (`_linear4bit.py`): the same arithmetic as
bitsandbytes' autograd.Function, bit for bit, but a compiled graph that inductor's cache can keep, so a
QLoRA run's first step loads its layers in ~3.6 s instead of compiling them for 10-11 s."""

from __future__ import annotations

from typing import Any

import torch

from tunekit.config import MethodConfig
from tunekit.errors import ConfigError
from tunekit.methods.base import Method, ModelArch, require_bitsandbytes
from tunekit.methods.lora import LORA_OPTIONS, Lora, lora_config, validate_lora, wrap
from tunekit.methods.registry import register


@register
class QLora(Method):
    name = "qlora"
    summary = "LoRA on a 4-bit (NF4) quantized base model"
    options = (*LORA_OPTIONS, "quant_type", "double_quant")
    uses_peft = True
    # Its 4-bit base keeps it well under 1.2 GB either way (30-step benchmark runs: 985-1090 MB with the
    # in-step trimming, 1020-1128 without, 973 compiled), so it keeps the speed the trimming cost it with
    # eager layers (4.06x against 4.61x of TRL's speed in two benchmark runs).
    trim_heap_within_step = False

    def validate(self, opts: MethodConfig, arch: ModelArch) -> None:
        require_bitsandbytes(self.name, where="method.name", instead=f"method.name={Lora.name}")
        if opts.quant_type not in ("nf4", "fp4"):  # the config's Literal already enforces it; belt and braces
            raise ConfigError(f"got {opts.quant_type!r}", where="method.quant_type", fix="nf4 or fp4")
        validate_lora(opts, arch)

    def load_kwargs(self, opts: MethodConfig, dtype: torch.dtype) -> dict[str, Any]:
        from transformers import BitsAndBytesConfig

        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=opts.quant_type,
                bnb_4bit_use_double_quant=opts.double_quant,
                bnb_4bit_compute_dtype=dtype,  # adapters and activations run in the trainer's dtype
            )
        }

    def apply(self, model: torch.nn.Module, opts: MethodConfig, arch: ModelArch) -> torch.nn.Module:
        # Not peft's prepare_model_for_kbit_training: its one effect here would be upcasting the unquantized
        # frozen weights (embeddings, norms) to fp32, which LoRA does not do either: frozen weights stay in the
        # trainer's storage dtype (SmolLM2's tied embedding: 57 MB in bf16 instead of 113 MB, and no per-step
        # cast of the output layer). get_peft_model freezes the base.
        from tunekit.methods._linear4bit import make_trainable

        own_unquantized_weights(model)
        keep_trainable_layout(model)
        wrapped = wrap(model, lora_config(opts, arch))
        make_trainable(wrapped)  # a cacheable compiled graph: see _linear4bit.py
        return wrapped


def own_unquantized_weights(model: torch.nn.Module) -> None:
    """Copy the weights that were not quantized (embeddings, norms) out of the checkpoint's file mapping.

    Loading maps the safetensors file and quantizes each Linear from it; the unquantized tensors are views
    of that mapping, so they keep all of it, and every page the quantizer read, resident: for SmolLM2 the
    whole bf16 file (270 MB) stays in the process's memory next to its 4-bit copy. Once no tensor points
    into the mapping it is released."""
    from bitsandbytes.nn import Params4bit

    for tensor in [*model.parameters(), *model.buffers()]:  # tied weights are one Parameter: copied once
        if not isinstance(tensor, Params4bit):
            tensor.data = tensor.data.clone()


def keep_trainable_layout(model: torch.nn.Module) -> None:
    """Turn off bitsandbytes' CPU inference repacking (see the module doc), undoing it if it already ran."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    from bitsandbytes.nn import Linear4bit

    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False  # the only switch forward() consults before repacking
        state = getattr(module.weight, "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
